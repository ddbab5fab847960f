import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pg from 'pg';
import { type Logger, pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { checkHealth } from '../support/grpc-probes.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { startThrowawayPostgres, type ThrowawayPostgres } from '../support/throwaway-postgres.js';
import { freeLoopbackPort, startThrowawayAuthRedis } from '../support/throwaway-redis-auth.js';

/**
 * A store that refuses FStore (wrong password, nothing listening, unknown host) is named in the
 * server log once per change of state or cause, not once per health probe, and in /readyz.
 */

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** The harness probes every 200 ms: this is ten probes. */
const tenProbesMs = 2_000;

type LogLine = Record<string, unknown> & { msg: string; level: number };

function capture(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { logger: pino({ level: 'info' }, sink), lines };
}

async function until(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

async function readyz(server: TestServer): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${server.metricsUrl}/readyz`);
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

const matching = (lines: LogLine[], pattern: RegExp) => lines.filter((line) => pattern.test(line.msg));

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
});

describe('online store failures in the log and /readyz', () => {
  it.each([
    { name: 'a wrong password (WRONGPASS)', password: 'wrong' },
    { name: 'no password (NOAUTH)', password: undefined },
  ])('names refused authentication once, with $name, and logs the recovery', async ({ password }) => {
    const redis = await startThrowawayAuthRedis('right');
    cleanups.push(() => redis.stop());
    const { logger, lines } = capture();
    const server = await startTestServer(
      'redis',
      { redisUrl: redis.url, ...(password === undefined ? {} : { redisPassword: password }) },
      { logger },
    );
    cleanups.push(() => server.stop());

    expect(await checkHealth(server.address)).toBe('NOT_SERVING');
    await sleep(tenProbesMs);
    const refused = matching(lines, /^not serving/);
    expect(refused, JSON.stringify(lines, null, 1)).toHaveLength(1);
    expect(refused[0]?.msg).toMatch(/online store.*authentication failed/);
    expect(refused[0]).toMatchObject({ serving: false, reason: 'authentication failed' });
    expect(refused[0]?.level).toBeGreaterThanOrEqual(40); // warn: someone has to act
    expect(await readyz(server)).toEqual({
      status: 503,
      body: {
        ready: false,
        checks: { onlineStore: false, offlineStore: true, registry: true },
        reasons: { onlineStore: 'authentication failed' },
      },
    });

    // The operator fixes the password on the server's side: FStore reconnects and says so, once.
    if (password !== undefined) {
      await redis.setPassword(password);
      await until('SERVING', async () => (await checkHealth(server.address)) === 'SERVING');
      await sleep(tenProbesMs / 2);
      expect(matching(lines, /^serving/)).toHaveLength(1);
      expect(matching(lines, /^not serving/)).toHaveLength(1);
      expect((await readyz(server)).body).toEqual({
        ready: true,
        checks: { onlineStore: true, offlineStore: true, registry: true },
      });
    }
  });

  it('names a refused connection once', async () => {
    const port = await freeLoopbackPort();
    const { logger, lines } = capture();
    const server = await startTestServer('redis', { redisUrl: `redis://127.0.0.1:${port}` }, { logger });
    cleanups.push(() => server.stop());
    await sleep(tenProbesMs);
    const down = matching(lines, /^not serving/);
    expect(down, JSON.stringify(lines, null, 1)).toHaveLength(1);
    expect(down[0]).toMatchObject({ reason: 'connection refused' });
    expect((await readyz(server)).body).toMatchObject({ reasons: { onlineStore: 'connection refused' } });
  });

  it('names a host name that does not resolve once', async () => {
    const { logger, lines } = capture();
    const server = await startTestServer(
      'redis',
      // .invalid never resolves (RFC 6761).
      { redisUrl: 'redis://fstore-no-such-host.invalid:6379' },
      { logger },
    );
    cleanups.push(() => server.stop());
    await sleep(tenProbesMs);
    const down = matching(lines, /^not serving/);
    expect(down, JSON.stringify(lines, null, 1)).toHaveLength(1);
    expect(down[0]).toMatchObject({ reason: 'host name not resolved' });
  });
});

/**
 * PostgreSQL: the shared test server trusts every local connection (initdb --auth=trust, so a
 * wrong password would succeed there). A throwaway server gets a role with a password that
 * pg_hba.conf checks with SCRAM.
 */
