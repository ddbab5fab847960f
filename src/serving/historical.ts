import type { Column } from '../domain/columns.js';
import { zeroValue } from '../domain/columns.js';
import { FStoreError, invalidArgument } from '../domain/errors.js';
import type { FeatureValue, KeyType, KeyValue, ValueType } from '../domain/model.js';
import { encodeOnlineKey } from '../domain/online-codec.js';
import { pointInTimeStatus } from '../domain/point-in-time.js';
import type { FeatureRowSegment, OfflineStore, TimeRange } from '../ports/offline-store.js';
import {
  type PointInTimeTask,
  type PointInTimeTaskResult,
  type ValueColumn,
  valueColumnFor,
} from '../workers/point-in-time-task.js';
import { type RequestedFeature, type RequestedView, resolveFeatures } from './feature-references.js';
import type { RegistryCache } from './registry-cache.js';
import { countRows, joinKeyColumns } from './rows.js';

/** Runs point-in-time tasks off the event loop (a piscina pool in production). */
export interface PointInTimePool {
  run(task: PointInTimeTask, options: { signal?: AbortSignal }): Promise<PointInTimeTaskResult>;
  /** Tasks in flight per call: enough to keep every worker busy while the next segment is read. */
  readonly parallelism: number;
}

/** One message of a GetHistoricalFeatures stream. */
export type HistoricalMessage =
  | {
      readonly kind: 'query';
      readonly project: string;
      readonly features: readonly string[];
      readonly featureSet: string;
      readonly range: TimeRange | undefined;
      readonly chunkRows: number;
    }
  | {
      readonly kind: 'rows';
      readonly entities: ReadonlyMap<string, Column>;
      readonly timestamps: readonly bigint[];
      readonly carry: ReadonlyMap<string, Column>;
    }
  | { readonly kind: 'end'; readonly rowCount: bigint }
  | { readonly kind: 'empty' };

/** Status numbers of the output, equal to fstore.v1.FeatureStatus. */
export const historicalStatus = { ...pointInTimeStatus, nullValue: 3 } as const;

export interface HistoricalFeatureColumn {
  readonly reference: string;
  readonly type: ValueType;
  /**
   * The type's zero value where the status is not PRESENT; a Float64Array for double and float
   * features (float values widened), plain values otherwise.
   */
  readonly values: FeatureValue[] | Float64Array;
  readonly statuses: Uint8Array;
  /** Event time of the chosen row, microseconds; 0 when not found. */
  readonly eventTimes: Float64Array;
}

/** Rows [firstRow, firstRow + timestamps.length) of the result, in input order. */
export interface HistoricalChunk {
  readonly firstRow: number;
  readonly keys: readonly { readonly name: string; readonly type: KeyType; readonly values: KeyValue[] }[];
  readonly timestamps: Float64Array;
  readonly carry: ReadonlyMap<string, Column>;
  readonly features: HistoricalFeatureColumn[];
}

export interface HistoricalOptions {
  /** Most rows in one input chunk (RESOURCE_EXHAUSTED above). */
  readonly maxBatchRows: number;
  /** Rows joined at once: input is read until a block is full, its results sent, then the next. */
  readonly blockRows: number;
  /** Default rows per response chunk. */
  readonly chunkRows: number;
  /** Feature rows per worker task (a segment never splits a key, so it may hold more). */
  readonly segmentRows: number;
}

interface Block {
  readonly firstRow: number;
  readonly rowCount: number;
  /** Join key name → values, for every join key of the requested views. */
  readonly keys: ReadonlyMap<string, KeyValue[]>;
  readonly times: Float64Array;
  readonly carry: ReadonlyMap<string, Column>;
}

interface JoinKeyGroup {
  readonly joinKeys: readonly { readonly name: string; readonly type: KeyType }[];
  readonly views: RequestedView[];
}

/** Per view and block: results in input order. */
interface ViewResults {
  readonly status: Uint8Array;
  readonly eventTime: Float64Array;
  readonly nulls: Uint8Array[];
  readonly values: ValueColumn[];
}

