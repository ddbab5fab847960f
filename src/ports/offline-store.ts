import type { FeatureValue, FeatureView, KeyValue } from '../domain/model.js';

/**
 * The offline store port (DESIGN §3-§4): every feature row of every view version, kept as time
 * series in PostgreSQL for point-in-time retrieval and materialization. Only the operations the
 * core uses; `src/adapters/postgres/offline/` implements it.
 */

/** A column-major batch of rows of one view version, already validated against its schema. */
export interface OfflineRowBatch {
  /** The view version the rows follow (its id, version, join keys and features). */
  readonly view: FeatureView;
  /** One column per join key of `view.joinKeys`, in order; every column has `rowCount` values. */
  readonly keys: readonly (readonly KeyValue[])[];
  /** Event time of each row, microseconds since the epoch. */
  readonly eventTimes: readonly number[];
  /**
   * When each row was recorded, microseconds since the epoch (ties on event time: latest wins;
   * equal created times: the row written last wins, a later row of the batches or a later write).
   */
  readonly createdTimes: readonly number[];
  /** One column per feature of `view.features`, in order; null where the value is null. */
  readonly values: readonly (readonly FeatureValue[])[];
}

export interface OfflineWriteResult {
  readonly rows: number;
}

/** A half-open range of event times, microseconds since the epoch: [start, end). */
export interface TimeRange {
  readonly startMicros: number;
  readonly endMicros: number;
}

/** The distinct entity keys of a point-in-time read; a key's rank is its position. */
export interface PointInTimeKeys {
  /** One column per join key of the view, in order, all of the same length. */
  readonly keys: readonly (readonly KeyValue[])[];
  /** Per key: the latest label time asked for it (microseconds); later rows are not read. */
  readonly maxTimes: Float64Array;
}

/**
 * Feature rows of a point-in-time read: every row (of any version) of the ranks
 * firstRank..lastRank, sorted by (rank, event time, created time, write order: of fully tied rows
 * the one written last comes last), encoded as PostgreSQL binary
 * COPY rows `(rank int4, event_time timestamptz, created_time timestamptz, <the features of the
 * view version asked for, in order>)` and decoded off the event loop by the point-in-time worker
 * (src/adapters/postgres/offline/binary-rows.ts). `bytes` owns its buffer: it can be transferred.
 */
export interface FeatureRowSegment {
  readonly bytes: Uint8Array;
  readonly rows: number;
  readonly firstRank: number;
  readonly lastRank: number;
}

/**
 * Feature values of a view's rows, as PostgreSQL binary COPY rows `(event_time timestamptz,
 * <the features asked for, in order>)`, decoded off the event loop by the profile worker
 * (src/workers/profile-task.ts). `bytes` owns its buffer: it can be transferred.
 */
export interface FeatureValueSegment {
  readonly bytes: Uint8Array;
  readonly rows: number;
}

/** Distinct (keys, time) pairs, column-major. */
export interface EntityTimes {
  readonly keys: readonly (readonly KeyValue[])[];
  readonly times: readonly number[];
}

/** Whose stream checkpoint: one per (project, stream aggregation, topic, Kafka partition). */
export interface StreamCheckpointScope {
  readonly project: string;
  readonly aggregation: string;
  readonly topic: string;
}

export interface StoredStreamCheckpoint {
  readonly partition: number;
  /** Bumped by every commit; a commit names the generation it read (compare-and-set). */
  readonly generation: number;
  /** The checkpoint bytes (src/domain/stream-checkpoint.ts); opaque to the store. */
  readonly state: Uint8Array;
}

export interface StreamBatchCommit {
  readonly scope: StreamCheckpointScope;
  readonly partition: number;
  /** The generation the writer restored from; null: it started without a checkpoint. */
  readonly expectedGeneration: number | null;
  readonly state: Uint8Array;
  /**
   * Window results: each row REPLACES any stored row of the same view with the same keys and
   * event time (an idempotent upsert keyed by (view, entity, window end)).
   */
  readonly rows: readonly OfflineRowBatch[];
}

export type StreamBatchCommitResult =
  | { readonly committed: true; readonly generation: number }
  /** Another writer committed this partition since `expectedGeneration`: nothing was written. */
  | { readonly committed: false; readonly generation: number | null };

