import { describe, expect, it } from 'vitest';
import type { FeatureStatus } from '../../src/domain/feature-status.js';
import type { OnlineReadResult } from '../../src/serving/online-features.js';
import { ServedValueSampler } from '../../src/serving/served-sample.js';
import { seededRandom } from '../support/fixtures.js';

const read = (values: number[], statuses?: FeatureStatus[]): OnlineReadResult => ({
  requestTimeMicros: 0,
  columns: [
    {
      reference: 'v:x',
      type: 'double',
      values,
      statuses: statuses ?? values.map(() => 'present'),
      eventTimes: values.map(() => 1),
    },
    {
      reference: 'v:name',
      type: 'string',
      values: values.map((value) => `n${value % 3}`),
      statuses: values.map(() => 'present'),
      eventTimes: values.map(() => 1),
    },
    {
      reference: 'v:list',
      type: 'float_list',
      values: values.map(() => [1]),
      statuses: values.map(() => 'present'),
      eventTimes: [],
    },
  ],
});

describe('ServedValueSampler', () => {
  it('keeps a uniform reservoir of at most its capacity over every value offered', () => {
    const sampler = new ServedValueSampler({ rate: 1, capacity: 2_000, random: seededRandom(7) });
    for (let batch = 0; batch < 50; batch++)
      sampler.record('p', read(Array.from({ length: 1_000 }, (_, index) => batch * 1_000 + index)));
    const sample = sampler.sample('p', 'v:x');
    expect(sample?.kind).toBe('numeric');
    const values = sample?.values as Float64Array;
    expect(values.length).toBe(2_000);
    // Uniform over 0..49,999: mean 25,000 ± a few standard errors (σ/√n ≈ 14,434/44.7 ≈ 323).
    const mean = values.reduce((sum, value) => sum + value, 0) / values.length;
    expect(Math.abs(mean - 24_999.5)).toBeLessThan(1_300);
    // Early and late values alike: about a fifth in each fifth of the stream.
    const firstFifth = values.filter((value) => value < 10_000).length;
    expect(firstFifth).toBeGreaterThan(320);
    expect(firstFifth).toBeLessThan(480);
  });

  it('counts nulls apart, leaves out values that were not served, and skips types it cannot profile', () => {
    const sampler = new ServedValueSampler({ rate: 1, capacity: 10 });
    sampler.record('p', read([1, 2, 3, 4], ['present', 'null_value', 'not_found', 'outside_max_age']));
    expect(sampler.sample('p', 'v:x')).toEqual({ kind: 'numeric', values: Float64Array.of(1), nullCount: 1 });
    expect(sampler.sample('p', 'v:name')).toEqual({
      kind: 'categorical',
      values: ['n1', 'n2', 'n0', 'n1'],
      nullCount: 0,
    });
    expect(sampler.sample('p', 'v:list')).toBeUndefined();
    expect(sampler.sample('other', 'v:x')).toBeUndefined();
  });

  it('samples a read with probability rate, after the caller returns', async () => {
    const draws = [0.05, 0.5];
    const sampler = new ServedValueSampler({ rate: 0.1, capacity: 10, random: () => draws.shift() ?? 0.99 });
    sampler.offer('p', read([1]));
    sampler.offer('p', read([2]));
    expect(sampler.sample('p', 'v:x')).toBeUndefined();
    await new Promise((resolve) => setImmediate(resolve));
    expect(sampler.sample('p', 'v:x')?.values).toEqual(Float64Array.of(1));
    const off = new ServedValueSampler({ rate: 0, capacity: 10 });
    expect(off.enabled).toBe(false);
    off.offer('p', read([1]));
    await new Promise((resolve) => setImmediate(resolve));
    expect(off.sample('p', 'v:x')).toBeUndefined();
  });
});
