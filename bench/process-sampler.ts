import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/**
 * Samples a child process from /proc while a benchmark phase runs: resident memory every
 * `intervalMs` (the maximum seen), the kernel's high-water mark (VmHWM, the true peak since the
 * process started, threads included), and its CPU time; plus the CPU time of PostgreSQL and of the
 * whole machine, so a report can say where the time went and how much other processes took.
 * Linux only.
 */

const clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

function statusKilobytes(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  try {
    const match = readFileSync(`/proc/${pid}/status`, 'utf8').match(
      new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'),
    );
    return match ? Number(match[1]) : 0;
  } catch {
    return 0; // the process is gone
  }
}

/** User + system CPU seconds of a process (all its threads), or of one thread with `task`. */
export function processCpuSeconds(pid: number, task?: string): number {
  try {
    const path = task === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${task}/stat`;
    // utime and stime are fields 14 and 15; fields 12 and 13 after the ')' that ends the command name.
    const fields = readFileSync(path, 'utf8')
      .replace(/^.*\) /s, '')
      .split(' ');
    return (Number(fields[11]) + Number(fields[12])) / clockTicks;
  } catch {
    return 0;
  }
}

/** CPU seconds per thread id of a process. */
function threadCpuSeconds(pid: number): Map<string, number> {
  const threads = new Map<string, number>();
  try {
    for (const task of readdirSync(`/proc/${pid}/task`)) threads.set(task, processCpuSeconds(pid, task));
  } catch {
    // the process is gone
  }
  return threads;
}

/**
 * CPU seconds of every PostgreSQL process on this machine (all clients' backends, parallel
 * workers, background processes), including those that exited: the postmaster's reaped children.
 */
export function postgresCpuSeconds(): number {
  let total = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() !== 'postgres') continue;
      const fields = readFileSync(`/proc/${entry}/stat`, 'utf8')
        .replace(/^.*\) /s, '')
        .split(' ');
      // The postmaster's parent is not a postgres process: add what its exited children used.
      const parentComm = readFileSync(`/proc/${fields[1]}/comm`, 'utf8').trim();
      total += Number(fields[11]) + Number(fields[12]);
      if (parentComm !== 'postgres') total += Number(fields[13]) + Number(fields[14]);
    } catch {
      // gone meanwhile
    }
  }
  return total / clockTicks;
}

/** Busy CPU seconds of the whole machine, all cores (user + nice + system + irq + softirq). */
export function machineCpuSeconds(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] as string;
  const [, user, nice, system, , , irq, softirq] = line.trim().split(/\s+/).map(Number);
  return ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0)) / clockTicks;
}

export interface ProcessSample {
  /** Largest VmRSS seen by the polling, bytes. */
  readonly maxRssBytes: number;
  /** VmHWM at the end: peak resident memory since the process started, bytes. */
  readonly peakRssBytes: number;
  readonly cpuSeconds: number;
  readonly machineCpuSeconds: number;
  readonly postgresCpuSeconds: number;
  /**
   * CPU seconds of the process's main thread, then of its other threads (worker threads, V8 and
   * libuv helpers), busiest first; threads that ended during the phase are not counted.
   */
  readonly mainThreadCpuSeconds: number;
  readonly otherThreadsCpuSeconds: number[];
  readonly wallSeconds: number;
}

export function sampleProcess(pid: number, intervalMs = 100): { stop(): ProcessSample } {
  const cpu0 = processCpuSeconds(pid);
  const machine0 = machineCpuSeconds();
  const postgres0 = postgresCpuSeconds();
  const threads0 = threadCpuSeconds(pid);
  const started = performance.now();
  let maxRss = statusKilobytes(pid, 'VmRSS');
  let peak = statusKilobytes(pid, 'VmHWM');
  const timer = setInterval(() => {
    maxRss = Math.max(maxRss, statusKilobytes(pid, 'VmRSS'));
    peak = Math.max(peak, statusKilobytes(pid, 'VmHWM'));
  }, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      const threads = [...threadCpuSeconds(pid)].map(([task, cpu]) => ({
        task,
        cpu: cpu - (threads0.get(task) ?? 0),
      }));
      maxRss = Math.max(maxRss, statusKilobytes(pid, 'VmRSS'));
      peak = Math.max(peak, statusKilobytes(pid, 'VmHWM'));
      return {
        maxRssBytes: maxRss * 1024,
        peakRssBytes: peak * 1024,
        cpuSeconds: processCpuSeconds(pid) - cpu0,
        machineCpuSeconds: machineCpuSeconds() - machine0,
        postgresCpuSeconds: postgresCpuSeconds() - postgres0,
        mainThreadCpuSeconds: threads.find(({ task }) => task === String(pid))?.cpu ?? 0,
        otherThreadsCpuSeconds: threads
          .filter(({ task }) => task !== String(pid))
          .map(({ cpu }) => Number(cpu.toFixed(2)))
          .sort((a, b) => b - a),
        wallSeconds: (performance.now() - started) / 1000,
      };
    },
  };
}
