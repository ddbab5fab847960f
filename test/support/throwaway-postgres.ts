import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { appendFile, chown, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * A PostgreSQL server of its own for tests that stop and restart it (outages), so they never
 * disturb the shared test server. It runs the system's binaries (/usr/lib/postgresql/<major>/bin,
 * installed by scripts/servers.sh), with its data in a temporary directory and trust auth on
 * 127.0.0.1. PostgreSQL refuses to run as root, so as root every command runs as `postgres`.
 */
export interface ThrowawayPostgres {
  readonly port: number;
  /** To the `postgres` database as user `postgres`. */
  readonly connectionString: string;
  readonly dataDir: string;
  start(): Promise<void>;
  /** Fast shutdown: open sessions are ended with 57P01 (admin_shutdown), as in a real restart. */
  stop(): Promise<void>;
  restart(): Promise<void>;
  /** Stops the server and deletes its files. */
  destroy(): Promise<void>;
}

const run = promisify(execFile);
const isRoot = process.getuid?.() === 0;

export async function startThrowawayPostgres(
  options: { preferredPort?: number } = {},
): Promise<ThrowawayPostgres> {
  const bin = findPostgresBinaries();
  const root = await mkdtemp(join(tmpdir(), 'fstore-throwaway-pg-'));
  const dataDir = join(root, 'data');
  const logFile = join(root, 'postgres.log');
  if (isRoot) {
    const [uid, gid] = await Promise.all([idOf('-u'), idOf('-g')]);
    await chown(root, uid, gid);
  }
  const asPostgres = async (command: string, args: string[]) => {
    const [file, fileArgs] = isRoot
      ? ['runuser', ['-u', 'postgres', '--', command, ...args]]
      : [command, args];
    try {
      await run(file, fileArgs, { timeout: 60_000 });
    } catch (error) {
      const log = await readFile(logFile, 'utf8').catch(() => '');
      throw new Error(`${command} ${args.join(' ')} failed: ${String(error)}\n${log.slice(-2_000)}`);
    }
  };

  await asPostgres(join(bin, 'initdb'), [
    '-D',
    dataDir,
    '--auth=trust',
    '--username=postgres',
    '--encoding=UTF8',
    '--locale=C',
    '--no-sync',
  ]);
  const port = await findFreePort(options.preferredPort ?? 5449);
  const settings = [
    `port = ${port}`,
    "listen_addresses = '127.0.0.1'",
    `unix_socket_directories = '${root}'`,
    'fsync = off',
    'synchronous_commit = off',
    'full_page_writes = off',
  ].join('\n');
  // Appending keeps the file's owner (postgres), also when written as root.
  await appendFile(join(dataDir, 'postgresql.conf'), `\n${settings}\n`);

  let running = false;
  const server: ThrowawayPostgres = {
    port,
    connectionString: `postgres://postgres@127.0.0.1:${port}/postgres`,
    dataDir,
    async start() {
      if (running) return;
      await asPostgres(join(bin, 'pg_ctl'), ['start', '-w', '-t', '30', '-s', '-D', dataDir, '-l', logFile]);
      running = true;
    },
    async stop() {
      if (!running) return;
      await asPostgres(join(bin, 'pg_ctl'), ['stop', '-w', '-t', '30', '-s', '-m', 'fast', '-D', dataDir]);
      running = false;
    },
    async restart() {
      await server.stop();
      await server.start();
    },
    async destroy() {
      try {
        await server.stop();
      } finally {
        await rm(root, { recursive: true, force: true });
      }
    },
  };
  try {
    await server.start();
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
  return server;
}

function findPostgresBinaries(): string {
  const base = '/usr/lib/postgresql';
  let majors: string[] = [];
  try {
    majors = readdirSync(base).filter((name) => /^\d+$/.test(name));
  } catch {
    // reported below
  }
  const newest = majors.sort((a, b) => Number(b) - Number(a))[0];
  if (!newest)
    throw new Error(
      `no PostgreSQL binaries under ${base}/<major>/bin: run \`bash scripts/servers.sh start-postgres\` (it installs them)`,
    );
  return join(base, newest, 'bin');
}

async function idOf(flag: '-u' | '-g'): Promise<number> {
  const { stdout } = await run('id', [flag, 'postgres']);
  return Number(stdout.trim());
}

/** The first port from `from` on that nothing listens on at 127.0.0.1. */
async function findFreePort(from: number): Promise<number> {
  for (let port = from; port < from + 200; port += 1) if (await isFree(port)) return port;
  throw new Error(`no free port on 127.0.0.1 between ${from} and ${from + 199}`);
}

function isFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}
