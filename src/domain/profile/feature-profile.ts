import { Packr } from 'msgpackr';
import { FStoreError, invalidArgument } from '../errors.js';
import { HyperLogLog, hyperLogLogStandardError } from '../hyperloglog.js';
import {
  assertSketch,
  mergeSketches,
  orderedBuckets,
  type QuantileSketch,
  SketchBuilder,
  sketchDefaults,
  sketchQuantile,
} from './quantile-sketch.js';

/**
 * Feature profiles (DESIGN §4): the mergeable summary of one feature's values over some rows.
 * Profiles of disjoint parts (COPY segments, partitions, time slices) merge into the profile of
 * their union, so the worker pool profiles segments in parallel and the caller merges.
 *
 * Numeric: counts, exact min / max, the mean and the sum of squared deviations (merged with
 * Chan et al.'s pairwise update, numerically stable), and a DDSketch of the values for quantiles,
 * histograms and the drift tests. NaN and ±Infinity are counted apart and kept out of the rest.
 *
 * Categorical (strings and bools): exact counts per value while there are at most
 * `categoryCapacity` distinct values; beyond that a Misra–Gries summary (mergeable as in Agarwal
 * et al., "Mergeable summaries", 2012): every kept count is at most `frequencyErrorBound` below
 * the true count and any value more frequent than that bound is kept. Distinct counts are exact
 * while every value is kept, otherwise a HyperLogLog estimate (±1.6 %).
 */

export const categoryCapacity = 1000;

export interface NumericProfile {
  readonly kind: 'numeric';
  /** Finite non-null values. */
  readonly count: number;
  readonly nullCount: number;
  /** NaN and ±Infinity values, outside every other statistic. */
  readonly nonFiniteCount: number;
  readonly mean: number;
  /** Σ (x − mean)²: the variance is m2 / count. */
  readonly m2: number;
  readonly min: number;
  readonly max: number;
  readonly sketch: QuantileSketch;
}

export interface CategoricalProfile {
  readonly kind: 'categorical';
  /** Non-null values. */
  readonly count: number;
  readonly nullCount: number;
  /** Value → count, at most `categoryCapacity` entries. */
  readonly counts: ReadonlyMap<string, number>;
  /** Largest undercount of any value's count (0: the counts are exact and complete). */
  readonly frequencyErrorBound: number;
  /** HyperLogLog registers of every value seen (src/domain/hyperloglog.ts encoding). */
  readonly distinct: number[] | Uint8Array;
}

export type FeatureProfile = NumericProfile | CategoricalProfile;

interface Moments {
  count: number;
  mean: number;
  m2: number;
}

/** Chan et al.: the moments of the union of two disjoint sets of values. */
function mergeMoments(a: Moments, b: Moments): Moments {
  if (b.count === 0) return { ...a };
  if (a.count === 0) return { ...b };
  const count = a.count + b.count;
  const delta = b.mean - a.mean;
  return {
    count,
    mean: a.mean + (delta * b.count) / count,
    m2: a.m2 + b.m2 + ((delta * delta * a.count) / count) * b.count,
  };
}

export interface NumericAccumulator {
  /** Adds the first `length` values (NaN and infinities counted apart). The array is not kept. */
  addValues(values: Float64Array, length: number): void;
  addNulls(count: number): void;
  finish(): NumericProfile;
}

export function createNumericAccumulator(
  relativeAccuracy: number = sketchDefaults.relativeAccuracy,
): NumericAccumulator {
  const sketch = new SketchBuilder(relativeAccuracy);
  let moments: Moments = { count: 0, mean: 0, m2: 0 };
  let nullCount = 0;
  let nonFinite = 0;
  let min = Number.POSITIVE_INFINITY;
  let max = Number.NEGATIVE_INFINITY;
  return {
    addValues(values, length) {
      let finite = values;
      let finiteLength = length;
      let sum = 0;
      for (let i = 0; i < length; i++) sum += values[i] as number;
      if (!Number.isFinite(sum)) {
        // Some value is NaN or infinite (or the sum overflowed): keep the finite ones apart.
        finite = new Float64Array(length);
        finiteLength = 0;
        sum = 0;
        for (let i = 0; i < length; i++) {
          const value = values[i] as number;
          if (Number.isFinite(value)) finite[finiteLength++] = value;
        }
        nonFinite += length - finiteLength;
        // A sum overflow of finite values: average by parts so the mean stays finite.
        for (let i = 0; i < finiteLength; i++) sum += (finite[i] as number) / finiteLength;
        sum *= finiteLength;
        if (!Number.isFinite(sum)) sum = 0;
      }
      if (finiteLength === 0) return;
      // Two passes over the batch (mean, then squared deviations), merged into the running moments.
      const mean = sum / finiteLength;
      let m2 = 0;
      let low = min;
      let high = max;
      for (let i = 0; i < finiteLength; i++) {
        const value = finite[i] as number;
        const deviation = value - mean;
        m2 += deviation * deviation;
        if (value < low) low = value;
        if (value > high) high = value;
      }
      min = low;
      max = high;
      moments = mergeMoments(moments, { count: finiteLength, mean, m2 });
      sketch.addAll(finite, finiteLength);
    },
    addNulls(count) {
      nullCount += count;
    },
    finish() {
      return {
        kind: 'numeric',
        count: moments.count,
        nullCount,
        nonFiniteCount: nonFinite,
        mean: moments.count > 0 ? moments.mean : Number.NaN,
        m2: moments.m2,
        // + 0 turns -0 into 0: the extremes of {-0, 0} are 0 whatever the order seen.
        min: min + 0,
        max: max + 0,
        sketch: sketch.finish(),
      };
    },
  };
}

