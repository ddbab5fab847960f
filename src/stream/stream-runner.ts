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
  let idle: (() => void) | undefined;
  let checkingQuiet = false;
  let stopTimer = () => {};

  const log = logger.child({ aggregation: aggregation.name, topic: aggregation.topic });

  function dropTask(partition: number, why: string) {
    if (tasks.delete(partition))
      log.warn({ partition, why }, 'partition state dropped: rebuilt from its checkpoint');
  }

  /** The task of `partition`, restored from its checkpoint, or started at the log's beginning. */
  async function taskFor(partition: number): Promise<PartitionTask> {
    const existing = tasks.get(partition);
    if (existing) return existing;
    const stored = (await offline.loadStreamCheckpoints(scope, [partition])).get(partition);
    let task: PartitionTask;
    if (stored) task = PartitionTask.restore(partition, taskOptions, stored, nowMs());
    else {
      const earliest = (await source.earliestOffsets()).get(partition) ?? '0';
      task = PartitionTask.fresh(partition, taskOptions, BigInt(earliest), nowMs());
    }
    totals.taskRestores++;
    log.info(
      {
        partition,
        nextOffset: task.nextOffset.toString(),
        generation: task.generation,
        ...task.aggregator.stateSize,
      },
      stored ? 'partition restored from its checkpoint' : 'partition starts from the beginning of its log',
    );
    tasks.set(partition, task);
    if (assigned.includes(partition)) tracker.assignPartition(partition, nowMs(), task.maxEventTime);
    return task;
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
      await offline.ensureView(view);
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
        },
        onBatch,
        onCrash(error) {
          log.error({ err: error }, 'Kafka consumer crashed');
          options.onFatal(error);
        },
      });
    },

    async stop() {
      stopping = true;
      stopTimer();
      if (active > 0)
        await new Promise<void>((resolve) => {
          idle = resolve;
        });
      for (const task of tasks.values())
        try {
          if (await checkpoint(task, [])) await source.commit(task.partition, task.nextOffset.toString());
        } catch (error) {
          log.warn({ partition: task.partition, err: error }, 'final checkpoint failed');
        }
      await source.stop();
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