const maxMicros = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * Point-in-time-correct historical retrieval (DESIGN §4, issue 3). Input rows are taken in blocks;
 * per block and view the offline store streams the feature rows of the block's keys (event time
 * ≤ that key's latest label time), sorted by (key rank, event time, created time, write order:
 * of fully tied rows the one written last comes last, and the merge keeps it), in segments that
 * never split a key; each segment is merged with the block's sorted rows of its keys in a worker,
 * and the results are put back in input order. A block's results are sent, in chunks,
 * before the next block is read, so memory is bounded by the block size, and every stage waits for
 * the next: a slow client stops the reading of its own input and of the database.
 */
export class HistoricalService {
  constructor(
    private readonly registry: RegistryCache,
    private readonly offline: OfflineStore,
    private readonly pool: PointInTimePool,
    private readonly options: HistoricalOptions,
  ) {}

  async *retrieve(
    messages: AsyncIterable<HistoricalMessage>,
    signal?: AbortSignal,
  ): AsyncGenerator<HistoricalChunk> {
    const iterator = messages[Symbol.asyncIterator]();
    const first = await iterator.next();
    if (first.done)
      throw invalidArgument(
        'query',
        'the stream is empty: send a query naming the project and features first',
      );
    if (first.value.kind !== 'query')
      throw invalidArgument('query', 'the first message must be a query naming the project and features');
    const query = first.value;
    const project = this.registry.project(query.project);
    const { views } = resolveFeatures(project, query, { online: false, field: 'query' });
    const requested = [...views.values()];
    const features = requested.flatMap((view) => view.features).sort((a, b) => a.output - b.output);
    const groups = joinKeyGroups(requested);
    const joinKeys = new Map<string, KeyType>();
    for (const group of groups) for (const key of group.joinKeys) joinKeys.set(key.name, key.type);
    const chunkRows =
      query.chunkRows > 0 ? Math.min(query.chunkRows, this.options.maxBatchRows) : this.options.chunkRows;
    for (const view of requested) await this.offline.ensureView(view.view.current);

    const blocks = query.range
      ? this.#rangeBlocks(iterator, requested, groups, query.range, signal)
      : this.#inputBlocks(iterator, requested, joinKeys, signal);
    for await (const block of blocks) {
      const results = new Map<RequestedView, ViewResults>();
      for (const group of groups) {
        const ranked = rankRows(block, group);
        for (const view of group.views)
          results.set(view, await this.#joinView(view, ranked, block.rowCount, signal));
      }
      for (let start = 0; start < block.rowCount; start += chunkRows) {
        if (signal?.aborted) throw signal.reason;
        const end = Math.min(block.rowCount, start + chunkRows);
        yield outputChunk(block, start, end, features, requested, results, joinKeys);
      }
    }
  }

  /** Blocks of the client's rows, validated chunk by chunk, up to the end message. */
  async *#inputBlocks(
    iterator: AsyncIterator<HistoricalMessage>,
    requested: readonly RequestedView[],
    joinKeys: ReadonlyMap<string, KeyType>,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<Block> {
    const { blockRows, maxBatchRows } = this.options;
    const references = new Set(
      requested.flatMap((view) => view.features.map((feature) => feature.reference)),
    );
    let total = 0;
    let chunkIndex = 0;
    let carryKinds: Map<string, Column['kind']> | undefined;
    let pending = newPending(joinKeys);
    for (;;) {
      const next = await iterator.next();
      if (signal?.aborted) throw signal.reason;
      if (next.done)
        throw invalidArgument('end', `the stream ended after ${chunkIndex} chunks without an end message`);
      const message = next.value;
      if (message.kind === 'query') throw invalidArgument('query', 'only the first message may be a query');
      if (message.kind === 'empty') throw invalidArgument(`chunks[${chunkIndex}]`, 'the message is empty');
      if (message.kind === 'end') {
        if (message.rowCount !== BigInt(total))
          throw invalidArgument(
            'end.row_count',
            `is ${message.rowCount} but ${total} entity rows arrived: rows were lost or duplicated on the way; nothing after the last complete block was joined`,
          );
        const after = await iterator.next();
        if (!after.done) throw invalidArgument('end', 'a message followed the end message');
        if (pending.rowCount > 0) yield closePending(pending, total - pending.rowCount);
        return;
      }
      const at = `chunks[${chunkIndex}]`;
      const rowCount = withField(at, () => countRows(message.entities, Number.POSITIVE_INFINITY));
      if (rowCount > maxBatchRows)
        throw new FStoreError(
          'resource_exhausted',
          `${at}: ${rowCount} rows, more than the server's maximum of ${maxBatchRows} per chunk (FSTORE_HISTORICAL_CHUNK_ROWS)`,
        );
      for (const view of requested)
        withField(at, () => joinKeyColumns(view.view.current, message.entities)).forEach((column, index) => {
          const name = view.view.current.joinKeys[index]?.name as string;
          if (!pending.keyNamesSeen.has(name)) {
            pending.keyNamesSeen.add(name);
            (pending.keys.get(name) as KeyValue[][]).push(column as KeyValue[]);
          }
        });
      pending.keyNamesSeen.clear();
      if (message.timestamps.length !== rowCount)
        throw invalidArgument(
          `${at}.timestamps`,
          `has ${message.timestamps.length} values, expected ${rowCount} (one label time per row)`,
        );
      const times = new Float64Array(rowCount);
      message.timestamps.forEach((micros, row) => {
        if (micros < -maxMicros || micros > maxMicros)
          throw invalidArgument(
            `${at}.timestamps[${row}]`,
            'is outside the representable range of microseconds',
          );
        times[row] = Number(micros);
      });
      pending.times.push(times);
      // Carried columns: the same names and kinds in every chunk, one value per row.
      const kinds = new Map<string, Column['kind']>();
      for (const [name, column] of message.carry) {
        if (joinKeys.has(name) || references.has(name))
          throw invalidArgument(
            `${at}.carry["${name}"]`,
            'has the name of a join key or a requested feature, which the output already has',
          );
        if (column.values.length !== rowCount)
          throw invalidArgument(
            `${at}.carry["${name}"]`,
            `has ${column.values.length} values, expected ${rowCount}`,
          );
        kinds.set(name, column.kind);
      }
      if (carryKinds === undefined) carryKinds = kinds;
      else if (
        carryKinds.size !== kinds.size ||
        [...kinds].some(([name, kind]) => carryKinds?.get(name) !== kind)
      )
        throw invalidArgument(`${at}.carry`, 'has other columns or types than the first chunk');
      for (const [name, column] of message.carry) {
        const parts = pending.carry.get(name) ?? [];
        parts.push(column);
        pending.carry.set(name, parts);
      }
      pending.rowCount += rowCount;
      total += rowCount;
      chunkIndex += 1;
      if (pending.rowCount >= blockRows) {
        yield closePending(pending, total - pending.rowCount);
        pending = newPending(joinKeys);
      }
    }
  }

  /** Range mode: every (keys, event time) of the views' rows in the range, as blocks. */
  async *#rangeBlocks(
    iterator: AsyncIterator<HistoricalMessage>,
    requested: readonly RequestedView[],
    groups: readonly JoinKeyGroup[],
    range: TimeRange,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<Block> {
    if (groups.length !== 1)
      throw invalidArgument('query.range', 'range mode needs views with the same join keys');
    if (
      !(Number.isSafeInteger(range.startMicros) && Number.isSafeInteger(range.endMicros)) ||
      range.startMicros >= range.endMicros
    )
      throw invalidArgument(
        'query.range',
        `start_time must be before end_time, got [${range.startMicros}, ${range.endMicros})`,
      );
    const next = await iterator.next();
    if (next.done || next.value.kind !== 'end' || next.value.rowCount !== 0n)
      throw invalidArgument(
        'rows',
        'range mode takes no entity rows: send the query, then an end message with row_count 0',
      );
    const joinKeys = (groups[0] as JoinKeyGroup).joinKeys;
    let firstRow = 0;
    for await (const batch of this.offline.readEntityTimes(
      requested.map((view) => view.view.current),
      range,
      { batchRows: this.options.blockRows, signal },
    )) {
      const rowCount = batch.times.length;
      yield {
        firstRow,
        rowCount,
        keys: new Map(joinKeys.map((key, index) => [key.name, batch.keys[index] as KeyValue[]])),
        times: Float64Array.from(batch.times),
        carry: new Map(),
      };
      firstRow += rowCount;
    }
  }

  async #joinView(
    requested: RequestedView,
    ranked: RankedRows,
    rowCount: number,
    signal: AbortSignal | undefined,
  ): Promise<ViewResults> {
    const view = requested.view.current;
    const columnTypes = view.features.map((feature) => feature.type);
    const indexes = requested.view.featureIndexes.get(view.version) as ReadonlyMap<string, number>;
    const wanted = requested.features.map((feature) => indexes.get(feature.name) as number);
    const results: ViewResults = {
      status: new Uint8Array(rowCount).fill(historicalStatus.notFound),
      eventTime: new Float64Array(rowCount),
      nulls: wanted.map(() => new Uint8Array(rowCount)),
      values: wanted.map((column) => valueColumnFor(columnTypes[column] as ValueType, rowCount)),
    };
    const ttlMicros = view.ttlMs * 1000;
    const inFlight: Promise<void>[] = [];
    const scatter = (result: PointInTimeTaskResult, start: number) => {
      const { order } = ranked;
      const length = result.status.length;
      for (let index = 0; index < length; index++) {
        const row = order[start + index] as number;
        results.status[row] = result.status[index] as number;
        results.eventTime[row] = result.eventTime[index] as number;
      }
      result.values.forEach((source, slot) => {
        const nulls = results.nulls[slot] as Uint8Array;
        const sourceNulls = result.nulls[slot] as Uint8Array;
        const target = results.values[slot] as ValueColumn;
        for (let index = 0; index < length; index++) {
          const row = order[start + index] as number;
          nulls[row] = sourceNulls[index] as number;
          (target as unknown[])[row] = (source as unknown[])[index];
        }
      });
    };
    const submit = (segment: FeatureRowSegment) => {
      const start = ranked.rankStart[segment.firstRank] as number;
      const end = ranked.rankStart[segment.lastRank + 1] as number;
      const task: PointInTimeTask = {
        bytes: segment.bytes,
        rows: segment.rows,
        columnTypes,
        wanted,
        keyRanks: ranked.keyRanks.slice(start, end),
        times: ranked.times.slice(start, end),
        ttlMicros,
      };
      return this.pool.run(task, { signal }).then((result) => scatter(result, start));
    };
    try {
      for await (const segment of this.offline.readPointInTime(
        view,
        { keys: ranked.distinctKeys, maxTimes: ranked.maxTimes },
        { segmentRows: this.options.segmentRows, signal },
      )) {
        const task = submit(segment);
        // Handled now, awaited later: a task failing while the next segment is read must not
        // count as an unhandled rejection.
        task.catch(() => {});
        inFlight.push(task);
        // Bounded: the next segment is read only when a worker can take it soon.
        if (inFlight.length >= this.pool.parallelism) await inFlight.shift();
      }
      await Promise.all(inFlight);
    } catch (error) {
      await Promise.allSettled(inFlight);
      throw error;
    }
    return results;
  }
}