/**
 * Cuts the counts to the `capacity` largest (Misra–Gries): every count drops by the
 * (capacity + 1)-th largest, which is what each kept value may have lost. Returns that amount.
 */
function reduceCounts(counts: Map<string, number>, capacity: number, distinct: HyperLogLog): number {
  if (counts.size <= capacity) return 0;
  const sorted = [...counts.values()].sort((a, b) => b - a);
  const cut = sorted[capacity] as number;
  for (const [value, count] of counts) {
    if (count <= cut) {
      distinct.add(value);
      counts.delete(value);
    } else counts.set(value, count - cut);
  }
  return cut;
}

export interface CategoricalAccumulator {
  addValue(value: string): void;
  addValues(values: readonly string[]): void;
  addNulls(count: number): void;
  finish(): CategoricalProfile;
}

export function createCategoricalAccumulator(capacity: number = categoryCapacity): CategoricalAccumulator {
  const counts = new Map<string, number>();
  const distinct = new HyperLogLog();
  let count = 0;
  let nullCount = 0;
  let errorBound = 0;
  // Counting runs over twice the capacity between reductions, so a reduction is amortised.
  const addValue = (value: string) => {
    counts.set(value, (counts.get(value) ?? 0) + 1);
    count += 1;
    if (counts.size > 2 * capacity) errorBound += reduceCounts(counts, capacity, distinct);
  };
  return {
    addValue,
    addValues(values) {
      for (const value of values) addValue(value);
    },
    addNulls(nulls) {
      nullCount += nulls;
    },
    finish() {
      const kept = new Map(counts);
      // Every value ever seen went through `counts`: those dropped were added to the sketch then.
      const sketch = HyperLogLog.decode(distinct.encode());
      for (const value of kept.keys()) sketch.add(value);
      const bound = errorBound + reduceCounts(kept, capacity, sketch);
      return {
        kind: 'categorical',
        count,
        nullCount,
        counts: kept,
        frequencyErrorBound: bound,
        distinct: sketch.encode(),
      };
    },
  };
}

function kindMismatch(a: FeatureProfile, b: FeatureProfile, what = 'profiles'): FStoreError {
  return new FStoreError(
    'failed_precondition',
    `${what} of different kinds cannot be combined: one is ${a.kind}, the other ${b.kind}`,
  );
}

/** The profile of the union of the two profiles' rows. */
export function mergeProfiles(a: FeatureProfile, b: FeatureProfile): FeatureProfile {
  if (a.kind === 'numeric' && b.kind === 'numeric') {
    const moments = mergeMoments(a, b);
    return {
      kind: 'numeric',
      count: moments.count,
      nullCount: a.nullCount + b.nullCount,
      nonFiniteCount: a.nonFiniteCount + b.nonFiniteCount,
      mean: moments.count > 0 ? moments.mean : Number.NaN,
      m2: moments.m2,
      min: Math.min(a.min, b.min) + 0,
      max: Math.max(a.max, b.max) + 0,
      sketch: mergeSketches(a.sketch, b.sketch),
    };
  }
  if (a.kind === 'categorical' && b.kind === 'categorical') {
    const counts = new Map(a.counts);
    for (const [value, count] of b.counts) counts.set(value, (counts.get(value) ?? 0) + count);
    const distinct = HyperLogLog.decode(a.distinct);
    distinct.merge(HyperLogLog.decode(b.distinct));
    const bound =
      a.frequencyErrorBound + b.frequencyErrorBound + reduceCounts(counts, categoryCapacity, distinct);
    return {
      kind: 'categorical',
      count: a.count + b.count,
      nullCount: a.nullCount + b.nullCount,
      counts,
      frequencyErrorBound: bound,
      distinct: distinct.encode(),
    };
  }
  throw kindMismatch(a, b);
}

