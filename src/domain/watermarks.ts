/**
 * Event-time watermarks of one stream consumer (DESIGN §4). Pure: processing time is passed in
 * (`nowMs`, milliseconds of any clock that does not jump, e.g. performance.now()), so idleness is
 * testable.
 *
 * The rules, exactly:
 * - Per partition p: W_p = (greatest event time observed on p) − bound B. A partition with no
 *   event observed yet has no W_p.
 * - p is idle at `nowMs` when nowMs − lastActivity_p > idleTimeoutMs, where lastActivity_p is the
 *   processing time of its last observed record, or of its assignment (restored partitions count
 *   as assigned at restore time: processing clocks do not survive a restart).
 * - The candidate watermark, computed by `advance(nowMs)`:
 *   - when at least one assigned partition is active (not idle): the minimum of W_p over the
 *     active partitions, or no candidate if an active partition has no W_p yet (a partition just
 *     assigned holds the watermark back for up to one idle timeout, so its first events are not
 *     judged late);
 *   - when every assigned partition is idle: the maximum W_p over them (each has been quiet for
 *     a whole idle timeout, so the furthest any of them got is taken as reached — the same value
 *     the first rule reaches whichever partition fell idle first), or no candidate if none has one.
 * - W = max(W, candidate): W never goes back — not when a lagging partition becomes active again,
 *   not when partitions are assigned or revoked. Events of a partition that lag behind W are
 *   judged late by the aggregator's lateness rule, nothing else.
 */
import { FStoreError, invalidArgument } from './errors.js';
import { durationProblem } from './windows.js';

export interface WatermarkOptions {
  /** B: how far event times may run behind the greatest one seen on a partition, microseconds. */
  readonly boundMicros: number;
  /**
   * Processing time after which a partition without records stops holding the watermark back,
   * milliseconds; Infinity: never (a silent partition then stalls the watermark, as in Flink
   * without `withIdleness`).
   */
  readonly idleTimeoutMs: number;
}

export const watermarkDefaults = {
  idleTimeoutMs: 60_000, // one minute, Flink's usual withIdleness setting
} as const satisfies Partial<WatermarkOptions>;

/** Problems of watermark options, each an `invalid_argument` error naming its field; empty when valid. */
export function validateWatermarkOptions(
  options: WatermarkOptions,
  field = 'stream_aggregation',
): FStoreError[] {
  const problems: FStoreError[] = [];
  const boundProblem = durationProblem(options.boundMicros, 0);
  if (boundProblem) problems.push(invalidArgument(`${field}.watermark_bound`, boundProblem));
  const idle = options.idleTimeoutMs;
  if (idle !== Number.POSITIVE_INFINITY && !(Number.isSafeInteger(idle) && idle >= 1))
    problems.push(
      invalidArgument(
        `${field}.idle_timeout`,
        `must be whole milliseconds ≥ 1 or Infinity, got ${String(idle)}`,
      ),
    );
  return problems;
}

/** What a checkpoint keeps of the tracker: W and each partition's greatest event time. */
export interface WatermarkSnapshot {
  /** null while W is still −∞. */
  readonly watermark: number | null;
  /** [partition, greatest event time observed or null], ascending by partition. */
  readonly partitions: readonly (readonly [partition: number, maxEventTime: number | null])[];
}

export interface WatermarkTracker {
  /**
   * Starts tracking a partition (after a rebalance), active from `nowMs`. `maxEventTime` carries
   * the partition's greatest event time over from a checkpoint; assigning a tracked partition
   * again only refreshes its activity.
   */
  assignPartition(partition: number, nowMs: number, maxEventTime?: number | null): void;
  /** Stops tracking a partition; W keeps its value. */
  revokePartition(partition: number): void;
  /**
   * Records one record's event time: any event the aggregator did not refuse as invalid, late ones
   * included (they show how far the partition got, and that it is not idle).
   */
  observe(partition: number, eventTime: number, nowMs: number): void;
  /** Applies the rules above at `nowMs` and returns W (−∞ until there is a candidate). */
  advance(nowMs: number): number;
  /** W as of the last `advance`. */
  readonly watermark: number;
  /** The greatest event time observed on a tracked partition, null if none (for per-partition checkpoints). */
  maxEventTime(partition: number): number | null;
  readonly partitions: readonly number[];
  snapshot(): WatermarkSnapshot;
}

interface PartitionState {
  maxEventTime: number | null;
  lastActivityMs: number;
}

function protocolError(message: string): FStoreError {
  return new FStoreError('internal', `watermark tracker: ${message}`);
}

function assertPartition(partition: number): void {
  if (!Number.isSafeInteger(partition) || partition < 0)
    throw protocolError(`partition ${partition} is not an integer ≥ 0`);
}

