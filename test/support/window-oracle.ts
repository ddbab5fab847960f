/**
 * The brute-force batch oracle of the windowing semantics (DESIGN §4), shared by the kernel's
 * property tests and the stream tier's end-to-end tests: window arithmetic in BigInt, every
 * aggregate computed from scratch over the applied events.
 */
import type { AggregateValue, AggregationFunction, EventValue } from '../../src/domain/aggregations.js';
import { type DistinctValue, HyperLogLog } from '../../src/domain/hyperloglog.js';
import type { AggregationSpec } from '../../src/domain/window-aggregator.js';

/** Floored division in BigInt (BigInt's `/` truncates towards zero). */
export function floorDivide(value: bigint, divisor: bigint): bigint {
  const quotient = value / divisor;
  return value % divisor !== 0n && value < 0n !== divisor < 0n ? quotient - 1n : quotient;
}

/** Window starts holding t: every multiple s of slide with s ≤ t < s + size. */
export function startsHolding(time: number, size: number, slide: number): number[] {
  const [t, sizeBig, slideBig] = [BigInt(time), BigInt(size), BigInt(slide)];
  const starts: number[] = [];
  for (let k = floorDivide(t - sizeBig, slideBig); k <= floorDivide(t, slideBig); k++)
    if (k * slideBig <= t && t < k * slideBig + sizeBig) starts.push(Number(k * slideBig));
  return starts;
}

export const numericFunctions: readonly AggregationFunction[] = [
  'sum',
  'mean',
  'min',
  'max',
  'stddev_pop',
  'stddev_samp',
];

export interface AppliedEvent {
  readonly key: string;
  readonly time: number;
  readonly fields: Readonly<Record<string, EventValue>>;
  readonly arrival: number;
}

export function bruteForce(
  fn: AggregationFunction,
  field: string | undefined,
  events: readonly AppliedEvent[],
) {
  const present = events.filter((e) => field === undefined || (e.fields[field] ?? null) !== null);
  const values = present.map((e) => (field === undefined ? true : e.fields[field]!));
  const numbers = values.map((value) => Number(value) + 0);
  const n = numbers.length;
  const sum = numbers.reduce((total, x) => total + x, 0);
  switch (fn) {
    case 'count':
      return n;
    case 'sum':
      return n === 0 ? null : sum;
    case 'mean':
      return n === 0 ? null : sum / n;
    case 'min':
      return n === 0 ? null : Math.min(...numbers);
    case 'max':
      return n === 0 ? null : Math.max(...numbers);
    case 'stddev_pop':
    case 'stddev_samp': {
      const divisor = fn === 'stddev_pop' ? n : n - 1;
      if (divisor <= 0) return null;
      const mean = sum / n;
      return Math.sqrt(numbers.reduce((total, x) => total + (x - mean) ** 2, 0) / divisor);
    }
    case 'last': {
      let best: AppliedEvent | undefined;
      for (const e of present)
        if (!best || e.time > best.time || (e.time === best.time && e.arrival > best.arrival)) best = e;
      if (!best) return null;
      const value = best.fields[field!]!;
      return typeof value === 'number' ? value + 0 : value;
    }
    case 'distinct_count': {
      const sketch = new HyperLogLog();
      for (const value of values) sketch.add(value as DistinctValue);
      return sketch.estimate();
    }
  }
}

export interface PartitionOracleSpec {
  readonly aggregations: readonly AggregationSpec[];
  readonly boundMicros: number;
  readonly allowedLatenessMicros: number;
  readonly emitFollowingEmptyWindow: boolean;
}

export interface OracleRow {
  readonly key: string;
  readonly end: number;
  /** Every aggregation whose shape has a window ending at `end` (empty windows: count 0, else null). */
  readonly values: Record<string, AggregateValue>;
}

export interface PartitionOracle {
  /** By `${key}|${end}`: the rows that must be stored once the log is read to its end. */
  readonly rows: Map<string, OracleRow>;
  /** Positions (index in the log) of the events refused as late. */
  readonly late: number[];
  readonly applied: number;
}

/**
 * What one partition's log must produce, read in order (valid events only): W = greatest event
 * time so far − B, raised after each event; an event with t + allowed lateness ≤ W (W before it) is
 * late; every window of an applied event (and, with emitFollowingEmptyWindow, the window one slide
 * later) whose end ≤ the final W is a row, holding every aggregation over the applied events in it.
 */
export function partitionOracle(
  spec: PartitionOracleSpec,
  log: readonly {
    readonly key: string;
    readonly time: number;
    readonly fields: Readonly<Record<string, EventValue>>;
  }[],
): PartitionOracle {
  let maxTime = Number.NEGATIVE_INFINITY;
  const applied: AppliedEvent[] = [];
  const late: number[] = [];
  for (const [index, event] of log.entries()) {
    const watermark = maxTime - spec.boundMicros;
    if (event.time + spec.allowedLatenessMicros <= watermark) late.push(index);
    else applied.push({ ...event, arrival: applied.length });
    maxTime = Math.max(maxTime, event.time);
  }
  const finalWatermark = maxTime - spec.boundMicros;
  const shapes = [
    ...new Map(spec.aggregations.map((a) => [`${a.sizeMicros}/${a.slideMicros}`, a])).values(),
  ].map(({ sizeMicros, slideMicros }) => ({ size: sizeMicros, slide: slideMicros }));
  const byKey = new Map<string, AppliedEvent[]>();
  for (const event of applied) byKey.set(event.key, [...(byKey.get(event.key) ?? []), event]);
  const rows = new Map<string, OracleRow>();
  for (const [key, events] of byKey) {
    const ends = new Set<number>();
    for (const { size, slide } of shapes)
      for (const event of events)
        for (const start of startsHolding(event.time, size, slide)) {
          ends.add(start + size);
          if (spec.emitFollowingEmptyWindow) ends.add(start + slide + size);
        }
    for (const end of ends) {
      if (end > finalWatermark) continue;
      const values: Record<string, AggregateValue> = {};
      for (const { name, function: fn, field, sizeMicros, slideMicros } of spec.aggregations) {
        const start = end - sizeMicros;
        if (Number(floorDivide(BigInt(start), BigInt(slideMicros)) * BigInt(slideMicros)) !== start) continue;
        values[name] = bruteForce(
          fn,
          field,
          events.filter((e) => start <= e.time && e.time < end),
        );
      }
      rows.set(`${key}|${end}`, { key, end, values });
    }
  }
  return { rows, late, applied: applied.length };
}