function withField<T>(prefix: string, work: () => T): T {
  try {
    return work();
  } catch (error) {
    if (error instanceof FStoreError)
      throw new FStoreError(error.code, `${prefix}.${error.message}`, { cause: error });
    throw error;
  }
}

/** Views grouped by their join keys (same names and types, in order): a group shares one ranking. */
function joinKeyGroups(views: readonly RequestedView[]): JoinKeyGroup[] {
  const groups = new Map<string, JoinKeyGroup>();
  const typeOf = new Map<string, { type: KeyType; view: string }>();
  for (const requested of views) {
    const { current } = requested.view;
    for (const key of current.joinKeys) {
      const seen = typeOf.get(key.name);
      if (seen && seen.type !== key.type)
        throw invalidArgument(
          'query.features',
          `join key "${key.name}" is ${seen.type} in feature view "${seen.view}" but ${key.type} in "${current.name}"`,
        );
      typeOf.set(key.name, { type: key.type, view: current.name });
    }
    const signature = current.joinKeys.map((key) => `${key.name}:${key.type}`).join(',');
    let group = groups.get(signature);
    if (!group) {
      group = { joinKeys: current.joinKeys.map(({ name, type }) => ({ name, type })), views: [] };
      groups.set(signature, group);
    }
    group.views.push(requested);
  }
  return [...groups.values()];
}