function assertNow(nowMs: number): void {
  if (!Number.isFinite(nowMs)) throw protocolError(`nowMs ${nowMs} is not a finite number`);
}

function assertEventTime(eventTime: number | null, what: string): void {
  if (eventTime !== null && !Number.isSafeInteger(eventTime))
    throw protocolError(`${what} ${eventTime} is not a safe integer of microseconds`);
}

/**
 * A tracker with no partitions, or restored from a snapshot (its partitions assigned at `nowMs`).
 * Options must pass `validateWatermarkOptions`; a malformed snapshot throws `data_loss`.
 */
export function createWatermarkTracker(
  options: WatermarkOptions,
  nowMs: number,
  snapshot?: WatermarkSnapshot,
): WatermarkTracker {
  const [problem] = validateWatermarkOptions(options);
  if (problem) throw problem;
  assertNow(nowMs);
  const { boundMicros, idleTimeoutMs } = options;
  const states = new Map<number, PartitionState>();
  let watermark = Number.NEGATIVE_INFINITY;

  if (snapshot) {
    const restored = snapshot.watermark;
    if (restored !== null && !Number.isSafeInteger(restored))
      throw new FStoreError(
        'data_loss',
        `watermark snapshot: watermark ${String(restored)} is not a safe integer`,
      );
    watermark = restored ?? Number.NEGATIVE_INFINITY;
    if (!Array.isArray(snapshot.partitions))
      throw new FStoreError('data_loss', 'watermark snapshot: partitions is not a list');
    for (const entry of snapshot.partitions) {
      const [partition, maxEventTime] = entry as [number, number | null];
      if (
        !Number.isSafeInteger(partition) ||
        partition < 0 ||
        (maxEventTime !== null && !Number.isSafeInteger(maxEventTime))
      )
        throw new FStoreError('data_loss', `watermark snapshot: bad partition entry ${String(entry)}`);
      states.set(partition, { maxEventTime, lastActivityMs: nowMs });
    }
  }

  function stateOf(partition: number): PartitionState {
    const state = states.get(partition);
    if (!state) throw protocolError(`partition ${partition} is not assigned`);
    return state;
  }

  function candidate(nowMs: number): number | undefined {
    let activeMinimum = Number.POSITIVE_INFINITY;
    let anyActive = false;
    let activeWithoutEvents = false;
    let idleMaximum = Number.NEGATIVE_INFINITY;
    for (const state of states.values()) {
      const idle = nowMs - state.lastActivityMs > idleTimeoutMs;
      if (idle) {
        if (state.maxEventTime !== null)
          idleMaximum = Math.max(idleMaximum, state.maxEventTime - boundMicros);
        continue;
      }
      anyActive = true;
      if (state.maxEventTime === null) activeWithoutEvents = true;
      else activeMinimum = Math.min(activeMinimum, state.maxEventTime - boundMicros);
    }
    if (anyActive) return activeWithoutEvents ? undefined : activeMinimum;
    return idleMaximum === Number.NEGATIVE_INFINITY ? undefined : idleMaximum;
  }

  return {
    assignPartition(partition, nowMs, maxEventTime = null) {
      assertPartition(partition);
      assertNow(nowMs);
      assertEventTime(maxEventTime, 'maxEventTime');
      const state = states.get(partition);
      if (state) {
        state.lastActivityMs = nowMs;
        if (maxEventTime !== null && (state.maxEventTime === null || maxEventTime > state.maxEventTime))
          state.maxEventTime = maxEventTime;
        return;
      }
      states.set(partition, { maxEventTime, lastActivityMs: nowMs });
    },
    revokePartition(partition) {
      states.delete(partition);
    },
    observe(partition, eventTime, nowMs) {
      assertEventTime(eventTime, 'eventTime');
      assertNow(nowMs);
      const state = stateOf(partition);
      state.lastActivityMs = nowMs;
      if (state.maxEventTime === null || eventTime > state.maxEventTime) state.maxEventTime = eventTime;
    },
    advance(nowMs) {
      assertNow(nowMs);
      const next = candidate(nowMs);
      if (next !== undefined && next > watermark) watermark = next;
      return watermark;
    },
    get watermark() {
      return watermark;
    },
    maxEventTime(partition) {
      return states.get(partition)?.maxEventTime ?? null;
    },
    get partitions() {
      return [...states.keys()].sort((a, b) => a - b);
    },
    snapshot() {
      return {
        watermark: watermark === Number.NEGATIVE_INFINITY ? null : watermark,
        partitions: [...states.entries()]
          .sort(([a], [b]) => a - b)
          .map(([partition, state]) => [partition, state.maxEventTime] as const),
      };
    },
  };
}