export interface OfflineStore {
  /**
   * Makes the storage of a view version exist (tables, columns, partitions' parent): idempotent,
   * and safe to call from several processes at once. Older versions' rows stay readable.
   */
  ensureView(view: FeatureView): Promise<void>;
  /**
   * Appends every batch in ONE transaction (COPY): all rows are stored or none. Rejects with
   * FStoreError 'unavailable' when PostgreSQL cannot be reached, leaving nothing behind.
   */
  writeRows(batches: AsyncIterable<OfflineRowBatch> | Iterable<OfflineRowBatch>): Promise<OfflineWriteResult>;
  /**
   * The latest row per entity among the rows of `range` (greatest event time, ties by latest
   * created time, then by the row written last), in the layout of `view` (the current version:
   * features that a row's own version lacked, or typed differently, are null). Streamed (binary
   * COPY) in batches of at most `batchRows`, from one consistent snapshot, no faster than they
   * are taken; stopping the iteration early (break, throw, `signal`) cancels the query.
   */
  readLatest(
    view: FeatureView,
    range: TimeRange,
    options: { readonly batchRows: number; readonly signal?: AbortSignal },
  ): AsyncIterable<OfflineRowBatch>;
  /**
   * The feature rows a point-in-time join of `keys` needs: for each key, its rows with event time
   * ≤ its max time, in segments of at least `segmentRows` rows that never split a key. Streamed
   * from one query; a segment is produced only when the previous one was taken, so a slow
   * consumer slows the database read. Stopping early (break, throw, `signal`) cancels the query.
   */
  readPointInTime(
    view: FeatureView,
    keys: PointInTimeKeys,
    options: { readonly segmentRows: number; readonly signal?: AbortSignal },
  ): AsyncIterable<FeatureRowSegment>;
  /**
   * Every distinct (keys, event time) of the rows of `views` (which share their join key names
   * and types) in `range`, sorted by keys then time, in batches of at most `batchRows`.
   */
  readEntityTimes(
    views: readonly FeatureView[],
    range: TimeRange,
    options: { readonly batchRows: number; readonly signal?: AbortSignal },
  ): AsyncIterable<EntityTimes>;
  /**
   * The values of `features` (indexes into `view.features`, the current version: rows of versions
   * that lacked a feature, or typed it differently, hold null) of every row with event time in
   * `range`, in no particular order, in segments of `segmentRows` rows (the last may be shorter).
   * Streamed from one snapshot like `readPointInTime`.
   */
  readFeatureValues(
    view: FeatureView,
    range: TimeRange,
    options: {
      readonly features: readonly number[];
      readonly segmentRows: number;
      readonly signal?: AbortSignal;
    },
  ): AsyncIterable<FeatureValueSegment>;
  /** The end of the last recorded materialization of the view, or undefined. */
  lastMaterializedEnd(viewId: number): Promise<number | undefined>;
  /** Records that the view was materialized up to `endMicros` (kept when later than the stored end). */
  recordMaterialized(viewId: number, range: TimeRange): Promise<void>;
  /** The stored checkpoints of `scope` for the given partitions (absent: none stored). */
  loadStreamCheckpoints(
    scope: StreamCheckpointScope,
    partitions: readonly number[],
  ): Promise<Map<number, StoredStreamCheckpoint>>;
  /**
   * In ONE transaction: replaces the window rows and stores the checkpoint, provided the stored
   * generation is still `expectedGeneration` (else nothing is written: a newer owner of the
   * partition has committed). Rejects with 'unavailable' when PostgreSQL cannot be reached.
   */
  commitStreamBatch(commit: StreamBatchCommit): Promise<StreamBatchCommitResult>;
  /**
   * In ONE transaction: each row REPLACES any stored row of the same view with the same keys and
   * event time (idempotent window results between checkpoints).
   */
  replaceRows(batches: readonly OfflineRowBatch[]): Promise<OfflineWriteResult>;
  /** Forgets every checkpoint of the scope (the aggregation was deleted, or is to be recomputed). */
  deleteStreamCheckpoints(scope: StreamCheckpointScope): Promise<number>;
  /** Resolves when the database answers (readiness). */
  ping(): Promise<void>;
  close(): Promise<void>;
}
