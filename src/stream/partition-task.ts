/**
 * The state of one Kafka partition of a stream aggregation: its window aggregator, its watermark
 * and the offset it has read up to, checkpointed together (DESIGN §4, exactly-once results).
 *
 * Why per partition: entities are keyed to partitions, so every event of an entity is in one
 * partition's log, and a partition's results depend on nothing but that log. The watermark that
 * fires a partition's windows and judges its events late is the partition's own, W_p = greatest
 * event time read from p − B, raised after every record; so what is emitted, and which events are
 * late, is a function of the log alone — not of how fetches interleave, of which member owns
 * which partitions, or of when a member crashed. A restart or a rebalance resumes from the last
 * checkpoint and re-reads the log from its offset: it emits exactly what the uninterrupted run
 * emits, and the sinks' idempotent upserts make the repeats harmless.
 *
 * Pure: no I/O and no clock (processing time is passed in); the stream runner does the rest.
 */
import type { AggregateValue } from '../domain/aggregations.js';
import { FStoreError } from '../domain/errors.js';
import type { FeatureValue, FeatureView, KeyValue } from '../domain/model.js';
import { decodeOnlineKey } from '../domain/online-codec.js';
import { decodeStreamCheckpoint, encodeStreamCheckpoint } from '../domain/stream-checkpoint.js';
import {
  createWindowAggregator,
  type WindowAggregationSpec,
  type WindowAggregator,
  type WindowEmission,
} from '../domain/window-aggregator.js';
import type { DeadLetter, SourceRecord } from '../ports/event-source.js';
import type { OfflineRowBatch } from '../ports/offline-store.js';
import type { EventDecoder } from './event-decoder.js';

export interface PartitionTaskOptions {
  readonly spec: WindowAggregationSpec;
  readonly boundMicros: number;
  readonly decode: EventDecoder;
}

export interface WindowRow {
  /** The entity's online key (see encodeOnlineKey). */
  readonly key: string;
  /** The window end: the row's event time. */
  readonly end: number;
  readonly values: Readonly<Record<string, AggregateValue>>;
  readonly trigger: 'watermark' | 'late_event';
}

export interface BatchCounts {
  records: number;
  applied: number;
  late: number;
  invalid: number;
  malformed: number;
  windowsFired: number;
  windowsReemitted: number;
}

export const emptyCounts = (): BatchCounts => ({
  records: 0,
  applied: 0,
  late: 0,
  invalid: 0,
  malformed: 0,
  windowsFired: 0,
  windowsReemitted: 0,
});

export interface ProcessedBatch {
  /** The last result of each (key, window end) the batch emitted, in emission order. */
  readonly rows: WindowRow[];
  readonly deadLetters: DeadLetter[];
  readonly counts: BatchCounts;
}

export class PartitionTask {
  readonly aggregator: WindowAggregator;
  /** The next offset to read. */
  nextOffset: bigint;
  /** The generation of the stored checkpoint this state continues (null: none yet). */
  generation: number | null;
  /** Greatest event time read (late events included), microseconds; null before the first. */
  maxEventTime: number | null;
  /** Processing time of the last stored checkpoint, milliseconds. */
  checkpointedAtMs: number;
  /** The next offset as of the last stored checkpoint: below `nextOffset`, the state has news. */
  checkpointedOffset: bigint;
  /** A batch of the partition is being processed (its state must not be checkpointed meanwhile). */
  busy = false;

  private constructor(
    readonly partition: number,
    private readonly options: PartitionTaskOptions,
    state: {
      aggregator: WindowAggregator;
      nextOffset: bigint;
      generation: number | null;
      maxEventTime: number | null;
      nowMs: number;
    },
  ) {
    this.aggregator = state.aggregator;
    this.nextOffset = state.nextOffset;
    this.generation = state.generation;
    this.maxEventTime = state.maxEventTime;
    this.checkpointedAtMs = state.nowMs;
    this.checkpointedOffset = state.nextOffset;
  }

  /** A task starting at `firstOffset` with empty state. */
  static fresh(partition: number, options: PartitionTaskOptions, firstOffset: bigint, nowMs: number) {
    return new PartitionTask(partition, options, {
      aggregator: createWindowAggregator(options.spec),
      nextOffset: firstOffset,
      generation: null,
      maxEventTime: null,
      nowMs,
    });
  }

  /** A task continuing a stored checkpoint (bytes from `checkpoint()`); bad bytes throw data_loss. */
  static restore(
    partition: number,
    options: PartitionTaskOptions,
    stored: { readonly generation: number; readonly state: Uint8Array },
    nowMs: number,
  ) {
    const checkpoint = decodeStreamCheckpoint(stored.state);
    const position = checkpoint.positions[String(partition)];
    if (position === undefined || !/^\d+$/.test(position))
      throw new FStoreError('data_loss', `stream checkpoint of partition ${partition}: no offset for it`);
    const entry = checkpoint.watermarks.partitions.find(([p]) => p === partition);
    return new PartitionTask(partition, options, {
      aggregator: createWindowAggregator(options.spec, checkpoint.windows),
      nextOffset: BigInt(position),
      generation: stored.generation,
      maxEventTime: entry?.[1] ?? null,
      nowMs,
    });
  }

