import { FStoreError, invalidArgument } from '../errors.js';

/**
 * A relative-error quantile sketch (DDSketch: Masson, Rim and Lee, "DDSketch: a fast and
 * fully-mergeable quantile sketch with relative-error guarantees", VLDB 2019).
 *
 * A positive value v falls in bucket i = ⌈log_γ v⌉, which holds (γ^(i−1), γ^i], with
 * γ = (1 + α) / (1 − α); the bucket's representative 2γ^i / (γ + 1) is within relative error α of
 * every value in it. Negative values go to a mirrored store by |v|, zeros (and magnitudes below
 * `minIndexable`) to a zero count. Buckets only count, so two sketches with the same α merge by
 * adding counts: the merge of sketches of parts IS the sketch of the union, bit for bit — while no
 * store had to collapse. A store keeps at most `maxBins` buckets; beyond that its lowest-magnitude
 * buckets are folded into one (values near zero lose their accuracy first, the tails keep theirs).
 * With α = 0.5 % and 4,096 bins a store spans γ^4096 ≈ 10^17.8 of dynamic range before folding.
 *
 * The sketch is plain data (numbers and arrays only), so it crosses worker threads by structured
 * clone and is stored as msgpack.
 */

export interface BucketStore {
  /** Bucket index of counts[0]. */
  readonly offset: number;
  /** Count per bucket index offset, offset + 1, ... (trailing and leading zeros trimmed). */
  readonly counts: readonly number[];
}

export interface QuantileSketch {
  readonly relativeAccuracy: number;
  readonly maxBins: number;
  readonly zeroCount: number;
  readonly positive: BucketStore;
  readonly negative: BucketStore;
  /** Values added (finite only). */
  readonly count: number;
  /** Exact extremes; +Infinity / -Infinity while empty. */
  readonly min: number;
  readonly max: number;
}

export const sketchDefaults = {
  relativeAccuracy: 0.005, // 0.5 %: a quantile of 100 is reported within 99.5–100.5
  maxBins: 4096, // per sign: ~32 KiB of counts at most
} as const;

// Below this magnitude a value counts as zero: log() of subnormals is where the index math breaks.
const minIndexable = 1e-300;

export interface SketchMapping {
  readonly gamma: number;
  readonly inverseLogGamma: number;
}

export function sketchMapping(relativeAccuracy: number): SketchMapping {
  const gamma = (1 + relativeAccuracy) / (1 - relativeAccuracy);
  return { gamma, inverseLogGamma: 1 / Math.log(gamma) };
}

function validateAccuracy(relativeAccuracy: number, maxBins: number): void {
  if (!(relativeAccuracy > 0 && relativeAccuracy < 1))
    throw invalidArgument('relativeAccuracy', `must be in (0, 1), got ${relativeAccuracy}`);
  if (!Number.isInteger(maxBins) || maxBins < 16 || maxBins > 1 << 20)
    throw invalidArgument('maxBins', `must be a whole number from 16 to 1048576, got ${maxBins}`);
}

/** A growable dense store of counts by bucket index, the accumulator's hot path. */
class DenseStore {
  counts = new Float64Array(128);
  /** Bucket index of counts[0]; meaningful once `used`. */
  offset = 0;
  minIndex = Number.POSITIVE_INFINITY;
  maxIndex = Number.NEGATIVE_INFINITY;
  /** Set once buckets were folded: counts below `minIndex` were moved into it. */
  collapsed = false;

  constructor(private readonly maxBins: number) {}

  add(index: number, count: number): void {
    if (index < this.minIndex || index > this.maxIndex) this.#extend(index);
    const slot = Math.max(index, this.minIndex); // folded away: into the lowest kept
    this.counts[slot - this.offset] = (this.counts[slot - this.offset] as number) + count;
  }

