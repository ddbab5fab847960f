/**
 * The point-in-time merge kernel (DESIGN §4): for each labelled entity row (key, t), the feature
 * row with the same key and the greatest event time ≤ t, ties broken by the latest created time,
 * then by the row written last. A feature row with event time > t is never chosen (no label
 * leakage). Pure and columnar so a piscina worker can run it on typed arrays that crossed the
 * thread boundary (DESIGN §2).
 *
 * Keys are key ranks, not key values. The caller maps every composite entity key to an Int32 rank
 * through one sorted dictionary shared by both sides (equal keys ⇔ equal ranks; both sides sorted
 * ascending by rank). The kernel then compares numbers only: no string collation can disagree
 * between PostgreSQL's ORDER BY and JavaScript, and the property test still checks the merge
 * against composite keys. Ranks need not be dense, and feature rows may carry ranks no entity row
 * has (they are skipped). A natural source: number the sorted distinct input keys, join the view's
 * table against them and ORDER BY (rank, event_time, created_time, write order).
 *
 * Times are microseconds since the epoch in Float64Arrays; the ttl comparison `t - eventTime >
 * ttlMicros` is exact while |times| ≤ 2^52 (every difference is then an exact double).
 *
 * Because feature rows are sorted by (key, event time, created time), the row to choose for
 * (k, t) is simply the last feature row, in feature order, that sorts at or before (k, t): the
 * merge never compares created times, it only checks that the order holds. Of fully tied rows
 * (equal key, event and created time) it therefore keeps the last in feature order, whatever
 * chunks they arrive in: the caller sorts them by write order (the offline store's `seq`), so the
 * row written last wins. That is also why the state carried between chunks is one row: the last
 * feature row consumed.
 */
import { FStoreError } from './errors.js';

/** Status codes of the output, equal to fstore.v1.FeatureStatus numbers (NULL_VALUE = 3 is decided later, from the value columns). */
export const pointInTimeStatus = { present: 1, notFound: 2, outsideMaxAge: 4 } as const;

/** Labelled entity rows (the client's input), sorted by (keyRank, time). */
export interface EntityRows {
  readonly keyRanks: Int32Array;
  /** The label time t, microseconds. */
  readonly times: Float64Array;
  /** Position in the client's original order; carried for the caller, not read by the merge. */
  readonly inputIndex: Int32Array;
}

/**
 * Feature rows of one view, sorted by (keyRank, eventTime, createdTime); of rows equal in all
 * three, the last is the one chosen (sort them by write order for "the row written last wins").
 */
export interface FeatureRows {
  readonly keyRanks: Int32Array;
  readonly eventTimes: Float64Array;
  readonly createdTimes: Float64Array;
  /**
   * Reported as-is in `match`. A match can name the last row of the previous chunk (a key's rows
   * may straddle chunks), so use numbers that stay meaningful across chunks, e.g. a running row
   * number, and keep the previous chunk's last row of values until the next chunk is consumed.
   */
  readonly rowIndex: Int32Array;
}

/** Results, one per entity row, indexed by the entity row's sorted position in its chunk. */
export interface PointInTimeMatches {
  /** rowIndex of the chosen feature row when PRESENT; -1 otherwise, so an aged-out value cannot leak. */
  readonly match: Int32Array;
  /** A pointInTimeStatus code. */
  readonly status: Uint8Array;
  /** Event time of the chosen row (also for OUTSIDE_MAX_AGE); 0 when not found. */
  readonly eventTime: Float64Array;
}

export function createPointInTimeMatches(length: number): PointInTimeMatches {
  return {
    match: new Int32Array(length),
    status: new Uint8Array(length),
    eventTime: new Float64Array(length),
  };
}

/**
 * An incremental merge of entity-row chunks against feature-row chunks (a server-side cursor).
 *
 * Protocol: both sides arrive in order, in chunks of any size (empty ones included).
 * - `pushEntityRows` is allowed when `wantsEntityRows` (every row pushed before is resolved). It
 *   resolves as many rows as the feature rows seen so far allow and returns the chunk's results;
 *   `resolved` says how many (always a prefix of the chunk).
 * - `pushFeatureRows` is allowed when `wantsFeatureRows` (the previous feature chunk is consumed
 *   and `finish` was not called); it resumes the pending entity rows.
 * - `finish` declares the end of the feature rows and resolves every pending entity row; later
 *   entity chunks resolve entirely on push.
 * An entity row (k, t) is resolved once a feature row sorting after (k, t) is seen or the feature
 * rows end. Between chunks the merger keeps one feature row (the last consumed) and at most one
 * entity chunk and one feature chunk by reference; it never copies them. Typical driver:
 *
 *     const out = merger.pushEntityRows(chunk);
 *     while (merger.resolved < chunk.keyRanks.length) {
 *       const next = await cursor.read();
 *       next ? merger.pushFeatureRows(next) : merger.finish();
 *     }
 *
 * Pulling feature rows only while entity rows are pending is what gives flow control.
 * Unsorted input or mismatched column lengths throw an `internal` FStoreError: both sides are
 * sorted by FStore itself, so that is a bug (e.g. a collation mismatch), never a client error.
 */
