import { FStoreError, invalidArgument } from '../domain/errors.js';
import type { FeatureValue, FeatureView, KeyValue } from '../domain/model.js';
import { encodeOnlineKey } from '../domain/online-codec.js';
import type { OfflineRowBatch, OfflineStore } from '../ports/offline-store.js';
import type { OnlineEntry, OnlineStore } from '../ports/online-store.js';
import { toOnlineEntries, writeOnlineEntries } from './online-features.js';
import type { RegistryCache } from './registry-cache.js';
import { type RowColumns, validateRows } from './rows.js';

/** Online store calls of a write_online ingest that may run at once (as in Materialize). */
const onlineWritesInFlight = 3;

/** One message of an ingest stream: the header first, then chunks of rows. */
export type IngestMessage =
  | {
      readonly kind: 'header';
      readonly project: string;
      readonly featureView: string;
      /** Also write the latest row per entity online once the offline rows are committed. */
      readonly writeOnline: boolean;
    }
  | { readonly kind: 'rows'; readonly rows: RowColumns }
  | { readonly kind: 'end'; readonly rowCount: bigint }
  | { readonly kind: 'empty' };

export interface IngestOptions {
  /** Most rows in one chunk (RESOURCE_EXHAUSTED above). */
  readonly maxBatchRows: number;
  /** With write_online: entries per online store call (one pipeline per node). */
  readonly onlineBatchRows: number;
  /** How long an online key outlives its ttl (see `onlineExpiryMs`). */
  readonly onlineExpiryGraceMs: number;
  /** Clock in microseconds since the epoch: the default created time of rows. */
  readonly nowMicros?: () => number;
}

export interface IngestResult {
  /** Rows committed to the offline store. */
  readonly rows: number;
  /** With write_online: entities stored online, and entities whose online row was newer. */
  readonly writtenOnline: number;
  readonly staleOnline: number;
}

/** An entity's latest row of the stream so far. */
interface LatestRow {
  readonly keys: readonly KeyValue[];
  eventTime: number;
  createdTime: number;
  /** Per feature of the view, in order. */
  values: FeatureValue[];
}

/**
 * The latest row per entity of a stream (greatest event time, ties by latest created time, then
 * the later row, which the offline store also writes later: the rule of historical retrieval and
 * Materialize): memory grows with distinct entities, not rows. Rows are encoded for the online
 * store only at the end, once per entity, not once per row streamed.
 */
class LatestRows {
  readonly #rows = new Map<string, LatestRow>();
  /** Per feature: whether its values are bytes, which are copied when kept. */
  readonly #holdsBytes: readonly boolean[];

  constructor(readonly view: FeatureView) {
    this.#holdsBytes = view.features.map(
      (feature) => feature.type === 'bytes' || feature.type === 'bytes_list',
    );
  }

  get size(): number {
    return this.#rows.size;
  }

  /** Adds validated column-major rows of the view. */
  add(
    keys: readonly (readonly KeyValue[])[],
    eventTimes: readonly number[],
    createdTimes: readonly number[],
    values: readonly (readonly FeatureValue[])[],
  ): void {
    const parts: KeyValue[] = new Array(keys.length);
    for (let row = 0; row < eventTimes.length; row++) {
      for (let part = 0; part < keys.length; part++)
        parts[part] = (keys[part] as readonly KeyValue[])[row] as KeyValue;
      const key = encodeOnlineKey(this.view.id, parts);
      const eventTime = eventTimes[row] as number;
      const createdTime = createdTimes[row] as number;
      const held = this.#rows.get(key);
      if (
        held &&
        (eventTime < held.eventTime || (eventTime === held.eventTime && createdTime < held.createdTime))
      )
        continue;
      const rowValues = new Array<FeatureValue>(values.length);
      for (let index = 0; index < values.length; index++) {
        const value = (values[index] as readonly FeatureValue[])[row] as FeatureValue;
        rowValues[index] = this.#holdsBytes[index] ? copyBytes(value) : value;
      }
      if (held) {
        held.eventTime = eventTime;
        held.createdTime = createdTime;
        held.values = rowValues;
      } else this.#rows.set(key, { keys: [...parts], eventTime, createdTime, values: rowValues });
    }
  }

  /** The range of event times [start, end) that holds every kept row. */
  eventTimeRange(): { startMicros: number; endMicros: number } {
    let startMicros = Number.POSITIVE_INFINITY;
    let last = Number.NEGATIVE_INFINITY;
    for (const { eventTime } of this.#rows.values()) {
      startMicros = Math.min(startMicros, eventTime);
      last = Math.max(last, eventTime);
    }
    return { startMicros, endMicros: last + 1 };
  }

  /** The kept rows as online entries, in batches of at most `batchRows`. */
  *entries(batchRows: number, expiryGraceMs: number): Generator<OnlineEntry[]> {
    let batch: LatestRow[] = [];
    const encode = () =>
      toOnlineEntries(
        this.view,
        this.view.joinKeys.map((_, part) => batch.map((row) => row.keys[part] as KeyValue)),
        batch.map((row) => row.eventTime),
        this.view.features.map((_, index) => batch.map((row) => row.values[index] as FeatureValue)),
        expiryGraceMs,
      );
    for (const row of this.#rows.values()) {
      batch.push(row);
      if (batch.length >= batchRows) {
        yield encode();
        batch = [];
      }
    }
    if (batch.length > 0) yield encode();
  }
}

/**
 * A kept value must not share memory with its request: decoded bytes are views of the whole
 * message buffer, which one kept value would keep alive.
 */
function copyBytes(value: FeatureValue): FeatureValue {
  if (value instanceof Uint8Array) return new Uint8Array(value);
  if (Array.isArray(value))
    return value.map((element) => (element instanceof Uint8Array ? new Uint8Array(element) : element));
  return value;
}