  #extend(index: number): void {
    if (this.minIndex === Number.POSITIVE_INFINITY) {
      this.offset = index - (this.counts.length >> 1);
      this.minIndex = index;
      this.maxIndex = index;
      return;
    }
    let low = Math.min(this.minIndex, index);
    const high = Math.max(this.maxIndex, index);
    if (high - low + 1 > this.maxBins) {
      // Fold the lowest magnitudes: the new range keeps the top maxBins indexes.
      const keepFrom = high - this.maxBins + 1;
      if (keepFrom > this.minIndex) {
        let folded = 0;
        for (let i = this.minIndex; i < Math.min(keepFrom, this.maxIndex + 1); i++) {
          folded += this.counts[i - this.offset] as number;
          this.counts[i - this.offset] = 0;
        }
        this.#ensure(keepFrom, high);
        this.counts[keepFrom - this.offset] = (this.counts[keepFrom - this.offset] as number) + folded;
      }
      low = keepFrom;
      this.collapsed = true;
    }
    this.#ensure(low, high);
    this.minIndex = low;
    this.maxIndex = high;
  }

  /** Makes indexes low..high addressable, moving or growing the array. */
  #ensure(low: number, high: number): void {
    if (low >= this.offset && high < this.offset + this.counts.length) return;
    const span = high - low + 1;
    const size = Math.max(this.counts.length, 1 << Math.ceil(Math.log2(span * 1.5 + 1)));
    const next = new Float64Array(size);
    const offset = low - ((size - span) >> 1);
    if (this.minIndex !== Number.POSITIVE_INFINITY) {
      const from = Math.max(this.minIndex, offset);
      const to = Math.min(this.maxIndex, offset + size - 1);
      for (let i = from; i <= to; i++) next[i - offset] = this.counts[i - this.offset] as number;
    }
    this.counts = next;
    this.offset = offset;
  }

  toStore(): BucketStore {
    if (this.minIndex === Number.POSITIVE_INFINITY) return { offset: 0, counts: [] };
    let low = this.minIndex;
    let high = this.maxIndex;
    while (low <= high && this.counts[low - this.offset] === 0) low++;
    while (high >= low && this.counts[high - this.offset] === 0) high--;
    if (low > high) return { offset: 0, counts: [] };
    return {
      offset: low,
      counts: Array.from(this.counts.subarray(low - this.offset, high - this.offset + 1)),
    };
  }

  static from(store: BucketStore, maxBins: number): DenseStore {
    const dense = new DenseStore(maxBins);
    store.counts.forEach((count, position) => {
      if (count > 0) dense.add(store.offset + position, count);
    });
    return dense;
  }
}

/** Adds values into a sketch's stores; `finish` gives the plain sketch. */
export class SketchBuilder {
  readonly #mapping: SketchMapping;
  readonly #positive: DenseStore;
  readonly #negative: DenseStore;
  #zeroCount = 0;
  #count = 0;
  #min = Number.POSITIVE_INFINITY;
  #max = Number.NEGATIVE_INFINITY;

  constructor(
    readonly relativeAccuracy: number = sketchDefaults.relativeAccuracy,
    readonly maxBins: number = sketchDefaults.maxBins,
  ) {
    validateAccuracy(relativeAccuracy, maxBins);
    this.#mapping = sketchMapping(relativeAccuracy);
    this.#positive = new DenseStore(maxBins);
    this.#negative = new DenseStore(maxBins);
  }