interface PendingBlock {
  rowCount: number;
  readonly keys: Map<string, KeyValue[][]>;
  readonly keyNamesSeen: Set<string>;
  readonly times: Float64Array[];
  readonly carry: Map<string, Column[]>;
}

function newPending(joinKeys: ReadonlyMap<string, KeyType>): PendingBlock {
  return {
    rowCount: 0,
    keys: new Map([...joinKeys.keys()].map((name) => [name, []])),
    keyNamesSeen: new Set(),
    times: [],
    carry: new Map(),
  };
}

function closePending(pending: PendingBlock, firstRow: number): Block {
  const times = new Float64Array(pending.rowCount);
  let at = 0;
  for (const part of pending.times) {
    times.set(part, at);
    at += part.length;
  }
  return {
    firstRow,
    rowCount: pending.rowCount,
    keys: new Map([...pending.keys].map(([name, parts]) => [name, parts.flat()])),
    times,
    carry: new Map([...pending.carry].map(([name, parts]) => [name, concatColumns(parts)])),
  };
}

function concatColumns(parts: readonly Column[]): Column {
  const kind = (parts[0] as Column).kind;
  return { kind, values: parts.flatMap((part) => part.values as unknown[]) } as Column;
}

/** A block's rows of one join-key group, ranked and sorted for the merge. */
interface RankedRows {
  /** Block row of each sorted position. */
  readonly order: Int32Array;
  /** Sorted by (rank, time). */
  readonly keyRanks: Int32Array;
  readonly times: Float64Array;
  /** Sorted positions of rank r are [rankStart[r], rankStart[r + 1]). */
  readonly rankStart: Int32Array;
  /** One column per join key: the distinct keys in rank order. */
  readonly distinctKeys: KeyValue[][];
  /** Per rank: the latest label time of its rows. */
  readonly maxTimes: Float64Array;
}

