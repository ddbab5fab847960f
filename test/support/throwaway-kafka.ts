import { type ExecFileException, execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

/**
 * An Apache Kafka broker of its own (single-node KRaft), for fault tests that stop, kill and
 * restart it without disturbing the shared test broker. It is started and stopped by
 * scripts/servers.sh (start-kafka / stop-kafka) with a private run dir and private ports, so it
 * runs exactly like the shared one, on the jars the script caches per machine.
 */
export interface ThrowawayKafka {
  /** `127.0.0.1:<port>`, for kafkajs. */
  readonly brokers: string[];
  readonly port: number;
  readonly controllerPort: number;
  /** The private FSTORE_RUN_DIR: data, pid file and the broker's log. */
  readonly runDir: string;
  readonly logFile: string;
  /** (Re)starts the broker on the same data: topics, messages and committed offsets survive. */
  start(): Promise<void>;
  /** SIGTERM, Kafka's clean shutdown; resolves once both ports are closed. */
  stop(): Promise<void>;
  /** SIGKILL, as when the broker dies; resolves once both ports are free. */
  kill(): Promise<void>;
  /** Stops the broker and deletes its run dir. Safe to call twice. */
  destroy(): Promise<void>;
}

export interface ThrowawayKafkaOptions {
  /**
   * Ports for the broker and its KRaft controller, taken as adjacent pairs. Default 19300-19399:
   * below Linux's ephemeral range (32768-60999), so no outgoing connection can hold one, and
   * clear of the project's other ports (6391, 7101-7103, 5439, 9192-9193).
   */
  ports?: { first: number; last: number };
  /**
   * Seconds for each wait of scripts/servers.sh (start-up, shutdown, ports closing). Default 90:
   * a broker starts in about 5 s here, but 30 s was too short on a loaded 2-core machine.
   */
  timeoutSeconds?: number;
}

const defaults = {
  ports: { first: 19_300, last: 19_399 },
  timeoutSeconds: 90,
} satisfies Required<ThrowawayKafkaOptions>;

const host = '127.0.0.1';
const serversScript = fileURLToPath(new URL('../../scripts/servers.sh', import.meta.url));
// Parallel test files (vitest forks) reserve their ports here, for the broker's whole life: a
// stopped broker's ports look free, and another file must not take them before it restarts.
const reservationDir = join(tmpdir(), 'fstore-throwaway-kafka-ports');

export async function startThrowawayKafka(options: ThrowawayKafkaOptions = {}): Promise<ThrowawayKafka> {
  const { ports: range, timeoutSeconds } = validateOptions(options);
  const runDir = await mkdtemp(join(tmpdir(), 'fstore-throwaway-kafka-'));
  let reservation: PortReservation;
  try {
    reservation = await reservePortPair(range);
  } catch (error) {
    await rm(runDir, { recursive: true, force: true });
    throw error;
  }
  const { port, controllerPort } = reservation;
  // The file names scripts/servers.sh gives them (kafka_pidfile, kafka_logfile, kafka_dir).
  const pidFile = join(runDir, `kafka-${port}.pid`);
  const logFile = join(runDir, 'logs', `kafka-${port}.log`);
  const serverProperties = join(runDir, `kafka-${port}`, 'server.properties');
  const waitMs = timeoutSeconds * 1_000;

  const runScript = async (command: 'start-kafka' | 'stop-kafka') => {
    // Two waits of timeoutSeconds at most (stop: SIGTERM, then the ports), plus the JVM runs of
    // the first start's storage format.
    const limitMs = 2 * waitMs + 30_000;
    const env = {
      ...process.env,
      FSTORE_RUN_DIR: runDir,
      FSTORE_TEST_KAFKA_PORT: String(port),
      FSTORE_TEST_KAFKA_CONTROLLER_PORT: String(controllerPort),
      FSTORE_SERVERS_TIMEOUT: String(timeoutSeconds),
    };
    const outcome = await new Promise<{ error: ExecFileException | null; stderr: string }>((resolve) => {
      execFile('bash', [serversScript, command], { env, timeout: limitMs }, (error, _stdout, stderr) =>
        resolve({ error, stderr: String(stderr) }),
      );
    });
    if (!outcome.error) return;
    // The script prints the log's tail when it gives up; when it was cut off, print it here.
    const tail = outcome.stderr.includes(logFile) ? '' : await logTail(logFile);
    const reason = outcome.error.killed
      ? `cut off after ${limitMs / 1_000} s`
      : (outcome.error.message.split('\n')[0] ?? '');
    throw new Error(
      `scripts/servers.sh ${command} for the throwaway Kafka on ${host}:${port} failed (${reason})\n` +
        `${outcome.stderr.trim()}${tail}`,
    );
  };

  const livePid = (): number | undefined => {
    let pid: number;
    try {
      pid = Number(readFileSync(pidFile, 'utf8').trim());
    } catch {
      return undefined;
    }
    if (!Number.isInteger(pid) || pid <= 0 || !processRunning(pid)) return undefined;
    // Guard against pid reuse: it must be the broker of this run dir.
    try {
      const commandLine = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      return commandLine.includes(`kafka.Kafka\0${serverProperties}\0`) ? pid : undefined;
    } catch {
      return undefined;
    }
  };

  const kill = async () => {
    const pid = livePid();
    if (pid !== undefined) process.kill(pid, 'SIGKILL');
    // A JVM's threads may outlive its main thread for a moment, and with them its listeners.
    const deadline = Date.now() + waitMs;
    for (;;) {
      if ((pid === undefined || !processRunning(pid)) && (await portsFree([port, controllerPort]))) return;
      if (Date.now() > deadline)
        throw new Error(
          `the throwaway Kafka (pid ${pid}) still held ${host}:${port} or ${controllerPort} ${timeoutSeconds} s after SIGKILL${await logTail(logFile)}`,
        );
      await sleep(100);
    }
  };

  let destroyed = false;
  const start = async () => {
    if (destroyed) throw new Error(`the throwaway Kafka on ${host}:${port} was destroyed; start a new one`);
    try {
      await runScript('start-kafka');
    } catch (error) {
      // A broker that did not come up in time must not keep running behind the test's back.
      await kill().catch(() => undefined);
      throw error;
    }
  };

  // Last resort when the test process exits without destroy() (a crash, a timed-out hook):
  // leave no JVM behind.
  const killOnExit = () => {
    const pid = livePid();
    if (pid !== undefined) process.kill(pid, 'SIGKILL');
  };
  process.on('exit', killOnExit);

  const destroy = async () => {
    if (destroyed) return;
    destroyed = true;
    try {
      await runScript('stop-kafka').catch(async (error: unknown) => {
        await kill();
        throw error;
      });
    } finally {
      process.off('exit', killOnExit);
      await rm(runDir, { recursive: true, force: true });
      await reservation.release();
    }
  };

  // One operation at a time: a destroy() from an afterAll hook waits for a start() still running.
  let queue: Promise<unknown> = Promise.resolve();
  const serially = (operation: () => Promise<void>) => (): Promise<void> => {
    const result = queue.then(operation, operation);
    queue = result.catch(() => undefined);
    return result;
  };

  const broker: ThrowawayKafka = {
    brokers: [`${host}:${port}`],
    port,
    controllerPort,
    runDir,
    logFile,
    start: serially(start),
    stop: serially(() => runScript('stop-kafka')),
    kill: serially(kill),
    destroy: serially(destroy),
  };
  try {
    await broker.start();
  } catch (error) {
    await broker.destroy().catch(() => undefined);
    throw error;
  }
  return broker;
}

function validateOptions(options: ThrowawayKafkaOptions): Required<ThrowawayKafkaOptions> {
  const { ports, timeoutSeconds } = { ...defaults, ...options };
  const isPort = (value: number) => Number.isInteger(value) && value >= 1_024 && value <= 65_535;
  if (!isPort(ports.first) || !isPort(ports.last) || ports.last - ports.first < 1)
    throw new Error(
      `throwaway Kafka option ports must span at least two ports within 1024-65535; got ${ports.first}-${ports.last}`,
    );
  if (!Number.isInteger(timeoutSeconds) || timeoutSeconds < 1)
    throw new Error(
      `throwaway Kafka option timeoutSeconds must be a positive integer; got ${timeoutSeconds}`,
    );
  return { ports, timeoutSeconds };
}

interface PortReservation {
  port: number;
  controllerPort: number;
  release(): Promise<void>;
}

/**
 * Reserves a free pair (port, port + 1) from `range`. The search starts at a pair picked by the
 * vitest worker (or the process id), so parallel test files try different pairs first.
 */
async function reservePortPair(range: { first: number; last: number }): Promise<PortReservation> {
  await mkdir(reservationDir, { recursive: true });
  const pairs = Math.floor((range.last - range.first + 1) / 2);
  const seed = Number(process.env.VITEST_POOL_ID ?? process.pid) || process.pid;
  for (let attempt = 0; attempt < pairs; attempt += 1) {
    const port = range.first + 2 * ((seed + attempt) % pairs);
    const controllerPort = port + 1;
    const file = join(reservationDir, String(port));
    if (!(await claim(file))) continue;
    const release = () => rm(file, { force: true });
    // Still held by something else: a broker leaked by a crashed run, or another program.
    if (await portsFree([port, controllerPort])) return { port, controllerPort, release };
    await release();
  }
  throw new Error(
    `no free pair of ports for a throwaway Kafka on ${host} in ${range.first}-${range.last} (reservations in ${reservationDir})`,
  );
}

/** Creates `file` holding our pid; a file left by a process that is gone is taken over. */
async function claim(file: string): Promise<boolean> {
  for (let attempt = 0; attempt < 2; attempt += 1) {
    try {
      const handle = await open(file, 'wx');
      await handle.writeFile(String(process.pid));
      await handle.close();
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const owner = Number((await readFile(file, 'utf8').catch(() => '')).trim());
    // An empty file is a claim being written right now.
    if (!Number.isInteger(owner) || owner <= 0 || processExists(owner)) return false;
    await rm(file, { force: true });
  }
  return false;
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Alive and not a zombie: a killed broker is re-parented to a pid 1 that may never reap it. */
function processRunning(pid: number): boolean {
  try {
    const state = /^State:\s*([A-Z])/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return state !== undefined && state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

async function portsFree(ports: number[]): Promise<boolean> {
  for (const port of ports) if (!(await portFree(port))) return false;
  return true;
}

/** A listen test, as the broker will bind: a port in TIME_WAIT counts as free (SO_REUSEADDR). */
function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, host, () => probe.close(() => resolve(true)));
  });
}

async function logTail(logFile: string): Promise<string> {
  const text = await readFile(logFile, 'utf8').catch(() => '');
  if (!text) return `\n(the broker's log ${logFile} is empty or missing)`;
  return `\n--- last lines of ${logFile} ---\n${text.trimEnd().split('\n').slice(-40).join('\n')}`;
}