describe('PostgreSQL failures in the log and /readyz', () => {
  const role = 'fstore_diag';

  async function passwordProtected(): Promise<{
    postgres: ThrowawayPostgres;
    url: (password?: string) => string;
  }> {
    const postgres = await startThrowawayPostgres({ preferredPort: 5600 });
    cleanups.push(() => postgres.destroy());
    const hba = join(postgres.dataDir, 'pg_hba.conf');
    // First match wins: this line ahead of initdb's trust lines. Writing keeps the file's owner.
    await writeFile(hba, `host all ${role} 127.0.0.1/32 scram-sha-256\n${await readFile(hba, 'utf8')}`);
    await admin(postgres, [
      `CREATE ROLE ${role} LOGIN SUPERUSER PASSWORD 'right'`,
      'SELECT pg_reload_conf()',
    ]);
    const url = (password?: string) =>
      `postgres://${role}${password === undefined ? '' : `:${password}`}@127.0.0.1:${postgres.port}/postgres`;
    // The reload is asynchronous: wait until a wrong password is refused.
    await until('pg_hba.conf reloaded', async () => {
      const client = new pg.Client({ connectionString: url('not-it') });
      return client.connect().then(
        () => client.end().then(() => false),
        (error: { code?: string }) => error.code === '28P01',
      );
    });
    return { postgres, url };
  }

  async function admin(postgres: ThrowawayPostgres, statements: string[]): Promise<void> {
    const client = new pg.Client({ connectionString: postgres.connectionString });
    await client.connect();
    try {
      for (const statement of statements) await client.query(statement);
    } finally {
      await client.end();
    }
  }

  /** As when an operator rotates the role's password: new connections are refused (28P01). */
  const rotate = (postgres: ThrowawayPostgres, password: string) =>
    admin(postgres, [
      `ALTER ROLE ${role} PASSWORD '${password}'`,
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '${role}'`,
    ]);

  it('names refused authentication of the offline store once and logs the recovery', async () => {
    const { postgres, url } = await passwordProtected();
    const { logger, lines } = capture();
    const server = await startTestServer('redis', { postgresUrl: url('right') }, { logger });
    cleanups.push(() => server.stop());
    expect((await readyz(server)).status).toBe(200);

    await rotate(postgres, 'rotated');
    await until('/readyz 503', async () => (await readyz(server)).status === 503);
    await sleep(tenProbesMs);
    const refused = matching(lines, /^offline store.*authentication failed/);
    expect(refused, JSON.stringify(lines, null, 1)).toHaveLength(1);
    expect(refused[0]).toMatchObject({ reason: 'authentication failed' });
    expect(refused[0]?.level).toBeGreaterThanOrEqual(40);
    expect((await readyz(server)).body).toEqual({
      ready: false,
      checks: { onlineStore: true, offlineStore: false, registry: true },
      reasons: { offlineStore: 'authentication failed' },
    });
    // gRPC health follows the online store only.
    expect(await checkHealth(server.address)).toBe('SERVING');

    await admin(postgres, [`ALTER ROLE ${role} PASSWORD 'right'`]);
    await until('/readyz 200', async () => (await readyz(server)).status === 200);
    await sleep(tenProbesMs / 2);
    expect(matching(lines, /^offline store.*answers again/)).toHaveLength(1);
    expect(matching(lines, /^offline store.*authentication failed/)).toHaveLength(1);
  }, 60_000);

  it('names refused authentication at start once while it waits for the registry', async () => {
    const { postgres, url } = await passwordProtected();
    await rotate(postgres, 'not-yet');
    const { logger, lines } = capture();
    const starting = startTestServer('redis', { postgresUrl: url('right') }, { logger });
    // Attempts 200, 400, 800, 1600 ms apart: four or more within 3.5 s.
    await sleep(3_500);
    const waiting = matching(lines, /^registry database unavailable/);
    expect(waiting, JSON.stringify(lines, null, 1)).toHaveLength(1);
    expect(waiting[0]?.msg).toMatch(/authentication failed/);
    expect(waiting[0]).toMatchObject({ reason: 'authentication failed' });

    await admin(postgres, [`ALTER ROLE ${role} PASSWORD 'right'`]);
    const server = await starting;
    cleanups.push(() => server.stop());
    expect((await readyz(server)).status).toBe(200);
  }, 60_000);

  it('names a missing password (pg refuses SCRAM without one) as refused authentication at start', async () => {
    const { postgres, url } = await passwordProtected();
    const { logger, lines } = capture();
    const starting = startTestServer('redis', { postgresUrl: url() }, { logger });
    await sleep(1_600);
    const waiting = matching(lines, /^registry database unavailable/);
    expect(waiting, JSON.stringify(lines, null, 1)).toHaveLength(1);
    expect(waiting[0]).toMatchObject({ reason: 'authentication failed' });

    // The operator lets the role in without a password: the start completes.
    const hba = join(postgres.dataDir, 'pg_hba.conf');
    await writeFile(hba, `host all ${role} 127.0.0.1/32 trust\n${await readFile(hba, 'utf8')}`);
    await admin(postgres, ['SELECT pg_reload_conf()']);
    const server = await starting;
    cleanups.push(() => server.stop());
    expect((await readyz(server)).status).toBe(200);
    expect(matching(lines, /^registry database connected/)).toHaveLength(1);
  }, 60_000);
});
