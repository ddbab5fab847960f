/**
 * `fstore stream` run the way an operator runs it — `node bin/fstore.js stream <args>` — for tests
 * that watch what it logs (pino JSON lines) and how it exits, and act on its log lines as events.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const binary = fileURLToPath(new URL('../../bin/fstore.js', import.meta.url));
const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/** One line it printed: a pino record, or `{ msg: <the raw line> }` for anything else. */
export interface LogLine {
  readonly level?: number;
  readonly msg?: string;
  readonly [field: string]: unknown;
}

export interface CliExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface CliMember {
  readonly pid: number;
  readonly exited: Promise<CliExit>;
  /** Every line printed so far (stdout and stderr). */
  lines(): readonly LogLine[];
  /** The last lines, for failure messages. */
  output(): string;
  /** Resolves with the first line (printed or still to come) `matches` accepts; rejects on exit or timeout. */
  waitForLine(matches: (line: LogLine) => boolean, timeoutMs: number, what: string): Promise<LogLine>;
  /** Sends `signal` and waits for the exit (SIGKILL after `timeoutMs`: the exit then says so). */
  stop(signal: 'SIGTERM' | 'SIGINT' | 'SIGKILL', timeoutMs?: number): Promise<CliExit>;
}

/** pino's numeric levels: error and fatal. */
export const errorLevel = 50;

/**
 * Starts `fstore stream <args>` with exactly `environment` as its FSTORE_* settings (none is
 * inherited). It is SIGKILLed when this process exits, whatever happens to the test.
 */
export function spawnCliMember(args: readonly string[], environment: Readonly<Record<string, string>>) {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const child of live) child.kill('SIGKILL');
    });
  }
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith('FSTORE_')),
  );
  const child = spawn(process.execPath, [binary, 'stream', ...args], {
    env: { ...inherited, FSTORE_METRICS_PORT: '0', ...environment },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  const lines: LogLine[] = [];
  const waiters = new Set<(line: LogLine | null) => void>();
  const take = (text: string) => {
    let line: LogLine;
    try {
      const parsed: unknown = JSON.parse(text);
      line = typeof parsed === 'object' && parsed !== null ? (parsed as LogLine) : { msg: text };
    } catch {
      line = { msg: text };
    }
    lines.push(line);
    for (const waiter of [...waiters]) waiter(line);
  };
  for (const stream of [child.stdout, child.stderr]) {
    let pending = '';
    stream?.on('data', (chunk: Buffer) => {
      pending += chunk.toString('utf8');
      const complete = pending.split('\n');
      pending = complete.pop() ?? '';
      for (const text of complete) if (text.trim() !== '') take(text);
    });
    stream?.on('end', () => {
      if (pending.trim() !== '') take(pending);
      pending = '';
    });
  }
  let ended: CliExit | null = null;
  const exited = new Promise<CliExit>((resolve) => {
    // 'close': the exit, and every line it printed has been read.
    child.once('close', (code, signal) => {
      live.delete(child);
      ended = { code, signal };
      for (const waiter of [...waiters]) waiter(null);
      resolve(ended);
    });
  });
  const output = () =>
    lines
      .slice(-40)
      .map((line) => JSON.stringify(line))
      .join('\n');
  const member: CliMember = {
    pid: child.pid ?? -1,
    exited,
    lines: () => lines,
    output,
    waitForLine(matches, timeoutMs, what) {
      const seen = lines.find(matches);
      if (seen) return Promise.resolve(seen);
      return new Promise<LogLine>((resolve, reject) => {
        const done = (line: LogLine | null) => {
          if (line !== null && !matches(line)) return;
          waiters.delete(done);
          clearTimeout(timer);
          if (line !== null) resolve(line);
          else
            reject(
              new Error(
                `fstore stream exited (${JSON.stringify(ended)}) before ${what}; its last lines:\n${output()}`,
              ),
            );
        };
        const timer = setTimeout(() => {
          waiters.delete(done);
          reject(
            new Error(`timed out after ${timeoutMs} ms waiting for ${what}; its last lines:\n${output()}`),
          );
        }, timeoutMs);
        waiters.add(done);
        if (ended) done(null);
      });
    },
    async stop(signal, timeoutMs = 30_000) {
      if (ended) return ended;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
  return member;
}

/** A line whose message starts with `prefix`. */
export const message =
  (prefix: string) =>
  (line: LogLine): boolean =>
    typeof line.msg === 'string' && line.msg.startsWith(prefix);
