import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { computeDrift } from '../../src/domain/profile/drift.js';
import {
  createCategoricalAccumulator,
  createNumericAccumulator,
  type FeatureProfile,
} from '../../src/domain/profile/feature-profile.js';
import {
  chiSquareSurvival,
  kolmogorovSurvival,
  logGamma,
  regularizedGammaQ,
} from '../../src/domain/profile/special-functions.js';

/** Expected values from numpy / scipy: scripts/drift-reference/generate.py wrote them. */
const fixtures = JSON.parse(
  readFileSync(new URL('../fixtures/drift/reference-values.json', import.meta.url), 'utf8'),
) as {
  numeric: {
    name: string;
    reference: number[];
    current: number[];
    bins: number;
    epsilon: number;
    expected: { ksStatistic: number; ksPValue: number; psi: number; psiBins: number; jensenShannon: number };
  }[];
  categorical: {
    name: string;
    reference: Record<string, number>;
    current: Record<string, number>;
    epsilon: number;
    expected: {
      chiSquareStatistic: number;
      chiSquareDegreesOfFreedom: number;
      chiSquarePValue: number;
      psi: number;
      jensenShannon: number;
    };
  }[];
  tails: {
    chiSquareSurvival: { statistic: number; degreesOfFreedom: number; expected: number }[];
    kolmogorovSurvival: { lambda: number; expected: number }[];
    regularizedGammaQ: { a: number; x: number; expected: number }[];
    logGamma: { x: number; expected: number }[];
  };
};

function numeric(values: readonly number[]): FeatureProfile {
  const accumulator = createNumericAccumulator();
  accumulator.addValues(Float64Array.from(values), values.length);
  return accumulator.finish();
}

function categorical(counts: Record<string, number>): FeatureProfile {
  const accumulator = createCategoricalAccumulator();
  for (const [value, count] of Object.entries(counts))
    for (let i = 0; i < count; i++) accumulator.addValue(value);
  return accumulator.finish();
}

/** Relative closeness, with an absolute floor for values near zero. */
function expectClose(actual: number | undefined, expected: number, relative = 1e-9, absolute = 1e-300): void {
  expect(actual).toBeDefined();
  expect(Math.abs((actual as number) - expected)).toBeLessThanOrEqual(
    Math.max(absolute, relative * Math.abs(expected)),
  );
}

describe('drift statistics against scipy', () => {
  for (const fixture of fixtures.numeric)
    it(`numeric: ${fixture.name}`, () => {
      const drift = computeDrift(numeric(fixture.reference), numeric(fixture.current), {
        bins: fixture.bins,
        epsilon: fixture.epsilon,
      });
      expect(drift.kind).toBe('numeric');
      expectClose(drift.ks?.statistic, fixture.expected.ksStatistic, 1e-12);
      expectClose(drift.ks?.pValue, fixture.expected.ksPValue, 1e-6, 1e-15);
      expect(drift.bins).toBe(fixture.expected.psiBins);
      expectClose(drift.psi, fixture.expected.psi, 1e-9);
      expectClose(drift.jensenShannon, fixture.expected.jensenShannon, 1e-9);
    });

  for (const fixture of fixtures.categorical)
    it(`categorical: ${fixture.name}`, () => {
      const drift = computeDrift(categorical(fixture.reference), categorical(fixture.current), {
        epsilon: fixture.epsilon,
      });
      expect(drift.kind).toBe('categorical');
      expect(drift.ks).toBeUndefined();
      expectClose(drift.chiSquare?.statistic, fixture.expected.chiSquareStatistic, 1e-10);
      expect(drift.chiSquare?.degreesOfFreedom).toBe(fixture.expected.chiSquareDegreesOfFreedom);
      expectClose(drift.chiSquare?.pValue, fixture.expected.chiSquarePValue, 1e-8);
      expectClose(drift.psi, fixture.expected.psi, 1e-9);
      expectClose(drift.jensenShannon, fixture.expected.jensenShannon, 1e-9);
    });

  it('computes the distribution tails behind the p-values as scipy does', () => {
    for (const { statistic, degreesOfFreedom, expected } of fixtures.tails.chiSquareSurvival)
      expectClose(chiSquareSurvival(statistic, degreesOfFreedom), expected, 1e-9);
    for (const { lambda, expected } of fixtures.tails.kolmogorovSurvival)
      expectClose(kolmogorovSurvival(lambda), expected, 1e-9, 1e-16);
    for (const { a, x, expected } of fixtures.tails.regularizedGammaQ)
      expectClose(regularizedGammaQ(a, x), expected, 1e-9);
    for (const { x, expected } of fixtures.tails.logGamma) expectClose(logGamma(x), expected, 1e-12, 1e-14);
  });

  it('refuses empty sides, mixed kinds and options out of range with the right codes', () => {
    const some = numeric([1, 2, 3]);
    expect(() => computeDrift(some, numeric([]))).toThrow(
      expect.objectContaining({
        code: 'failed_precondition',
        message: expect.stringMatching(/current data has no non-null values/),
      }),
    );
    expect(() => computeDrift(numeric([]), some)).toThrow(
      expect.objectContaining({ code: 'failed_precondition', message: expect.stringMatching(/reference/) }),
    );
    expect(() => computeDrift(some, categorical({ a: 1 }))).toThrow(
      expect.objectContaining({
        code: 'failed_precondition',
        message: expect.stringMatching(/numeric.*categorical/),
      }),
    );
    for (const options of [
      { bins: 1 },
      { bins: 101 },
      { bins: 2.5 },
      { epsilon: 0 },
      { epsilon: 0.2 },
      { psiWarn: 0.3, psiAlert: 0.2 },
      { psiWarn: -1 },
    ])
      expect(() => computeDrift(some, some, options)).toThrow(
        expect.objectContaining({ code: 'invalid_argument' }),
      );
  });

  it('bands the PSI: ok below warn, warn from it, alert from alert', () => {
    const [shifted] = fixtures.numeric;
    const reference = numeric(shifted!.reference);
    const current = numeric(shifted!.current);
    const psi = shifted!.expected.psi;
    expect(computeDrift(reference, current, { psiWarn: psi + 0.01, psiAlert: psi + 0.02 }).psiLevel).toBe(
      'ok',
    );
    expect(computeDrift(reference, current, { psiWarn: psi, psiAlert: psi + 0.02 }).psiLevel).toBe('warn');
    expect(computeDrift(reference, current, { psiWarn: 0, psiAlert: psi }).psiLevel).toBe('alert');
  });
});
