/**
 * `fstore stream`: one consumer-group member computing one stream aggregation (DESIGN §2, §4).
 *
 * Per batch of a partition (partitions run concurrently, a partition's batches one at a time):
 *  1. the partition's task (partition-task.ts) is restored from its checkpoint on first sight, and
 *     the source is moved to the checkpoint's offset if it is elsewhere;
 *  2. records are decoded and applied; windows fire on the partition's watermark;
 *  3. the dead letters (malformed, invalid, late) are published; the window rows go to the online
 *     store (last write wins) and to the offline store (replacing any row of the same view, entity
 *     and window end) — both idempotent, so writing a result twice changes nothing;
 *  4. every `checkpointIntervalMs`, the batch's rows and the task's state with its next offset are
 *     committed in ONE PostgreSQL transaction, compare-and-set on the checkpoint's generation (a
 *     member that lost the partition in a rebalance cannot overwrite its new owner's checkpoint);
 *     only then is the Kafka offset committed.
 * Anything unexpected drops the partition's in-memory task: it is rebuilt from the last checkpoint
 * and the log re-read from there, which emits the same results again. A sink that fails pauses the
 * partition (no more fetching for it) and is retried with backoff until it answers; other
 * partitions go on.
 *
 * Where the consumer reads from: the checkpoint is the one position that counts, never the
 * group's committed Kafka offset (a copy for lag and tooling). At every assignment each assigned
 * partition's task is restored (or started at the log's beginning when there is no checkpoint)
 * and the consumer is moved to its next offset at once — see positionPartitions.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { FStoreError } from '../domain/errors.js';
import type { FeatureView } from '../domain/model.js';
import type { StreamAggregation } from '../domain/stream-aggregation.js';
import { createWatermarkTracker, type WatermarkTracker } from '../domain/watermarks.js';
import type { BatchControl, EventSource, SourceBatch } from '../ports/event-source.js';
import type { OfflineStore, StreamCheckpointScope } from '../ports/offline-store.js';
import type { OnlineStore } from '../ports/online-store.js';
import { toOnlineEntries } from '../serving/online-features.js';
import { createEventDecoder } from './event-decoder.js';
import {
  type BatchCounts,
  emptyCounts,
  PartitionTask,
  type PartitionTaskOptions,
  windowRowsToBatch,
} from './partition-task.js';

export interface StreamRunnerOptions {
  readonly project: string;
  readonly aggregation: StreamAggregation;
  /** The produced feature view, current version. */
  readonly view: FeatureView;
  readonly source: EventSource;
  readonly online: OnlineStore;
  readonly offline: OfflineStore;
  readonly logger: Logger;
  readonly checkpointIntervalMs: number;
  readonly onlineExpiryGraceMs: number;
  /**
   * A failure processing cannot go past: a checkpoint taken under another definition of the
   * aggregation, or corrupt checkpoint bytes. The role should stop.
   */
  readonly onFatal: (error: unknown) => void;
  /** Processing clock, milliseconds (monotonic is fine); injectable for tests. */
  readonly nowMs?: () => number;
  /** Called after each committed checkpoint with its duration in milliseconds (metrics). */
  readonly onCheckpoint?: (durationMs: number) => void;
}

export interface PartitionStats {
  readonly partition: number;
  readonly nextOffset: string;
  /** Log end offset − next offset, as of the last batch. */
  readonly lag: number;
  /** W_p in microseconds, null before the first event. */
  readonly watermark: number | null;
  /** Wall clock − W_p, milliseconds (how far event time runs behind now). */
  readonly watermarkDelayMs: number | null;
  readonly keys: number;
  readonly tiles: number;
}

