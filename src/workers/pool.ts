import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import type { PointInTimePool } from '../serving/historical.js';
import type { DriftTask, DriftTaskResult } from './drift-task.js';
import type { PointInTimeTask, PointInTimeTaskResult } from './point-in-time-task.js';
import type { ProfileTask, ProfileTaskResult } from './profile-task.js';

export interface StatisticsPool {
  /** Profiles of one segment of rows, or of sampled values. */
  runProfile(task: ProfileTask, options: { signal?: AbortSignal }): Promise<ProfileTaskResult>;
  runDrift(task: DriftTask, options: { signal?: AbortSignal }): Promise<DriftTaskResult>;
}

export interface WorkerPool extends PointInTimePool, StatisticsPool {
  readonly threads: number;
  /** Tasks waiting for a thread. */
  readonly queueSize: number;
  /** Share of the threads' time spent in tasks since the pool started, 0 to 1. */
  readonly utilization: number;
  destroy(): Promise<void>;
}

const taskFile = (name: string) => new URL(`./${name}.ts`, import.meta.url).href;

/**
 * The piscina pool of CPU-heavy work (DESIGN §2): point-in-time joins, feature profiles and drift
 * statistics, each task kind in its own worker entry file. Workers run the TypeScript sources
 * through tsx, like the main process. Task inputs are transferred, never copied: the caller must
 * not touch a task's buffers after `run`.
 */
export function createWorkerPool(options: { readonly threads: number }): WorkerPool {
  const threads = options.threads > 0 ? options.threads : availableParallelism();
  const pool = new Piscina({
    filename: taskFile('point-in-time-task'),
    execArgv: ['--import', 'tsx'],
    minThreads: 0,
    maxThreads: threads,
    // Idle workers stay: starting one (loading tsx and the task) costs more than a small join.
    idleTimeout: 60_000,
  });
  const signalOption = (signal: AbortSignal | undefined) => (signal ? { signal } : {});
  return {
    threads,
    parallelism: threads * 2,
    get queueSize() {
      return pool.queueSize;
    },
    get utilization() {
      return pool.utilization;
    },
    run(task: PointInTimeTask, { signal }: { signal?: AbortSignal }): Promise<PointInTimeTaskResult> {
      const transferList = [task.bytes.buffer, task.keyRanks.buffer, task.times.buffer] as ArrayBuffer[];
      return pool.run(task, { transferList, ...signalOption(signal) }) as Promise<PointInTimeTaskResult>;
    },
    runProfile(task, { signal }) {
      const transferList = (
        task.kind === 'rows'
          ? [task.bytes.buffer]
          : task.columns.flatMap((column) => (column.kind === 'numeric' ? [column.values.buffer] : []))
      ) as ArrayBuffer[];
      return pool.run(task, {
        filename: taskFile('profile-task'),
        transferList,
        ...signalOption(signal),
      }) as Promise<ProfileTaskResult>;
    },
    runDrift(task, { signal }) {
      return pool.run(task, {
        filename: taskFile('drift-task'),
        ...signalOption(signal),
      }) as Promise<DriftTaskResult>;
    },
    destroy: () => pool.destroy(),
  };
}