  /** Adds a finite value (the caller filters NaN and infinities). */
  add(value: number): void {
    this.#count += 1;
    if (value < this.#min) this.#min = value;
    if (value > this.#max) this.#max = value;
    if (value > minIndexable)
      this.#positive.add(Math.ceil(Math.log(value) * this.#mapping.inverseLogGamma), 1);
    else if (value < -minIndexable)
      this.#negative.add(Math.ceil(Math.log(-value) * this.#mapping.inverseLogGamma), 1);
    else this.#zeroCount += 1;
  }

  /** Adds the first `length` values of `values`, all finite. */
  addAll(values: Float64Array, length: number): void {
    const inverse = this.#mapping.inverseLogGamma;
    const positive = this.#positive;
    let min = this.#min;
    let max = this.#max;
    let zeros = 0;
    for (let i = 0; i < length; i++) {
      const value = values[i] as number;
      if (value < min) min = value;
      if (value > max) max = value;
      if (value > minIndexable) positive.add(Math.ceil(Math.log(value) * inverse), 1);
      else if (value < -minIndexable) this.#negative.add(Math.ceil(Math.log(-value) * inverse), 1);
      else zeros += 1;
    }
    this.#zeroCount += zeros;
    this.#count += length;
    this.#min = min;
    this.#max = max;
  }

  mergeSketch(sketch: QuantileSketch): void {
    if (sketch.relativeAccuracy !== this.relativeAccuracy)
      throw invalidArgument(
        'sketch',
        `relative accuracies differ (${this.relativeAccuracy} and ${sketch.relativeAccuracy}): sketches merge only at the same accuracy`,
      );
    for (const [source, target] of [
      [sketch.positive, this.#positive],
      [sketch.negative, this.#negative],
    ] as const)
      source.counts.forEach((count, position) => {
        if (count > 0) target.add(source.offset + position, count);
      });
    this.#zeroCount += sketch.zeroCount;
    this.#count += sketch.count;
    if (sketch.min < this.#min) this.#min = sketch.min;
    if (sketch.max > this.#max) this.#max = sketch.max;
  }

  /** Whether a store folded buckets: merges are then within the error bound, not exact. */
  get collapsed(): boolean {
    return this.#positive.collapsed || this.#negative.collapsed;
  }

  finish(): QuantileSketch {
    return {
      relativeAccuracy: this.relativeAccuracy,
      maxBins: this.maxBins,
      zeroCount: this.#zeroCount,
      positive: this.#positive.toStore(),
      negative: this.#negative.toStore(),
      count: this.#count,
      min: this.#min + 0, // -0 → 0, whichever zero came first
      max: this.#max + 0,
    };
  }
}

export function emptySketch(relativeAccuracy: number = sketchDefaults.relativeAccuracy): QuantileSketch {
  return new SketchBuilder(relativeAccuracy).finish();
}

/** The sketch of the union of the two sketches' values (exact while neither store folds). */
export function mergeSketches(a: QuantileSketch, b: QuantileSketch): QuantileSketch {
  const builder = new SketchBuilder(a.relativeAccuracy, Math.max(a.maxBins, b.maxBins));
  builder.mergeSketch(a);
  builder.mergeSketch(b);
  return builder.finish();
}

/**
 * The sketch's buckets in ascending value order: `upper` is each bucket's upper edge (a key equal
 * in every sketch of the same accuracy), `value` its representative, `count` its count.
 */
export interface OrderedBuckets {
  readonly upper: Float64Array;
  readonly value: Float64Array;
  readonly count: Float64Array;
}

export function orderedBuckets(sketch: QuantileSketch): OrderedBuckets {
  const { gamma } = sketchMapping(sketch.relativeAccuracy);
  const size = sketch.negative.counts.length + 1 + sketch.positive.counts.length;
  const upper = new Float64Array(size);
  const value = new Float64Array(size);
  const count = new Float64Array(size);
  let at = 0;
  // Negative values: the bucket of index i holds [−γ^i, −γ^(i−1)); larger i is more negative.
  const negative = sketch.negative;
  for (let position = negative.counts.length - 1; position >= 0; position--) {
    const index = negative.offset + position;
    upper[at] = -(gamma ** (index - 1));
    value[at] = (-2 * gamma ** index) / (gamma + 1);
    count[at] = negative.counts[position] as number;
    at++;
  }
  upper[at] = 0;
  value[at] = 0;
  count[at] = sketch.zeroCount;
  at++;
  const positive = sketch.positive;
  for (let position = 0; position < positive.counts.length; position++) {
    const index = positive.offset + position;
    upper[at] = gamma ** index;
    value[at] = (2 * gamma ** index) / (gamma + 1);
    count[at] = positive.counts[position] as number;
    at++;
  }
  return { upper, value, count };
}

/**
 * The value at quantile q: the representative of the bucket holding the value of rank
 * q·(count − 1) (0-based, lower rank), within relative error α of it; the exact min and max at
 * the ends. NaN for an empty sketch.
 */
export function sketchQuantile(sketch: QuantileSketch, q: number): number {
  if (!(q >= 0 && q <= 1)) throw invalidArgument('quantile', `must be in [0, 1], got ${q}`);
  if (sketch.count === 0) return Number.NaN;
  if (q === 0) return sketch.min;
  if (q === 1) return sketch.max;
  const rank = Math.floor(q * (sketch.count - 1));
  const buckets = orderedBuckets(sketch);
  let seen = 0;
  for (let i = 0; i < buckets.count.length; i++) {
    seen += buckets.count[i] as number;
    if (seen > rank) return Math.min(sketch.max, Math.max(sketch.min, buckets.value[i] as number));
  }
  return sketch.max;
}

/**
 * The fraction of values ≤ x, counting whole buckets whose representative is ≤ x: at the
 * sketch's own quantiles (representatives) it counts exactly the buckets up to that quantile.
 */
export function sketchCdf(sketch: QuantileSketch, x: number): number {
  if (sketch.count === 0) return Number.NaN;
  if (x >= sketch.max) return 1;
  if (x < sketch.min) return 0;
  const buckets = orderedBuckets(sketch);
  let seen = 0;
  for (let i = 0; i < buckets.count.length; i++) {
    if ((buckets.value[i] as number) > x) break;
    seen += buckets.count[i] as number;
  }
  return seen / sketch.count;
}

/** Checks a sketch read from storage or another process; throws FStoreError naming the problem. */
export function assertSketch(value: unknown, where: string): asserts value is QuantileSketch {
  const bad = (problem: string) => new FStoreError('invalid_argument', `${where}: ${problem}`);
  if (typeof value !== 'object' || value === null) throw bad('is not a sketch');
  const sketch = value as Record<string, unknown>;
  for (const key of ['relativeAccuracy', 'maxBins', 'zeroCount', 'count', 'min', 'max'])
    if (typeof sketch[key] !== 'number') throw bad(`${key} is not a number`);
  if (!((sketch.relativeAccuracy as number) > 0 && (sketch.relativeAccuracy as number) < 1))
    throw bad('relativeAccuracy is not in (0, 1)');
  for (const key of ['positive', 'negative']) {
    const store = sketch[key] as { offset?: unknown; counts?: unknown } | undefined;
    if (!store || typeof store.offset !== 'number' || !Array.isArray(store.counts))
      throw bad(`${key} is not a bucket store`);
    if (!(store.counts as unknown[]).every((count) => typeof count === 'number' && count >= 0))
      throw bad(`${key} has a count that is not a non-negative number`);
  }
}
