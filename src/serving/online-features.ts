import { type Column, zeroValue } from '../domain/columns.js';
import { FStoreError } from '../domain/errors.js';
import { computeFeatureStatus, type FeatureStatus, onlineExpiryMs } from '../domain/feature-status.js';
import type { FeatureValue, FeatureView, KeyValue, ValueType } from '../domain/model.js';
import {
  type DecodedOnlineRow,
  decodeOnlineRow,
  decodeSlot,
  encodeOnlineKey,
  encodeOnlineRow,
  featureSlot,
} from '../domain/online-codec.js';
import type { OnlineEntry, OnlineStore } from '../ports/online-store.js';
import { resolveFeatures } from './feature-references.js';
import type { RegistryCache, ServedView } from './registry-cache.js';
import { countRows, joinKeyColumns, validateRows } from './rows.js';
import type { ServedValueSampler } from './served-sample.js';

export interface OnlineServingOptions {
  /** Most entity rows in one read or write (RESOURCE_EXHAUSTED above). */
  readonly maxBatchRows: number;
  /** How long an online key outlives its ttl (see `onlineExpiryMs`). */
  readonly onlineExpiryGraceMs: number;
  /** Clock in microseconds since the epoch; tests pin it. */
  readonly nowMicros?: () => number;
  /** Offered every read's result (it samples some, off the response's path). */
  readonly servedSampler?: ServedValueSampler;
  /** Told of every answered read (metrics): the project, its entity rows and the result. */
  readonly observeRead?: (project: string, rows: number, result: OnlineReadResult) => void;
}

export interface OnlineReadRequest {
  readonly project: string;
  readonly features: readonly string[];
  readonly featureSet: string;
  /** Join key name → column of key values. */
  readonly entities: ReadonlyMap<string, Column>;
}

export interface OnlineFeatureColumn {
  readonly reference: string;
  readonly type: ValueType;
  /** The type's zero value where the status is not 'present'. */
  readonly values: FeatureValue[];
  readonly statuses: FeatureStatus[];
  /** Microseconds since the epoch; 0 where not found. The same array for every column of a view. */
  readonly eventTimes: readonly number[];
}

export interface OnlineReadResult {
  readonly columns: OnlineFeatureColumn[];
  readonly requestTimeMicros: number;
}

export interface OnlineWriteRequest {
  readonly project: string;
  readonly featureView: string;
  readonly entities: ReadonlyMap<string, Column>;
  readonly features: readonly {
    readonly name: string;
    readonly values: Column;
    readonly nullRows: readonly number[];
  }[];
  readonly eventTimes: readonly bigint[];
}

interface ViewLookup {
  readonly view: ServedView;
  readonly features: { readonly reference: string; readonly name: string; readonly output: number }[];
  /** Per request row: index into the unique keys of the whole request. */
  rowKeys: Int32Array;
}

/** Rejects with the signal's reason as soon as it aborts (deadline, cancellation). */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

/**
 * Online store entries of validated column-major rows of `view` (its current version): the keys,
 * the encoded rows and their expiry. The one encoding of every online write path (pushes,
 * materialization).
 */
export function toOnlineEntries(
  view: FeatureView,
  keys: readonly (readonly KeyValue[])[],
  eventTimes: readonly number[],
  values: readonly (readonly FeatureValue[])[],
  expiryGraceMs: number,
): OnlineEntry[] {
  const rowCount = eventTimes.length;
  const entries: OnlineEntry[] = new Array(rowCount);
  const parts: KeyValue[] = new Array(keys.length);
  const rowValues: FeatureValue[] = new Array(view.features.length);
  for (let row = 0; row < rowCount; row++) {
    for (let part = 0; part < keys.length; part++)
      parts[part] = (keys[part] as readonly KeyValue[])[row] as KeyValue;
    for (let index = 0; index < values.length; index++)
      rowValues[index] = (values[index] as readonly FeatureValue[])[row] as FeatureValue;
    const eventTime = eventTimes[row] as number;
    entries[row] = {
      key: encodeOnlineKey(view.id, parts),
      value: encodeOnlineRow(view.version, eventTime, view.features, rowValues),
      expireAtMs: onlineExpiryMs(eventTime, view.ttlMs, expiryGraceMs),
    };
  }
  return entries;
}