export interface StreamStats extends BatchCounts {
  readonly deadLetters: number;
  readonly batches: number;
  readonly checkpoints: number;
  readonly checkpointsFenced: number;
  readonly lastCheckpointMs: number;
  readonly lastCheckpointBytes: number;
  readonly sinkRetries: number;
  readonly taskRestores: number;
  /** The consumer watermark: minimum over active assigned partitions (DESIGN §4), µs or null. */
  readonly consumerWatermark: number | null;
  /**
   * Freshness: wall time of the online write of each fired window minus the window end, as
   * counts per whole millisecond (index ≥ the last: that long or longer), since the start.
   */
  readonly windowDelayHistogram: Uint32Array;
  readonly partitions: readonly PartitionStats[];
}

export interface StreamRunner {
  start(): Promise<void>;
  /** Stops fetching, waits for batches in progress, checkpoints every partition, leaves the group. */
  stop(): Promise<void>;
  stats(): StreamStats;
  /** The partitions of the topic this member owns now. */
  readonly assigned: readonly number[];
}

/** The freshness histogram's range: one bucket per millisecond up to a minute. */
const delayBuckets = 60_001;

/** The q-quantile (0..1) of a millisecond histogram, or null when it is empty. */
export function histogramQuantile(histogram: Uint32Array, q: number): number | null {
  let total = 0;
  for (const count of histogram) total += count;
  if (total === 0) return null;
  const rank = Math.min(total - 1, Math.floor(q * total));
  let seen = 0;
  for (let bucket = 0; bucket < histogram.length; bucket++) {
    seen += histogram[bucket]!;
    if (seen > rank) return bucket;
  }
  return histogram.length - 1;
}