  /** W_p: the partition's watermark, −∞ before its first event. */
  get watermark(): number {
    return this.aggregator.watermark;
  }

  /**
   * Applies the records at or after `nextOffset`, in order: decode, push to the aggregator, raise
   * W_p after each (so lateness does not depend on where batches end), collect what fired.
   */
  process(records: readonly SourceRecord[]): ProcessedBatch {
    const counts = emptyCounts();
    const rows = new Map<string, WindowRow>();
    /** The last result of a (key, end) wins, placed last: rows keep emission order. */
    const put = (emission: WindowEmission) => {
      const id = `${emission.key}\u0000${emission.end}`;
      rows.delete(id);
      rows.set(id, { key: emission.key, end: emission.end, values: emission.row, trigger: emission.trigger });
    };
    const deadLetters: DeadLetter[] = [];
    const { aggregator, partition } = this;
    const { decode, boundMicros } = this.options;
    for (const record of records) {
      const offset = BigInt(record.offset);
      if (offset < this.nextOffset) continue;
      counts.records++;
      this.nextOffset = offset + 1n;
      const decoded = decode(record.value);
      if (!decoded.ok) {
        // Not an event (malformed), or an event with a value its aggregation cannot take (invalid).
        const reason = decoded.reason ?? 'malformed';
        counts[reason]++;
        deadLetters.push({
          partition,
          offset: record.offset,
          value: record.value,
          reason,
          problem: decoded.problem,
        });
        continue;
      }
      const { event } = decoded;
      const outcome = aggregator.pushEvent(event);
      if (outcome.status === 'invalid') {
        counts.invalid++;
        deadLetters.push({
          partition,
          offset: record.offset,
          value: record.value,
          reason: 'invalid',
          problem: outcome.problem,
        });
        continue;
      }
      if (outcome.status === 'late') {
        counts.late++;
        deadLetters.push({
          partition,
          offset: record.offset,
          value: record.value,
          reason: 'late',
          problem: `event time ${event.time} + allowed lateness ≤ watermark ${aggregator.watermark}`,
        });
      } else {
        counts.applied++;
        for (const emission of outcome.emissions) {
          counts.windowsReemitted++;
          put(emission);
        }
      }
      if (this.maxEventTime === null || event.time > this.maxEventTime) {
        this.maxEventTime = event.time;
        for (const emission of aggregator.advanceWatermark(event.time - boundMicros)) {
          counts.windowsFired++;
          put(emission);
        }
      }
    }
    return { rows: [...rows.values()], deadLetters, counts };
  }

  /** The checkpoint bytes: window state, W_p, greatest event time and next offset, together. */
  checkpoint(): Uint8Array {
    const watermark = this.aggregator.watermark;
    return encodeStreamCheckpoint({
      positions: { [String(this.partition)]: this.nextOffset.toString() },
      watermarks: {
        watermark: watermark === Number.NEGATIVE_INFINITY ? null : watermark,
        partitions: [[this.partition, this.maxEventTime]],
      },
      windows: this.aggregator.snapshot(),
    });
  }
}

/** A window result as a feature value of the produced view: counts are int64, the rest doubles. */
function featureValue(type: string, value: AggregateValue): FeatureValue {
  if (value === null) return null;
  if (type === 'int64') return typeof value === 'bigint' ? value : BigInt(value as number);
  return typeof value === 'bigint' ? Number(value) : (value as number);
}

/** The rows as a column-major batch of `view` (the produced view): keys, event time = end, values. */
export function windowRowsToBatch(
  view: FeatureView,
  rows: readonly WindowRow[],
  createdMicros: number,
): OfflineRowBatch {
  const keys: KeyValue[][] = view.joinKeys.map(() => new Array(rows.length));
  const values: FeatureValue[][] = view.features.map(() => new Array(rows.length));
  const eventTimes: number[] = new Array(rows.length);
  const createdTimes: number[] = new Array(rows.length).fill(createdMicros);
  rows.forEach((row, index) => {
    const parts = decodeOnlineKey(row.key, view.joinKeys);
    if (!parts)
      throw new FStoreError(
        'internal',
        `stream key ${JSON.stringify(row.key)} does not fit view ${view.name}`,
      );
    for (let part = 0; part < parts.length; part++) keys[part]![index] = parts[part]!;
    eventTimes[index] = row.end;
    view.features.forEach((feature, featureIndex) => {
      values[featureIndex]![index] = featureValue(feature.type, row.values[feature.name] ?? null);
    });
  });
  return { view, keys, eventTimes, createdTimes, values };
}