export interface OnlineWriteTotals {
  /** Entries sent to the store. */
  readonly entries: number;
  readonly written: number;
  readonly stale: number;
}

/**
 * Writes batches of entries to the online store (last write wins), keeping up to `writesInFlight`
 * store calls going so that producing the next batch (a database read, the encoding) overlaps
 * the store applying the previous ones. For batches in which each key appears once in all: two
 * writes of one key in flight together could land in either order. Yields the running totals
 * after each write completes, in order; the first failure rejects.
 */
export async function* writeOnlineEntries(
  store: OnlineStore,
  batches: AsyncIterable<readonly OnlineEntry[]> | Iterable<readonly OnlineEntry[]>,
  writesInFlight: number,
): AsyncGenerator<OnlineWriteTotals> {
  const totals = { entries: 0, written: 0, stale: 0 };
  const inFlight: Promise<void>[] = [];
  for await (const entries of batches) {
    const write = store.writeMany(entries).then((result) => {
      totals.entries += entries.length;
      totals.written += result.written;
      totals.stale += result.stale;
    });
    // Awaited below in order; marked handled now so a failure while an earlier write is still
    // awaited is not an unhandled rejection.
    write.catch(() => {});
    inFlight.push(write);
    if (inFlight.length >= writesInFlight) {
      await inFlight.shift();
      yield { ...totals };
    }
  }
  while (inFlight.length > 0) {
    await inFlight.shift();
    yield { ...totals };
  }
}

/**
 * Online reads and writes (DESIGN §4): resolves references against the cached registry,
 * validates the request whole, then makes exactly one call to the online store.
 */
export class OnlineFeatureService {
  readonly #nowMicros: () => number;

  constructor(
    private readonly registry: RegistryCache,
    private readonly store: OnlineStore,
    private readonly options: OnlineServingOptions,
  ) {
    this.#nowMicros = options.nowMicros ?? (() => Date.now() * 1000);
  }