export { kindMismatch as profileKindMismatch };

// ---------------------------------------------------------------------------------------------
// Encoding: msgpack, versioned, checked on the way in (profiles come from storage and workers).

const profileFormatVersion = 1;
const packr = new Packr({ useRecords: false, moreTypes: false });

export function encodeProfile(profile: FeatureProfile): Uint8Array {
  if (profile.kind === 'numeric')
    return packr.pack({
      v: profileFormatVersion,
      kind: 'numeric',
      count: profile.count,
      nullCount: profile.nullCount,
      nonFiniteCount: profile.nonFiniteCount,
      mean: profile.mean,
      m2: profile.m2,
      min: profile.min,
      max: profile.max,
      sketch: profile.sketch,
    });
  return packr.pack({
    v: profileFormatVersion,
    kind: 'categorical',
    count: profile.count,
    nullCount: profile.nullCount,
    values: [...profile.counts.keys()],
    counts: [...profile.counts.values()],
    frequencyErrorBound: profile.frequencyErrorBound,
    distinct: profile.distinct,
  });
}

const nonNegative = (value: unknown): value is number => typeof value === 'number' && value >= 0;

export function decodeProfile(bytes: Uint8Array): FeatureProfile {
  const bad = (problem: string) => new FStoreError('invalid_argument', `feature profile: ${problem}`);
  let data: Record<string, unknown>;
  try {
    data = packr.unpack(bytes) as Record<string, unknown>;
  } catch {
    throw bad('not a msgpack-encoded profile');
  }
  if (typeof data !== 'object' || data === null) throw bad('not a profile');
  if (data.v !== profileFormatVersion)
    throw bad(`format version ${String(data.v)} is not ${profileFormatVersion}`);
  if (!nonNegative(data.count) || !nonNegative(data.nullCount))
    throw bad('count or nullCount is not a count');
  if (data.kind === 'numeric') {
    for (const key of ['mean', 'm2', 'min', 'max'])
      if (typeof data[key] !== 'number') throw bad(`${key} is not a number`);
    if (!nonNegative(data.nonFiniteCount)) throw bad('nonFiniteCount is not a count');
    assertSketch(data.sketch, 'feature profile sketch');
    return {
      kind: 'numeric',
      count: data.count,
      nullCount: data.nullCount,
      nonFiniteCount: data.nonFiniteCount,
      mean: data.mean as number,
      m2: data.m2 as number,
      min: data.min as number,
      max: data.max as number,
      sketch: data.sketch,
    };
  }
  if (data.kind === 'categorical') {
    const values = data.values;
    const counts = data.counts;
    if (!Array.isArray(values) || !Array.isArray(counts) || values.length !== counts.length)
      throw bad('values and counts are not two lists of one length');
    if (!values.every((value) => typeof value === 'string')) throw bad('a value is not a string');
    if (!counts.every(nonNegative)) throw bad('a count is not a count');
    if (!nonNegative(data.frequencyErrorBound)) throw bad('frequencyErrorBound is not a count');
    const distinct = data.distinct instanceof Uint8Array ? Uint8Array.from(data.distinct) : data.distinct;
    try {
      HyperLogLog.decode(distinct);
    } catch (error) {
      throw bad(`distinct-count sketch: ${(error as Error).message}`);
    }
    return {
      kind: 'categorical',
      count: data.count,
      nullCount: data.nullCount,
      counts: new Map(values.map((value, index) => [value as string, counts[index] as number])),
      frequencyErrorBound: data.frequencyErrorBound,
      distinct: distinct as number[] | Uint8Array,
    };
  }
  throw bad(`kind ${JSON.stringify(data.kind)} is neither numeric nor categorical`);
}

// ---------------------------------------------------------------------------------------------
// Summaries: what a person reads (and what the API returns).

export interface SummaryOptions {
  /** Equal-width histogram bins between min and max, 1 to 1000 (default 20). */
  readonly histogramBins?: number;
  /** Most frequent values of a categorical feature, 1 to 1000 (default 10). */
  readonly topK?: number;
  /** Quantiles to report, each in [0, 1] (default 1, 5, 25, 50, 75, 95, 99 %). */
  readonly quantiles?: readonly number[];
}

export const summaryDefaults = {
  histogramBins: 20,
  topK: 10,
  quantiles: [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99],
} as const;

interface SummaryBase {
  readonly count: number;
  readonly nullCount: number;
  readonly nullRate: number;
}