/**
 * Ranks keys by first appearance (any order works: PostgreSQL sorts by rank, never by key value)
 * and sorts the rows by (rank, time): a counting sort by rank, then each rank's rows by time.
 */
function rankRows(block: Block, group: JoinKeyGroup): RankedRows {
  const { rowCount, times } = block;
  const columns = group.joinKeys.map((key) => block.keys.get(key.name) as KeyValue[]);
  const rankOf = new Map<string | bigint, number>();
  const rowRanks = new Int32Array(rowCount);
  const single = columns.length === 1 ? (columns[0] as KeyValue[]) : undefined;
  const parts = new Array<KeyValue>(columns.length);
  for (let row = 0; row < rowCount; row++) {
    // One key: the value itself is the map key (strings and bigints never collide in a Map);
    // composite keys: the online store's key encoding, one-to-one for the group's key types.
    let key: string | bigint;
    if (single) key = single[row] as KeyValue;
    else {
      for (let part = 0; part < columns.length; part++)
        parts[part] = (columns[part] as KeyValue[])[row] as KeyValue;
      key = encodeOnlineKey(0, parts);
    }
    let rank = rankOf.get(key);
    if (rank === undefined) {
      rank = rankOf.size;
      rankOf.set(key, rank);
    }
    rowRanks[row] = rank;
  }
  const distinct = rankOf.size;
  const rankStart = new Int32Array(distinct + 1);
  for (let row = 0; row < rowCount; row++) (rankStart[(rowRanks[row] as number) + 1] as number)++;
  for (let rank = 0; rank < distinct; rank++)
    rankStart[rank + 1] = (rankStart[rank + 1] as number) + (rankStart[rank] as number);
  const cursor = rankStart.slice(0, distinct);
  const order = new Int32Array(rowCount);
  const firstRowOfRank = new Int32Array(distinct);
  for (let row = 0; row < rowCount; row++) {
    const rank = rowRanks[row] as number;
    if (cursor[rank] === rankStart[rank]) firstRowOfRank[rank] = row;
    order[(cursor[rank] as number)++] = row;
  }
  const keyRanks = new Int32Array(rowCount);
  const sortedTimes = new Float64Array(rowCount);
  const maxTimes = new Float64Array(distinct);
  for (let rank = 0; rank < distinct; rank++) {
    const start = rankStart[rank] as number;
    const end = rankStart[rank + 1] as number;
    if (end - start > 1) {
      const slice = Array.from(order.subarray(start, end));
      slice.sort((a, b) => (times[a] as number) - (times[b] as number) || a - b);
      order.set(slice, start);
    }
    for (let position = start; position < end; position++) {
      keyRanks[position] = rank;
      sortedTimes[position] = times[order[position] as number] as number;
    }
    maxTimes[rank] = sortedTimes[end - 1] as number;
  }
  const distinctKeys = columns.map((column) => {
    const values = new Array<KeyValue>(distinct);
    for (let rank = 0; rank < distinct; rank++)
      values[rank] = column[firstRowOfRank[rank] as number] as KeyValue;
    return values;
  });
  return { order, keyRanks, times: sortedTimes, rankStart, distinctKeys, maxTimes };
}

