import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import type { PointInTimePool } from '../serving/historical.js';
import type { PointInTimeTask, PointInTimeTaskResult } from './point-in-time-task.js';

export interface WorkerPool extends PointInTimePool {
  readonly threads: number;
  destroy(): Promise<void>;
}

/**
 * The piscina pool of CPU-heavy work (DESIGN §2). Workers run the TypeScript sources through tsx,
 * like the main process. Task inputs are transferred, never copied: the caller must not touch a
 * task's buffers after `run`.
 */
export function createWorkerPool(options: { readonly threads: number }): WorkerPool {
  const threads = options.threads > 0 ? options.threads : availableParallelism();
  const pool = new Piscina({
    filename: new URL('./point-in-time-task.ts', import.meta.url).href,
    execArgv: ['--import', 'tsx'],
    minThreads: 0,
    maxThreads: threads,
    // Idle workers stay: starting one (loading tsx and the task) costs more than a small join.
    idleTimeout: 60_000,
  });
  return {
    threads,
    parallelism: threads * 2,
    run(task: PointInTimeTask, { signal }: { signal?: AbortSignal }): Promise<PointInTimeTaskResult> {
      const transferList = [task.bytes.buffer, task.keyRanks.buffer, task.times.buffer] as ArrayBuffer[];
      return pool.run(task, {
        transferList,
        ...(signal ? { signal } : {}),
      }) as Promise<PointInTimeTaskResult>;
    },
    destroy: () => pool.destroy(),
  };
}