  async read(request: OnlineReadRequest, signal?: AbortSignal): Promise<OnlineReadResult> {
    const project = this.registry.project(request.project);
    const { views: requested } = resolveFeatures(project, request, { online: true });
    const rowCount = countRows(request.entities, this.options.maxBatchRows);

    const lookups = new Map<string, ViewLookup>();
    let outputs = 0;
    for (const [name, { view, features }] of requested) {
      lookups.set(name, { view, features, rowKeys: new Int32Array(0) });
      outputs += features.length;
    }

    // Every view's keys go into one list, duplicates removed, for a single store call.
    const keys: string[] = [];
    const keyIndex = new Map<string, number>();
    for (const lookup of lookups.values()) {
      const { current } = lookup.view;
      const keyColumns = joinKeyColumns(current, request.entities);
      lookup.rowKeys = new Int32Array(rowCount);
      const parts: KeyValue[] = new Array(keyColumns.length);
      for (let row = 0; row < rowCount; row++) {
        for (let part = 0; part < keyColumns.length; part++)
          parts[part] = (keyColumns[part] as readonly KeyValue[])[row] as KeyValue;
        const key = encodeOnlineKey(current.id, parts);
        let index = keyIndex.get(key);
        if (index === undefined) {
          index = keys.length;
          keys.push(key);
          keyIndex.set(key, index);
        }
        lookup.rowKeys[row] = index;
      }
    }

    const stored = await untilAborted(this.store.readMany(keys), signal);
    const decoded: (DecodedOnlineRow | null)[] = stored.map((bytes) =>
      bytes ? decodeOnlineRow(bytes) : null,
    );
    const requestTimeMicros = this.#nowMicros();

    const columns = new Array<OnlineFeatureColumn>(outputs);
    for (const lookup of lookups.values()) {
      const { view } = lookup;
      const rows = new Array<DecodedOnlineRow | null>(rowCount);
      const eventTimes = new Array<number>(rowCount); // shared by the view's columns
      // The row's status before looking at any one value: not found, aged out, or fresh.
      const rowStatuses = new Array<FeatureStatus>(rowCount);
      for (let row = 0; row < rowCount; row++) {
        const entry = decoded[lookup.rowKeys[row] as number] ?? null;
        rows[row] = entry;
        eventTimes[row] = entry ? entry.eventTimeMicros : 0;
        rowStatuses[row] = computeFeatureStatus(
          entry?.eventTimeMicros ?? null,
          false,
          view.current.ttlMs,
          requestTimeMicros,
        );
      }
      for (const feature of lookup.features) {
        const type = view.current.features[
          view.featureIndexes.get(view.current.version)?.get(feature.name) as number
        ]?.type as ValueType;
        const zero = zeroValue(type);
        const values = new Array<FeatureValue>(rowCount);
        const statuses = new Array<FeatureStatus>(rowCount);
        // Where the feature sits in the writing version's rows; almost every row shares one version.
        let cachedVersion = -1;
        let slot: number | undefined;
        for (let row = 0; row < rowCount; row++) {
          const status = rowStatuses[row] as FeatureStatus;
          const entry = rows[row] as DecodedOnlineRow | null;
          if (status !== 'present' || !entry) {
            statuses[row] = status;
            values[row] = zero;
            continue;
          }
          if (entry.version !== cachedVersion) {
            cachedVersion = entry.version;
            slot = this.#slotOf(view, entry.version, feature.name, type);
          }
          const value = slot === undefined ? null : decodeSlot(type, entry, slot);
          statuses[row] = value === null ? 'null_value' : 'present';
          values[row] = value ?? zero;
        }
        columns[feature.output] = { reference: feature.reference, type, values, statuses, eventTimes };
      }
    }
    const result = { columns, requestTimeMicros };
    this.options.servedSampler?.offer(request.project, result);
    this.options.observeRead?.(request.project, rowCount, result);
    return result;
  }

  /**
   * The slot of a feature in rows written by `version`; undefined when that version lacked the
   * feature or typed it differently (a forced change): such rows hold no usable value for it.
   */
  #slotOf(view: ServedView, version: number, name: string, type: ValueType): number | undefined {
    const index = view.featureIndexes.get(version)?.get(name);
    const writer = view.versions.get(version)?.features;
    if (index === undefined || !writer || writer[index]?.type !== type) return undefined;
    return featureSlot(writer, index);
  }

  async write(
    request: OnlineWriteRequest,
    signal?: AbortSignal,
  ): Promise<{ written: number; stale: number }> {
    const project = this.registry.project(request.project);
    const view = project.views.get(request.featureView);
    if (!view)
      throw new FStoreError(
        'not_found',
        `feature_view: project "${request.project}" has no feature view "${request.featureView}"`,
      );
    const { current } = view;
    if (!current.online)
      throw new FStoreError(
        'failed_precondition',
        `feature_view: feature view "${current.name}" is not served online`,
      );
    const {
      keys: keyColumns,
      eventTimes,
      values: columns,
    } = validateRows(
      view,
      { entities: request.entities, features: request.features, eventTimes: request.eventTimes },
      { maxBatchRows: this.options.maxBatchRows, positiveTimes: true },
    );

    const entries = toOnlineEntries(
      current,
      keyColumns,
      eventTimes,
      columns,
      this.options.onlineExpiryGraceMs,
    );
    return untilAborted(this.store.writeMany(entries), signal);
  }
}
