/**
 * Aggregation functions of stream aggregations as mergeable partial aggregates (DESIGN §4): each
 * (entity, tile) keeps one partial per (kind, input field), an event updates the partials of its
 * tile, and a window result merges the partials of the window's tiles. Functions that can share a
 * partial do (sum and mean share a compensated sum; both standard deviations share the moments).
 *
 * Inputs: null or absent values are skipped, as SQL aggregates skip NULL (count without a field
 * counts events instead). Numbers must be finite; int64 values may arrive as bigints and are
 * converted to the nearest double for numeric functions. Results over no values: count and
 * distinct_count 0, everything else null.
 *
 * - sum: Neumaier-compensated, so merge order barely matters and large + small terms keep their
 *   small parts. mean = sum / count of values.
 * - stddev_pop (divides by n) and stddev_samp (by n − 1, null below two values): Welford's update
 *   per value and Chan et al.'s pairwise merge of (n, mean, M2), stable without a sum of squares.
 * - last: the value with the greatest event time; among equal event times the one that arrived
 *   last (the aggregator numbers applied events in arrival order).
 * - distinct_count: a HyperLogLog sketch (see hyperloglog.ts for precision and hashing).
 */
import { FStoreError } from './errors.js';
import { type DistinctValue, HyperLogLog } from './hyperloglog.js';

export const aggregationFunctions = [
  'count',
  'sum',
  'mean',
  'min',
  'max',
  'stddev_pop',
  'stddev_samp',
  'last',
  'distinct_count',
] as const;
export type AggregationFunction = (typeof aggregationFunctions)[number];

/** A field value of a decoded event, as the stream tier hands it to the kernel. */
export type EventValue = string | number | bigint | boolean | null | undefined;
/** One aggregation result: a number for all functions but last, which returns its input value. */
export type AggregateValue = string | number | bigint | boolean | null;

export const partialKinds = ['count', 'sum', 'min', 'max', 'moments', 'last', 'distinct'] as const;
export type PartialKind = (typeof partialKinds)[number];

export const partialKindOf: Readonly<Record<AggregationFunction, PartialKind>> = {
  count: 'count',
  sum: 'sum',
  mean: 'sum',
  min: 'min',
  max: 'max',
  stddev_pop: 'moments',
  stddev_samp: 'moments',
  last: 'last',
  distinct_count: 'distinct',
};

/** The partial aggregate of one (kind, field) over the events of one tile, or of a whole window. */
export interface PartialAggregate {
  /**
   * Adds one non-null value that passed `inputProblem`; `time` and `arrival` order values for
   * `last`. Count without a field is fed `true` once per event.
   */
  add(value: Exclude<EventValue, null | undefined>, time: number, arrival: number): void;
  /** Folds in a partial of the same kind. */
  merge(other: PartialAggregate): void;
  result(fn: AggregationFunction): AggregateValue;
  /** Plain data (numbers, strings, bigints, booleans, null, arrays, bytes) for checkpoints. */
  encode(): unknown;
}

/** Why `value` cannot feed a partial of `kind`, or undefined when it can. `value` is not null. */
export function inputProblem(kind: PartialKind, value: unknown): string | undefined {
  switch (typeof value) {
    case 'number':
      return Number.isFinite(value) ? undefined : `${value} is not a finite number`;
    case 'bigint':
      return undefined;
    case 'string':
    case 'boolean':
      return kind === 'count' || kind === 'last' || kind === 'distinct'
        ? undefined
        : `a number is required, got a ${typeof value}`;
    default:
      return `unsupported value of type ${typeof value}`;
  }
}

/** -0 becomes 0 so results do not depend on which zero came first (and survive msgpack). */
function toNumber(value: Exclude<EventValue, null | undefined>): number {
  const number = typeof value === 'bigint' ? Number(value) : (value as number);
  return number === 0 ? 0 : number;
}

class CountPartial implements PartialAggregate {
  count = 0;
  add(): void {
    this.count++;
  }
  merge(other: PartialAggregate): void {
    this.count += (other as CountPartial).count;
  }
  result(): AggregateValue {
    return this.count;
  }
  encode(): unknown {
    return this.count;
  }
}

class SumPartial implements PartialAggregate {
  count = 0;
  sum = 0;
  /** Neumaier's running compensation: the low-order parts lost by `sum`. */
  compensation = 0;
  add(value: Exclude<EventValue, null | undefined>): void {
    this.count++;
    this.addTerm(toNumber(value));
  }
  merge(other: PartialAggregate): void {
    const from = other as SumPartial;
    if (from.count === 0) return;
    this.count += from.count;
    this.addTerm(from.sum);
    this.compensation += from.compensation;
  }
  result(fn: AggregationFunction): AggregateValue {
    if (this.count === 0) return null;
    const total = this.sum + this.compensation;
    return fn === 'mean' ? total / this.count : total + 0;
  }
  encode(): unknown {
    return [this.count, this.sum, this.compensation];
  }
  private addTerm(term: number): void {
    const total = this.sum + term;
    this.compensation +=
      Math.abs(this.sum) >= Math.abs(term) ? this.sum - total + term : term - total + this.sum;
    this.sum = total;
  }
}

class ExtremumPartial implements PartialAggregate {
  value: number | null = null;
  constructor(readonly keepsMinimum: boolean) {}
  add(value: Exclude<EventValue, null | undefined>): void {
    this.offer(toNumber(value));
  }
  merge(other: PartialAggregate): void {
    const { value } = other as ExtremumPartial;
    if (value !== null) this.offer(value);
  }
  result(): AggregateValue {
    return this.value;
  }
  encode(): unknown {
    return this.value;
  }
  private offer(value: number): void {
    if (this.value === null || (this.keepsMinimum ? value < this.value : value > this.value))
      this.value = value;
  }
}