export function createStreamRunner(options: StreamRunnerOptions): StreamRunner {
  const { project, aggregation, view, source, online, offline, logger } = options;
  const nowMs = options.nowMs ?? (() => performance.now());
  const scope: StreamCheckpointScope = { project, aggregation: aggregation.name, topic: aggregation.topic };
  const taskOptions: PartitionTaskOptions = {
    spec: aggregation,
    boundMicros: aggregation.watermarkBoundMicros,
    decode: createEventDecoder(aggregation, view.id, view.joinKeys),
  };
  const tasks = new Map<number, PartitionTask>();
  const lags = new Map<number, number>();
  let assigned: number[] = [];
  const tracker: WatermarkTracker = createWatermarkTracker(
    { boundMicros: aggregation.watermarkBoundMicros, idleTimeoutMs: aggregation.idleTimeoutMs },
    nowMs(),
  );
  const totals = {
    ...emptyCounts(),
    deadLetters: 0,
    batches: 0,
    checkpoints: 0,
    checkpointsFenced: 0,
    lastCheckpointMs: 0,
    lastCheckpointBytes: 0,
    sinkRetries: 0,
    taskRestores: 0,
  };
  const windowDelayHistogram = new Uint32Array(delayBuckets);
  let active = 0;
  let stopping = false;
  let stopped: Promise<void> | undefined;
  let idle: (() => void) | undefined;
  let checkingQuiet = false;
  let stopTimer = () => {};
  /** Bumped by every assignment: the positioning work of an earlier one gives up. */
  let assignmentEpoch = 0;
  /** Tasks being restored or started, by partition: one load per partition at a time. */
  const loading = new Map<number, Promise<PartitionTask>>();

  const log = logger.child({ aggregation: aggregation.name, topic: aggregation.topic });

  function dropTask(partition: number, why: string) {
    if (tasks.delete(partition))
      log.warn({ partition, why }, 'partition state dropped: rebuilt from its checkpoint');
  }

  /**
   * The tasks of `partitions` (that have none yet), each restored from its checkpoint or started
   * at the beginning of its log: one checkpoint query and at most one log-start lookup for all.
   */
  async function loadTasks(partitions: readonly number[]): Promise<Map<number, PartitionTask>> {
    const stored = await offline.loadStreamCheckpoints(scope, partitions);
    const earliest = partitions.every((partition) => stored.has(partition))
      ? new Map<number, string>()
      : await source.earliestOffsets();
    const loaded = new Map<number, PartitionTask>();
    for (const partition of partitions) {
      const checkpoint = stored.get(partition);
      const task = checkpoint
        ? PartitionTask.restore(partition, taskOptions, checkpoint, nowMs())
        : PartitionTask.fresh(partition, taskOptions, BigInt(earliest.get(partition) ?? '0'), nowMs());
      totals.taskRestores++;
      log.info(
        {
          partition,
          nextOffset: task.nextOffset.toString(),
          generation: task.generation,
          ...task.aggregator.stateSize,
        },
        checkpoint
          ? 'partition restored from its checkpoint'
          : 'partition starts from the beginning of its log',
      );
      tasks.set(partition, task);
      if (assigned.includes(partition)) tracker.assignPartition(partition, nowMs(), task.maxEventTime);
      loaded.set(partition, task);
    }
    return loaded;
  }

  /** The tasks of `partitions`: in memory, being loaded, or loaded now (see loadTasks). */
  function tasksFor(partitions: readonly number[]): Promise<PartitionTask[]> {
    const missing = partitions.filter((partition) => !tasks.has(partition) && !loading.has(partition));
    if (missing.length > 0) {
      const load = loadTasks(missing);
      for (const partition of missing) {
        const one = load.then((loaded) => loaded.get(partition)!);
        loading.set(partition, one);
        const settled = () => {
          if (loading.get(partition) === one) loading.delete(partition);
        };
        one.then(settled, settled);
      }
    }
    return Promise.all(partitions.map((partition) => tasks.get(partition) ?? loading.get(partition)!));
  }

  async function taskFor(partition: number): Promise<PartitionTask> {
    return (await tasksFor([partition]))[0]!;
  }

  /**
   * Moves the consumer, for every partition of the assignment numbered `epoch`, to where its task
   * continues — the checkpoint's next offset, or the start of the log when there is no checkpoint —
   * at once, instead of waiting for a record to arrive on the partition at the committed offset.
   *
   * This is what makes `fstore stream --reset` recompute at once: the reset deletes the
   * checkpoints (one DELETE, before the member joins its group) and this positioning, run by every
   * member at every assignment, reads each partition again from the start of its log. Several
   * members: a member that joins with --reset makes the group rebalance, so every member,
   * including those already running, positions its partitions after the deletion; a task a member
   * kept across that rebalance continues a checkpoint that is gone (or that another member has
   * replaced since), so it is dropped and rebuilt from what is stored.
   *
   * Why a seek and not resetting the group's committed offsets to the earliest: Kafka refuses to
   * change the committed offsets of a group that has members (the others may be running), and a
   * second stored position, changed apart from the checkpoint, could disagree with it. Exactly
   * once does not rest on the seek: a task applies records strictly in offset order from its own
   * next offset (it skips those before, and seeks back when a batch starts after it), its state
   * and offset are checkpointed together under compare-and-set on the generation, and its rows are
   * a function of the log alone, written by idempotent upserts. A seek only chooses what is fetched
   * next; one that comes too early or too late costs a re-read, never a different result.
   */
  async function positionPartitions(partitions: readonly number[], epoch: number) {
    const current = () => !stopping && epoch === assignmentEpoch;
    const kept = partitions.flatMap((partition) => {
      const task = tasks.get(partition);
      return task && !task.busy ? [{ partition, task, generation: task.generation }] : [];
    });
    if (kept.length > 0) {
      const stored = await offline.loadStreamCheckpoints(
        scope,
        kept.map(({ partition }) => partition),
      );
      if (!current()) return;
      for (const { partition, task, generation } of kept)
        if (
          tasks.get(partition) === task &&
          !task.busy &&
          task.generation === generation &&
          (stored.get(partition)?.generation ?? null) !== generation
        )
          dropTask(partition, 'its checkpoint was deleted (a reset) or replaced by another member');
    }
    const positioned = await tasksFor(partitions);
    if (!current()) return;
    const commits: Promise<void>[] = [];
    for (const task of positioned) {
      // A batch of the partition in progress positions it itself (it seeks when it is ahead).
      if (task.busy || tasks.get(task.partition) !== task || !assigned.includes(task.partition)) continue;
      source.seek(task.partition, task.nextOffset.toString());
      // The group's committed offset is set to the checkpoint's (never past it), from inside the
      // group: after a reset, lag and tooling show the recompute at once; after a crash between a
      // checkpoint and its Kafka commit, the commit catches up without waiting for a record.
      const { partition, checkpointedOffset } = task;
      commits.push(
        source.commit(partition, checkpointedOffset.toString()).catch((error: unknown) => {
          log.debug(
            { partition, err: error },
            'Kafka offset commit at assignment failed (the checkpoint holds the position)',
          );
        }),
      );
    }
    await Promise.all(commits);
  }

  /** positionPartitions, retried with backoff until it succeeds or another assignment comes. */
  async function position(partitions: readonly number[], epoch: number) {
    for (let delay = 200; ; delay = Math.min(delay * 2, 5_000)) {
      try {
        await positionPartitions(partitions, epoch);
        return;
      } catch (error) {
        if (stopping || epoch !== assignmentEpoch) return;
        if (
          error instanceof FStoreError &&
          (error.code === 'failed_precondition' || error.code === 'data_loss')
        ) {
          // A checkpoint taken under another definition, or corrupt: nothing to go on with.
          log.error({ partitions, err: error }, 'a partition cannot be restored');
          options.onFatal(error);
          return;
        }
        log.warn(
          { partitions, err: error, retryInMs: delay },
          'positioning the assigned partitions failed; retrying',
        );
        await sleep(delay);
        if (stopping || epoch !== assignmentEpoch) return;
      }
    }
  }

  /** Retries `write` until it succeeds, pausing the partition meanwhile; false when the batch went stale. */
  async function withRetry(
    partition: number,
    control: BatchControl,
    what: string,
    write: () => Promise<void>,
  ) {
    let delay = 100;
    let paused = false;
    // kafkajs's isStale() sees seeks, not a rebalance that took the partition away: a write retried
    // after the partition moved could land after its new owner's newer one. Give it up instead.
    const abandoned = () => control.isStale() || !assigned.includes(partition);
    try {
      for (;;) {
        try {
          await write();
          return true;
        } catch (error) {
          if (stopping || abandoned()) return false;
          totals.sinkRetries++;
          if (!paused) {
            source.pause(partition);
            paused = true;
          }
          log.warn({ partition, err: error, retryInMs: delay }, `${what} failed: partition paused, retrying`);
          await sleep(delay);
          delay = Math.min(delay * 2, 5_000);
          let rebalancing = false;
          await control.heartbeat().catch((error: unknown) => {
            // The group is rebalancing: the partition may be about to move (the task is rebuilt
            // from its checkpoint if it stays).
            rebalancing = (error as { type?: string }).type === 'REBALANCE_IN_PROGRESS';
          });
          if (rebalancing) return false;
          if (abandoned()) return false;
        }
      }
    } finally {
      if (paused) source.resume(partition);
    }
  }

  async function checkpoint(task: PartitionTask, rows: Parameters<typeof windowRowsToBatch>[1]) {
    const started = nowMs();
    const state = task.checkpoint();
    const offset = task.nextOffset;
    const result = await offline.commitStreamBatch({
      scope,
      partition: task.partition,
      expectedGeneration: task.generation,
      state,
      rows: rows.length > 0 ? [windowRowsToBatch(view, rows, Date.now() * 1000)] : [],
    });
    if (!result.committed) {
      totals.checkpointsFenced++;
      return false;
    }
    task.generation = result.generation;
    task.checkpointedAtMs = nowMs();
    task.checkpointedOffset = offset;
    totals.checkpoints++;
    totals.lastCheckpointMs = task.checkpointedAtMs - started;
    options.onCheckpoint?.(totals.lastCheckpointMs);
    totals.lastCheckpointBytes = state.byteLength;
    return true;
  }

  async function processBatch(batch: SourceBatch, control: BatchControl) {
    const task = await taskFor(batch.partition);
    while (task.busy) await sleep(5); // a quiet-partition checkpoint is being stored
    // Dropped meanwhile (positioning found its checkpoint gone): the batch is fetched again, unresolved.
    if (tasks.get(batch.partition) !== task) return;
    task.busy = true;
    try {
      await processTaskBatch(task, batch, control);
    } finally {
      task.busy = false;
    }
  }

  async function processTaskBatch(task: PartitionTask, batch: SourceBatch, control: BatchControl) {
    const { partition, records } = batch;
    const first = BigInt(records[0]!.offset);
    if (first > task.nextOffset) {
      // The source is past the checkpoint (a restart, a rebalance, a dropped task): go back.
      source.seek(partition, task.nextOffset.toString());
      return;
    }
    const lastOffset = records.at(-1)!.offset;
    if (BigInt(lastOffset) < task.nextOffset) {
      control.resolveOffset(lastOffset);
      return;
    }
    const processed = task.process(records);
    totals.batches++;
    for (const key of Object.keys(processed.counts) as (keyof BatchCounts)[])
      totals[key] += processed.counts[key];
    totals.deadLetters += processed.deadLetters.length;
    lags.set(partition, Number(BigInt(batch.highWatermark) - task.nextOffset));
    if (task.maxEventTime !== null && assigned.includes(partition))
      tracker.observe(partition, task.maxEventTime, nowMs());

    const { rows, deadLetters } = processed;
    const sunk = await withRetry(partition, control, 'dead-letter publish', () =>
      source.publishDeadLetters(deadLetters),
    );
    const due = nowMs() - task.checkpointedAtMs >= options.checkpointIntervalMs;
    const wrote =
      sunk &&
      (await withRetry(partition, control, 'sink write', async () => {
        if (rows.length === 0) return;
        const batchRows = windowRowsToBatch(view, rows, Date.now() * 1000);
        const servable = online
          .writeMany(
            toOnlineEntries(
              view,
              batchRows.keys,
              batchRows.eventTimes,
              batchRows.values,
              options.onlineExpiryGraceMs,
            ),
          )
          .then(() => {
            // Servable once in the online store (the offline write may still be going on).
            const writtenAt = Date.now() * 1000;
            for (const row of rows)
              if (row.trigger === 'watermark')
                windowDelayHistogram[
                  Math.min(delayBuckets - 1, Math.max(0, Math.floor((writtenAt - row.end) / 1000)))
                ]!++;
          });
        // Rows of a checkpoint batch go in the checkpoint's transaction.
        await Promise.all([servable, due ? Promise.resolve() : offline.replaceRows([batchRows])]);
      }));
    if (!wrote) {
      dropTask(partition, 'the batch went stale while its sink writes were retried');
      return;
    }
    if (due) {
      let fenced = false;
      const checkpointed = await withRetry(partition, control, 'checkpoint', async () => {
        fenced = !(await checkpoint(task, rows));
      });
      if (!checkpointed || fenced) {
        dropTask(partition, fenced ? 'another member checkpointed the partition (fenced)' : 'stale batch');
        return;
      }
      await source.commit(partition, task.nextOffset.toString()).catch((error: unknown) => {
        log.warn({ partition, err: error }, 'Kafka offset commit failed (the checkpoint holds the position)');
      });
    }
    control.resolveOffset(lastOffset);
  }

  /**
   * Checkpoints partitions that read records since their last checkpoint but have no batch coming
   * (the end of the log, a quiet topic), so their offsets are committed without waiting for more.
   */
  async function checkpointQuietPartitions() {
    for (const task of [...tasks.values()]) {
      if (stopping || task.busy || task.nextOffset === task.checkpointedOffset) continue;
      if (nowMs() - task.checkpointedAtMs < options.checkpointIntervalMs) continue;
      task.busy = true;
      active++;
      try {
        if (await checkpoint(task, [])) await source.commit(task.partition, task.nextOffset.toString());
        else dropTask(task.partition, 'another member checkpointed the partition (fenced)');
      } catch (error) {
        log.warn(
          { partition: task.partition, err: error },
          'checkpoint of a quiet partition failed; retried later',
        );
      } finally {
        task.busy = false;
        active--;
        if (active === 0) idle?.();
      }
    }
  }

  function onBatch(batch: SourceBatch, control: BatchControl): Promise<void> {
    if (stopping || control.isStale()) return Promise.resolve();
    active++;
    return processBatch(batch, control)
      .catch((error: unknown) => {
        dropTask(batch.partition, `batch failed: ${error instanceof Error ? error.message : String(error)}`);
        log.error({ partition: batch.partition, err: error }, 'batch failed');
        if (
          error instanceof FStoreError &&
          (error.code === 'failed_precondition' || error.code === 'data_loss')
        )
          options.onFatal(error);
      })
      .finally(() => {
        active--;
        if (active === 0) idle?.();
      });
  }

  return {
    get assigned() {
      return assigned;
    },

    async start() {
      const stoppedWhileStarting = () =>
        new FStoreError('cancelled', `stream aggregation ${aggregation.name}: stopped while it started`);
      if (stopping) throw stoppedWhileStarting();
      await offline.ensureView(view);
      if (stopping) throw stoppedWhileStarting();
      const quietTimer = setInterval(
        () => {
          if (!checkingQuiet) {
            checkingQuiet = true;
            checkpointQuietPartitions().finally(() => {
              checkingQuiet = false;
            });
          }
        },
        Math.max(100, Math.min(options.checkpointIntervalMs, 1_000)),
      );
      quietTimer.unref();
      stopTimer = () => clearInterval(quietTimer);
      await source.start({
        onAssignment(partitions) {
          for (const partition of assigned)
            if (!partitions.includes(partition)) {
              tasks.delete(partition);
              tracker.revokePartition(partition);
            }
          for (const partition of partitions)
            if (!assigned.includes(partition))
              tracker.assignPartition(partition, nowMs(), tasks.get(partition)?.maxEventTime ?? null);
          assigned = [...partitions];
          log.info({ partitions }, 'assignment');
          const epoch = ++assignmentEpoch;
          if (partitions.length > 0 && !stopping) void position(partitions, epoch);
        },
        onBatch,
        onCrash(error) {
          log.error({ err: error }, 'Kafka consumer crashed');
          options.onFatal(error);
        },
      });
    },

    stop() {
      // Any moment, a start in progress included: that start gives up at its next step (the
      // source's start settles before the source stops), and nothing is processed once stopping.
      stopped ??= (async () => {
        stopping = true;
        stopTimer();
        if (active > 0)
          await new Promise<void>((resolve) => {
            idle = resolve;
          });
        for (const task of tasks.values()) {
          // Nothing read since its last checkpoint (or since it started): nothing to store.
          if (task.nextOffset === task.checkpointedOffset) continue;
          try {
            if (await checkpoint(task, [])) await source.commit(task.partition, task.nextOffset.toString());
          } catch (error) {
            log.warn({ partition: task.partition, err: error }, 'final checkpoint failed');
          }
        }
        await source.stop();
      })();
      return stopped;
    },

    stats() {
      const watermark = tracker.advance(nowMs());
      const wallMicros = Date.now() * 1000;
      return {
        ...totals,
        consumerWatermark: Number.isFinite(watermark) ? watermark : null,
        windowDelayHistogram: windowDelayHistogram.slice(),
        partitions: [...tasks.values()]
          .sort((a, b) => a.partition - b.partition)
          .map((task) => {
            const w = task.watermark;
            return {
              partition: task.partition,
              nextOffset: task.nextOffset.toString(),
              lag: lags.get(task.partition) ?? 0,
              watermark: Number.isFinite(w) ? w : null,
              watermarkDelayMs: Number.isFinite(w) ? (wallMicros - w) / 1000 : null,
              ...task.aggregator.stateSize,
            };
          }),
      };
    },
  };
}