/**
 * Bulk ingest into the offline store (DESIGN §4, issue 3): chunks are validated against the
 * view's current version as they arrive and streamed into one offline transaction, so a bad row
 * anywhere leaves nothing behind, and memory holds one chunk at a time. The transaction commits
 * only on the client's end message with the right row count: grpc-js ends a request stream the
 * same way whether the client finished or gave up, so the end of the stream alone proves nothing.
 * With write_online, the latest row per entity is also kept as the chunks pass (memory grows with
 * distinct entities, not rows) and written online through the last-write-wins path of pushes,
 * only after the commit: a failed or cancelled ingest writes nothing online.
 */
export class IngestService {
  readonly #nowMicros: () => number;

  constructor(
    private readonly registry: RegistryCache,
    private readonly offline: OfflineStore,
    private readonly online: OnlineStore,
    private readonly options: IngestOptions,
  ) {
    this.#nowMicros = options.nowMicros ?? (() => Date.now() * 1000);
  }

  async ingest(messages: AsyncIterable<IngestMessage>, signal?: AbortSignal): Promise<IngestResult> {
    const iterator = messages[Symbol.asyncIterator]();
    const first = await iterator.next();
    if (first.done)
      throw invalidArgument(
        'header',
        'the stream is empty: send a header naming the project and feature view first',
      );
    if (first.value.kind !== 'header')
      throw invalidArgument(
        'header',
        'the first message must be a header naming the project and feature view',
      );
    const { project: projectName, featureView, writeOnline } = first.value;
    const view = this.registry.project(projectName).views.get(featureView);
    if (!view)
      throw new FStoreError(
        'not_found',
        `header.feature_view: project "${projectName}" has no feature view "${featureView}"`,
      );
    if (writeOnline && !view.current.online)
      throw new FStoreError(
        'failed_precondition',
        `header.write_online: feature view "${featureView}" is not served online`,
      );
    await this.offline.ensureView(view.current);

    const { maxBatchRows } = this.options;
    const nowMicros = this.#nowMicros;
    const latest = writeOnline ? new LatestRows(view.current) : undefined;
    async function* batches(): AsyncGenerator<OfflineRowBatch> {
      let firstRow = 0;
      for (let chunk = 0; ; chunk++) {
        const next = await iterator.next();
        if (signal?.aborted) throw signal.reason;
        if (next.done)
          throw new FStoreError(
            'cancelled',
            `the stream ended after ${firstRow} rows without its end message: nothing was stored`,
          );
        const message = next.value;
        if (message.kind === 'end') {
          if (message.rowCount !== BigInt(firstRow))
            throw invalidArgument(
              'end.row_count',
              `the client counted ${message.rowCount} rows, the server received ${firstRow}: nothing was stored`,
            );
          if (!(await iterator.next()).done)
            throw invalidArgument(`message ${chunk + 2}`, 'nothing may follow the end message');
          break;
        }
        if (message.kind !== 'rows')
          throw invalidArgument(
            `message ${chunk + 1}`,
            'after the header every message must be a chunk of rows or the end',
          );
        let validated: ReturnType<typeof validateRows>;
        try {
          validated = validateRows(view as NonNullable<typeof view>, message.rows, {
            maxBatchRows,
            positiveTimes: false,
            firstRow,
          });
        } catch (error) {
          const reason = FStoreError.from(error);
          throw new FStoreError(
            reason.code,
            `rows chunk ${chunk} (stream rows from ${firstRow}): ${reason.message}`,
            {
              cause: error,
            },
          );
        }
        const current = (view as NonNullable<typeof view>).current;
        const createdTimes =
          validated.createdTimes ?? new Array<number>(validated.rowCount).fill(nowMicros());
        latest?.add(validated.keys, validated.eventTimes, createdTimes, validated.values);
        yield {
          view: current,
          keys: validated.keys,
          eventTimes: validated.eventTimes,
          createdTimes,
          values: validated.values,
        };
        firstRow += validated.rowCount;
      }
      // Thrown inside the transaction, so an empty stream commits nothing either.
      if (firstRow === 0) throw invalidArgument('rows', 'the stream holds a header but no rows');
    }
    const result = await this.offline.writeRows(batches());
    if (!latest) return { rows: result.rows, writtenOnline: 0, staleOnline: 0 };
    return { rows: result.rows, ...(await this.#writeOnline(latest, result.rows)) };
  }

  /**
   * Writes the kept rows online, once the offline transaction has committed, so the online store
   * never holds a row the offline store lacks. Runs to the end even if the client has gone
   * meanwhile: the rows are committed, and stopping halfway would only leave the online store
   * further behind.
   */
  async #writeOnline(
    latest: LatestRows,
    committedRows: number,
  ): Promise<{ writtenOnline: number; staleOnline: number }> {
    let done = { entries: 0, written: 0, stale: 0 };
    try {
      const batches = latest.entries(this.options.onlineBatchRows, this.options.onlineExpiryGraceMs);
      for await (const totals of writeOnlineEntries(this.online, batches, onlineWritesInFlight))
        done = totals;
    } catch (error) {
      const { startMicros, endMicros } = latest.eventTimeRange();
      throw new FStoreError(
        'unavailable',
        `the ${committedRows} rows ARE committed to the offline store, but writing the latest row of each ` +
          `of their ${latest.size} entities online failed after ${done.entries}: ${FStoreError.from(error).message}; ` +
          `the online write can be repeated with Materialize of feature view "${latest.view.name}" from start_time ` +
          `${startMicros} to end_time ${endMicros}`,
        { cause: error },
      );
    }
    return { writtenOnline: done.written, staleOnline: done.stale };
  }
}