class MomentsPartial implements PartialAggregate {
  count = 0;
  mean = 0;
  /** Sum of squared deviations from the mean. */
  m2 = 0;
  add(value: Exclude<EventValue, null | undefined>): void {
    const x = toNumber(value);
    this.count++;
    const delta = x - this.mean;
    this.mean += delta / this.count;
    this.m2 += delta * (x - this.mean);
  }
  merge(other: PartialAggregate): void {
    const from = other as MomentsPartial;
    if (from.count === 0) return;
    if (this.count === 0) {
      this.count = from.count;
      this.mean = from.mean;
      this.m2 = from.m2;
      return;
    }
    const count = this.count + from.count;
    const delta = from.mean - this.mean;
    this.mean += (delta * from.count) / count;
    this.m2 += from.m2 + ((delta * delta * this.count) / count) * from.count;
    this.count = count;
  }
  result(fn: AggregationFunction): AggregateValue {
    const divisor = fn === 'stddev_samp' ? this.count - 1 : this.count;
    if (divisor <= 0) return null;
    return Math.sqrt(Math.max(0, this.m2) / divisor);
  }
  encode(): unknown {
    return [this.count, this.mean, this.m2];
  }
}

class LastPartial implements PartialAggregate {
  time = Number.NEGATIVE_INFINITY;
  arrival = -1;
  value: AggregateValue = null;
  add(value: Exclude<EventValue, null | undefined>, time: number, arrival: number): void {
    this.offer(typeof value === 'number' ? toNumber(value) : value, time, arrival);
  }
  merge(other: PartialAggregate): void {
    const from = other as LastPartial;
    if (from.arrival >= 0) this.offer(from.value, from.time, from.arrival);
  }
  result(): AggregateValue {
    return this.value;
  }
  encode(): unknown {
    return this.arrival < 0 ? null : [this.time, this.arrival, this.value];
  }
  offer(value: AggregateValue, time: number, arrival: number): void {
    if (time > this.time || (time === this.time && arrival > this.arrival)) {
      this.time = time;
      this.arrival = arrival;
      this.value = value;
    }
  }
}

class DistinctPartial implements PartialAggregate {
  constructor(readonly sketch = new HyperLogLog()) {}
  add(value: Exclude<EventValue, null | undefined>): void {
    this.sketch.add(value as DistinctValue);
  }
  merge(other: PartialAggregate): void {
    this.sketch.merge((other as DistinctPartial).sketch);
  }
  result(): AggregateValue {
    return this.sketch.estimate();
  }
  encode(): unknown {
    return this.sketch.encode();
  }
}

export function createPartialAggregate(kind: PartialKind): PartialAggregate {
  switch (kind) {
    case 'count':
      return new CountPartial();
    case 'sum':
      return new SumPartial();
    case 'min':
      return new ExtremumPartial(true);
    case 'max':
      return new ExtremumPartial(false);
    case 'moments':
      return new MomentsPartial();
    case 'last':
      return new LastPartial();
    case 'distinct':
      return new DistinctPartial();
  }
}

function dataLoss(kind: PartialKind, data: unknown): FStoreError {
  return new FStoreError('data_loss', `window state: bad ${kind} partial ${JSON.stringify(String(data))}`);
}

const isFiniteNumber = (value: unknown): value is number =>
  typeof value === 'number' && Number.isFinite(value);
const isCount = (value: unknown): value is number => Number.isSafeInteger(value) && (value as number) >= 0;

function numberTriple(kind: PartialKind, data: unknown): [number, number, number] {
  if (
    !Array.isArray(data) ||
    data.length !== 3 ||
    !isCount(data[0]) ||
    !isFiniteNumber(data[1]) ||
    !isFiniteNumber(data[2])
  )
    throw dataLoss(kind, data);
  return data as [number, number, number];
}

/** The inverse of `PartialAggregate.encode`; throws a `data_loss` FStoreError on malformed data. */
export function decodePartialAggregate(kind: PartialKind, data: unknown): PartialAggregate {
  switch (kind) {
    case 'count': {
      if (!isCount(data)) throw dataLoss(kind, data);
      const partial = new CountPartial();
      partial.count = data;
      return partial;
    }
    case 'sum': {
      const partial = new SumPartial();
      [partial.count, partial.sum, partial.compensation] = numberTriple(kind, data);
      return partial;
    }
    case 'min':
    case 'max': {
      if (data !== null && !isFiniteNumber(data)) throw dataLoss(kind, data);
      const partial = new ExtremumPartial(kind === 'min');
      partial.value = data;
      return partial;
    }
    case 'moments': {
      const partial = new MomentsPartial();
      [partial.count, partial.mean, partial.m2] = numberTriple(kind, data);
      return partial;
    }
    case 'last': {
      const partial = new LastPartial();
      if (data === null) return partial;
      if (!Array.isArray(data) || data.length !== 3 || !Number.isSafeInteger(data[0]) || !isCount(data[1]))
        throw dataLoss(kind, data);
      const value: unknown = data[2];
      if (value === null || value === undefined || inputProblem(kind, value) !== undefined)
        throw dataLoss(kind, data);
      partial.offer(value as AggregateValue, data[0] as number, data[1] as number);
      return partial;
    }
    case 'distinct':
      return new DistinctPartial(HyperLogLog.decode(data));
  }
}