export interface PointInTimeMerger {
  pushEntityRows(rows: EntityRows, out?: PointInTimeMatches): PointInTimeMatches;
  pushFeatureRows(rows: FeatureRows): void;
  finish(): void;
  /** Rows of the current entity chunk resolved so far. */
  readonly resolved: number;
  readonly wantsEntityRows: boolean;
  readonly wantsFeatureRows: boolean;
}

const noRows = new Int32Array(0);
const noTimes = new Float64Array(0);

function protocolError(message: string): FStoreError {
  return new FStoreError('internal', `point-in-time merge: ${message}`);
}

/** `ttlMicros` 0 means no ttl; otherwise a row older than ttlMicros at t is OUTSIDE_MAX_AGE. */
export function createPointInTimeMerger(ttlMicros: number): PointInTimeMerger {
  if (!Number.isFinite(ttlMicros) || ttlMicros < 0)
    throw protocolError(`ttlMicros must be a finite number ≥ 0, got ${ttlMicros}`);

  // Current entity chunk and the next row to resolve.
  let entityKeys: Int32Array = noRows;
  let entityTimes: Float64Array = noTimes;
  let out = createPointInTimeMatches(0);
  let entityPosition = 0;
  // Last entity row pushed, to check order across chunks.
  let lastEntityKey = 0;
  let lastEntityTime = 0;
  let anyEntityRow = false;

  // Current feature chunk and the next row to consume.
  let featureKeys: Int32Array = noRows;
  let featureEventTimes: Float64Array = noTimes;
  let featureRowIndex: Int32Array = noRows;
  let featurePosition = 0;
  let finished = false;
  // Last feature row pushed (order check across chunks).
  let lastPushedKey = 0;
  let lastPushedEventTime = 0;
  let lastPushedCreatedTime = 0;
  let anyFeatureRow = false;
  // The carried row: last feature row consumed, the candidate for entity rows of its key.
  let carriedKey = 0;
  let carriedEventTime = 0;
  let carriedRowIndex = -1;

  function merge(): void {
    const aKeys = entityKeys;
    const aTimes = entityTimes;
    const aEnd = aKeys.length;
    const bKeys = featureKeys;
    const bEventTimes = featureEventTimes;
    const bRowIndex = featureRowIndex;
    const bEnd = bKeys.length;
    const { match, status, eventTime } = out;
    let a = entityPosition;
    let b = featurePosition;
    let cKey = carriedKey;
    let cEventTime = carriedEventTime;
    let cRowIndex = carriedRowIndex;
    while (a < aEnd) {
      const key = aKeys[a]!;
      const t = aTimes[a]!;
      // Consume every feature row sorting at or before (key, t); the last one is the candidate.
      while (b < bEnd) {
        const bKey = bKeys[b]!;
        if (bKey > key) break;
        const bEventTime = bEventTimes[b]!;
        if (bKey === key && bEventTime > t) break;
        cKey = bKey;
        cEventTime = bEventTime;
        cRowIndex = bRowIndex[b]!;
        b++;
      }
      // A later feature chunk could still hold rows at or before (key, t).
      if (b === bEnd && !finished) break;
      if (cRowIndex < 0 || cKey !== key) {
        match[a] = -1;
        status[a] = pointInTimeStatus.notFound;
        eventTime[a] = 0;
      } else if (ttlMicros > 0 && t - cEventTime > ttlMicros) {
        match[a] = -1;
        status[a] = pointInTimeStatus.outsideMaxAge;
        eventTime[a] = cEventTime;
      } else {
        match[a] = cRowIndex;
        status[a] = pointInTimeStatus.present;
        eventTime[a] = cEventTime;
      }
      a++;
    }
    entityPosition = a;
    featurePosition = b;
    carriedKey = cKey;
    carriedEventTime = cEventTime;
    carriedRowIndex = cRowIndex;
  }

  function checkEntityRows(rows: EntityRows): void {
    const { keyRanks, times, inputIndex } = rows;
    const length = keyRanks.length;
    if (times.length !== length || inputIndex.length !== length)
      throw protocolError(
        `entity rows have ${length} keyRanks, ${times.length} times and ${inputIndex.length} inputIndex`,
      );
    // Checked into locals and committed at the end, so a rejected chunk leaves the merger as it was.
    let previousKey = lastEntityKey;
    let previousTime = lastEntityTime;
    let any = anyEntityRow;
    for (let row = 0; row < length; row++) {
      const key = keyRanks[row]!;
      const time = times[row]!;
      if (!Number.isFinite(time)) throw protocolError(`entity row ${row}: time ${time} is not finite`);
      if (any && (key < previousKey || (key === previousKey && time < previousTime)))
        throw protocolError(`entity row ${row} is not sorted by (keyRank, time) after the previous row`);
      previousKey = key;
      previousTime = time;
      any = true;
    }
    lastEntityKey = previousKey;
    lastEntityTime = previousTime;
    anyEntityRow = any;
  }

  function checkFeatureRows(rows: FeatureRows): void {
    const { keyRanks, eventTimes, createdTimes, rowIndex } = rows;
    const length = keyRanks.length;
    if (eventTimes.length !== length || createdTimes.length !== length || rowIndex.length !== length)
      throw protocolError(
        `feature rows have ${length} keyRanks, ${eventTimes.length} eventTimes, ${createdTimes.length} createdTimes and ${rowIndex.length} rowIndex`,
      );
    let previousKey = lastPushedKey;
    let previousEventTime = lastPushedEventTime;
    let previousCreatedTime = lastPushedCreatedTime;
    let any = anyFeatureRow;
    for (let row = 0; row < length; row++) {
      const key = keyRanks[row]!;
      const eventTime = eventTimes[row]!;
      const createdTime = createdTimes[row]!;
      if (!Number.isFinite(eventTime) || !Number.isFinite(createdTime))
        throw protocolError(
          `feature row ${row}: eventTime ${eventTime} or createdTime ${createdTime} is not finite`,
        );
      // -1 is the merge's "no row carried" sentinel.
      if (rowIndex[row]! < 0)
        throw protocolError(`feature row ${row}: rowIndex ${rowIndex[row]} is negative`);
      if (
        any &&
        (key < previousKey ||
          (key === previousKey &&
            (eventTime < previousEventTime ||
              (eventTime === previousEventTime && createdTime < previousCreatedTime))))
      )
        throw protocolError(
          `feature row ${row} is not sorted by (keyRank, eventTime, createdTime) after the previous row`,
        );
      previousKey = key;
      previousEventTime = eventTime;
      previousCreatedTime = createdTime;
      any = true;
    }
    lastPushedKey = previousKey;
    lastPushedEventTime = previousEventTime;
    lastPushedCreatedTime = previousCreatedTime;
    anyFeatureRow = any;
  }

  return {
    pushEntityRows(rows, output = createPointInTimeMatches(rows.keyRanks.length)) {
      if (entityPosition < entityKeys.length)
        throw protocolError('entity rows pushed before the previous chunk was resolved');
      const length = rows.keyRanks.length;
      if (output.match.length < length || output.status.length < length || output.eventTime.length < length)
        throw protocolError(`output arrays are shorter than the ${length} entity rows`);
      checkEntityRows(rows);
      entityKeys = rows.keyRanks;
      entityTimes = rows.times;
      out = output;
      entityPosition = 0;
      merge();
      return output;
    },
    pushFeatureRows(rows) {
      if (finished) throw protocolError('feature rows pushed after finish()');
      if (featurePosition < featureKeys.length)
        throw protocolError('feature rows pushed before the previous chunk was consumed');
      checkFeatureRows(rows);
      featureKeys = rows.keyRanks;
      featureEventTimes = rows.eventTimes;
      featureRowIndex = rows.rowIndex;
      featurePosition = 0;
      merge();
    },
    finish() {
      finished = true;
      merge();
    },
    get resolved() {
      return entityPosition;
    },
    get wantsEntityRows() {
      return entityPosition === entityKeys.length;
    },
    get wantsFeatureRows() {
      return !finished && featurePosition === featureKeys.length;
    },
  };
}