export interface NumericSummary extends SummaryBase {
  readonly kind: 'numeric';
  readonly mean: number;
  readonly stdPopulation: number;
  readonly stdSample: number;
  readonly min: number;
  readonly max: number;
  readonly quantiles: readonly { readonly q: number; readonly value: number }[];
  /** edges.length = counts.length + 1; bucket counts placed by their representative value. */
  readonly histogram: { readonly edges: readonly number[]; readonly counts: readonly number[] };
  readonly nonFiniteCount: number;
  readonly relativeAccuracy: number;
}

export interface CategoricalSummary extends SummaryBase {
  readonly kind: 'categorical';
  readonly topK: readonly { readonly value: string; readonly count: number; readonly fraction: number }[];
  readonly distinctCount: number;
  readonly distinctExact: boolean;
  readonly frequencyErrorBound: number;
}

export type ProfileSummary = NumericSummary | CategoricalSummary;

export function validateSummaryOptions(options: SummaryOptions): void {
  const { histogramBins, topK, quantiles } = options;
  if (
    histogramBins !== undefined &&
    !(Number.isInteger(histogramBins) && histogramBins >= 1 && histogramBins <= 1000)
  )
    throw invalidArgument(
      'options.histogram_bins',
      `must be a whole number from 1 to 1000, got ${histogramBins}`,
    );
  if (topK !== undefined && !(Number.isInteger(topK) && topK >= 1 && topK <= 1000))
    throw invalidArgument('options.top_k', `must be a whole number from 1 to 1000, got ${topK}`);
  if (quantiles !== undefined) {
    if (quantiles.length > 1000) throw invalidArgument('options.quantiles', 'at most 1000 quantiles');
    quantiles.forEach((q, index) => {
      if (!(q >= 0 && q <= 1))
        throw invalidArgument(`options.quantiles[${index}]`, `must be in [0, 1], got ${q}`);
    });
  }
}

function histogram(profile: NumericProfile, bins: number): NumericSummary['histogram'] {
  if (profile.count === 0) return { edges: [], counts: [] };
  const { min, max } = profile;
  if (min === max) return { edges: [min, max], counts: [profile.count] };
  const width = (max - min) / bins;
  const edges = Array.from({ length: bins + 1 }, (_, index) => (index === bins ? max : min + index * width));
  const counts = new Array<number>(bins).fill(0);
  const buckets = orderedBuckets(profile.sketch);
  for (let i = 0; i < buckets.count.length; i++) {
    const count = buckets.count[i] as number;
    if (count === 0) continue;
    const value = Math.min(max, Math.max(min, buckets.value[i] as number));
    const bin = Math.min(bins - 1, Math.floor((value - min) / width));
    counts[bin] = (counts[bin] as number) + count;
  }
  return { edges, counts };
}

export function summarizeProfile(profile: FeatureProfile, options: SummaryOptions = {}): ProfileSummary {
  validateSummaryOptions(options);
  const total = profile.count + profile.nullCount + (profile.kind === 'numeric' ? profile.nonFiniteCount : 0);
  const base = {
    count: profile.count,
    nullCount: profile.nullCount,
    nullRate: total > 0 ? profile.nullCount / total : 0,
  };
  if (profile.kind === 'numeric') {
    const empty = profile.count === 0;
    return {
      ...base,
      kind: 'numeric',
      mean: profile.mean,
      stdPopulation: empty ? Number.NaN : Math.sqrt(profile.m2 / profile.count),
      stdSample: profile.count > 1 ? Math.sqrt(profile.m2 / (profile.count - 1)) : Number.NaN,
      min: empty ? Number.NaN : profile.min,
      max: empty ? Number.NaN : profile.max,
      quantiles: (options.quantiles ?? summaryDefaults.quantiles).map((q) => ({
        q,
        value: sketchQuantile(profile.sketch, q),
      })),
      histogram: histogram(profile, options.histogramBins ?? summaryDefaults.histogramBins),
      nonFiniteCount: profile.nonFiniteCount,
      relativeAccuracy: profile.sketch.relativeAccuracy,
    };
  }
  const top = [...profile.counts]
    .sort(([a, countA], [b, countB]) => countB - countA || (a < b ? -1 : a > b ? 1 : 0))
    .slice(0, options.topK ?? summaryDefaults.topK);
  const exact = profile.frequencyErrorBound === 0;
  return {
    ...base,
    kind: 'categorical',
    topK: top.map(([value, count]) => ({
      value,
      count,
      fraction: profile.count > 0 ? count / profile.count : 0,
    })),
    distinctCount: exact ? profile.counts.size : Math.round(HyperLogLog.decode(profile.distinct).estimate()),
    distinctExact: exact,
    frequencyErrorBound: profile.frequencyErrorBound,
  };
}

/** The relative standard error of an estimated distinct count. */
export const distinctCountStandardError = hyperLogLogStandardError;