function outputChunk(
  block: Block,
  start: number,
  end: number,
  features: readonly RequestedFeature[],
  requested: readonly RequestedView[],
  results: ReadonlyMap<RequestedView, ViewResults>,
  joinKeys: ReadonlyMap<string, KeyType>,
): HistoricalChunk {
  const length = end - start;
  const columns: HistoricalFeatureColumn[] = [];
  // One event-time array per view, shared by its columns (encoded once).
  const eventTimes = new Map<ViewResults, Float64Array>();
  for (const feature of features) {
    const view = requested.find((candidate) => candidate.features.includes(feature)) as RequestedView;
    const result = results.get(view) as ViewResults;
    const slot = view.features.indexOf(feature);
    const nulls = result.nulls[slot] as Uint8Array;
    const source = result.values[slot] as ValueColumn;
    const statuses = new Uint8Array(length);
    for (let index = 0; index < length; index++) {
      const row = start + index;
      const status = result.status[row] as number;
      statuses[index] =
        status === historicalStatus.present && nulls[row] === 1 ? historicalStatus.nullValue : status;
    }
    let values: FeatureValue[] | Float64Array;
    if (feature.type === 'double' || feature.type === 'float')
      // Zero already where no row was chosen; nulls are zeroed here.
      values = (source as Float64Array)
        .slice(start, end)
        .map((value, index) => (statuses[index] === historicalStatus.present ? value : 0));
    else {
      const zero = zeroValue(feature.type);
      values = new Array<FeatureValue>(length);
      for (let index = 0; index < length; index++) {
        const row = start + index;
        if (statuses[index] !== historicalStatus.present) values[index] = zero;
        else if (feature.type === 'bool') values[index] = (source as Uint8Array)[row] === 1;
        else if (feature.type === 'int64') values[index] = (source as BigInt64Array)[row] as bigint;
        else values[index] = (source as unknown[])[row] as FeatureValue;
      }
    }
    let times = eventTimes.get(result);
    if (!times) {
      times = result.eventTime.slice(start, end);
      eventTimes.set(result, times);
    }
    columns.push({ reference: feature.reference, type: feature.type, values, statuses, eventTimes: times });
  }
  return {
    firstRow: block.firstRow + start,
    keys: [...joinKeys].map(([name, type]) => ({
      name,
      type,
      values: (block.keys.get(name) as KeyValue[]).slice(start, end),
    })),
    timestamps: block.times.slice(start, end),
    carry: new Map(
      [...block.carry].map(([name, column]) => [
        name,
        { kind: column.kind, values: column.values.slice(start, end) } as Column,
      ]),
    ),
    features: columns,
  };
}
