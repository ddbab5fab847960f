import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  createCategoricalAccumulator,
  createNumericAccumulator,
  decodeProfile,
  encodeProfile,
  type FeatureProfile,
  mergeProfiles,
  summarizeProfile,
} from '../../src/domain/profile/feature-profile.js';
import { sketchQuantile } from '../../src/domain/profile/quantile-sketch.js';

function numeric(values: readonly number[]): FeatureProfile {
  const accumulator = createNumericAccumulator();
  accumulator.addValues(Float64Array.from(values), values.length);
  return accumulator.finish();
}

function categorical(values: readonly string[]): FeatureProfile {
  const accumulator = createCategoricalAccumulator();
  accumulator.addValues(values);
  return accumulator.finish();
}

/** Splits `values` at the sorted cut points into consecutive parts (some may be empty). */
function split<T>(values: readonly T[], cuts: readonly number[]): T[][] {
  const points = [...new Set(cuts.map((cut) => Math.floor(cut * values.length)))].sort((a, b) => a - b);
  const parts: T[][] = [];
  let from = 0;
  for (const point of points) {
    parts.push(values.slice(from, point));
    from = point;
  }
  parts.push(values.slice(from));
  return parts;
}

/** Merges in a random tree order, every profile through its encoded bytes (as between workers). */
function mergeAll(profiles: FeatureProfile[], order: readonly number[]): FeatureProfile {
  const queue = profiles.map((profile) => decodeProfile(encodeProfile(profile)));
  let step = 0;
  while (queue.length > 1) {
    const at = (order[step++ % order.length] as number) % (queue.length - 1);
    const [a, b] = queue.splice(at, 2) as [FeatureProfile, FeatureProfile];
    queue.splice(at, 0, mergeProfiles(a, b));
  }
  return queue[0] as FeatureProfile;
}

const finite = fc.oneof(
  fc.double({ min: -1e6, max: 1e6, noNaN: true }),
  fc.integer({ min: -1000, max: 1000 }),
  fc.constantFrom(0, -0, 1e-9, 123.456),
);

describe('profile merges', () => {
  it('merging profiles of random splits gives the profile of the whole: exact counts, sketch, extremes; moments to rounding', () => {
    fc.assert(
      fc.property(
        fc.array(finite, { minLength: 1, maxLength: 400 }),
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 6 }),
        fc.array(fc.nat(), { minLength: 1, maxLength: 8 }),
        (values, cuts, order) => {
          const whole = numeric(values);
          const merged = mergeAll(split(values, cuts).map(numeric), order);
          if (whole.kind !== 'numeric' || merged.kind !== 'numeric') throw new Error('kind');
          expect(merged.count).toBe(whole.count);
          expect(merged.min).toBe(whole.min);
          expect(merged.max).toBe(whole.max);
          // The sketch's buckets only count: merged, they are those of the whole, bit for bit.
          expect(merged.sketch).toEqual(whole.sketch);
          const scale = values.reduce((largest, value) => Math.max(largest, Math.abs(value)), 1);
          expect(Math.abs(merged.mean - whole.mean)).toBeLessThanOrEqual(1e-9 * scale);
          expect(Math.abs(merged.m2 - whole.m2)).toBeLessThanOrEqual(
            1e-7 * (whole.m2 + scale * scale * 1e-6),
          );
        },
      ),
      { numRuns: 300 },
    );
  });

  it('quantiles of a merged sketch are within the relative accuracy of the exact ones', () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 1e-3, max: 1e9, noNaN: true }), { minLength: 1, maxLength: 500 }),
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 5 }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        (values, cuts, q) => {
          const merged = mergeAll(split(values, cuts).map(numeric), [0]);
          if (merged.kind !== 'numeric') throw new Error('kind');
          const sorted = [...values].sort((a, b) => a - b);
          const exact = sorted[Math.floor(q * (sorted.length - 1))] as number;
          const estimate = sketchQuantile(merged.sketch, q);
          expect(Math.abs(estimate - exact)).toBeLessThanOrEqual(
            merged.sketch.relativeAccuracy * exact * (1 + 1e-12),
          );
        },
      ),
      { numRuns: 300 },
    );
  });

  it('categorical merges keep exact counts while they fit and bounded undercounts past the capacity', () => {
    fc.assert(
      fc.property(
        // Zipf-like values over up to 3,000 categories: past the 1,000 kept counts.
        fc.array(
          fc.integer({ min: 0, max: 3000 }).map((n) => `v${Math.floor((n * n) / 3000)}`),
          { minLength: 1, maxLength: 3000 },
        ),
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 6 }),
        fc.array(fc.nat(), { minLength: 1, maxLength: 8 }),
        (values, cuts, order) => {
          const merged = mergeAll(split(values, cuts).map(categorical), order);
          if (merged.kind !== 'categorical') throw new Error('kind');
          const truth = new Map<string, number>();
          for (const value of values) truth.set(value, (truth.get(value) ?? 0) + 1);
          expect(merged.count).toBe(values.length);
          for (const [value, count] of merged.counts) {
            const exact = truth.get(value) ?? 0;
            expect(count).toBeLessThanOrEqual(exact);
            expect(exact - count).toBeLessThanOrEqual(merged.frequencyErrorBound);
          }
          // A value more frequent than the bound is always kept.
          for (const [value, count] of truth)
            if (count > merged.frequencyErrorBound) expect(merged.counts.has(value)).toBe(true);
          const summary = summarizeProfile(merged);
          if (summary.kind !== 'categorical') throw new Error('kind');
          if (truth.size <= 1000) {
            expect(merged.frequencyErrorBound).toBe(0);
            expect(summary.distinctExact).toBe(true);
            expect(summary.distinctCount).toBe(truth.size);
          } else
            expect(Math.abs(summary.distinctCount - truth.size)).toBeLessThanOrEqual(0.08 * truth.size + 2);
        },
      ),
      { numRuns: 60 },
    );
  });

  it('refuses to merge profiles of different kinds, and garbage bytes, with clear codes', () => {
    expect(() => mergeProfiles(numeric([1]), categorical(['a']))).toThrow(
      expect.objectContaining({
        code: 'failed_precondition',
        message: expect.stringMatching(/numeric.*categorical/),
      }),
    );
    expect(() => decodeProfile(Uint8Array.from([1, 2, 3]))).toThrow(
      expect.objectContaining({ code: 'invalid_argument' }),
    );
    expect(() => summarizeProfile(numeric([1]), { histogramBins: 0 })).toThrow(
      expect.objectContaining({ code: 'invalid_argument' }),
    );
    expect(() => summarizeProfile(numeric([1]), { quantiles: [1.5] })).toThrow(
      expect.objectContaining({ code: 'invalid_argument', message: expect.stringMatching(/quantiles\[0\]/) }),
    );
  });

  it('keeps NaN and infinities apart from every statistic', () => {
    const profile = numeric([1, Number.NaN, 3, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]);
    const summary = summarizeProfile(profile, { quantiles: [0.5] });
    expect(summary).toMatchObject({ kind: 'numeric', count: 2, nonFiniteCount: 3, mean: 2, min: 1, max: 3 });
  });
});
