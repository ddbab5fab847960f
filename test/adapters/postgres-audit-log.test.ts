import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type AuditLogLogger,
  createPostgresAuditLog,
  type PostgresAuditLogOptionsInput,
} from '../../src/adapters/postgres/postgres-audit-log.js';
import { type AuditEventInput, type AuditLog, auditEventsDroppedRpc } from '../../src/ports/audit-log.js';
import { requireEnvironment } from '../support/environment.js';
import { failure } from '../support/rejection.js';
import { startThrowawayPostgres, type ThrowawayPostgres } from '../support/throwaway-postgres.js';

const connectionString = requireEnvironment('FSTORE_TEST_POSTGRES_URL');

// Every test file works in its own schema and drops it at the end (see afterAll).
const schema = `fstore_test_${randomBytes(6).toString('hex')}`;
const table = `"${schema}".audit_events`;

const open: AuditLog[] = [];
async function openLog(overrides: Partial<PostgresAuditLogOptionsInput> = {}): Promise<AuditLog> {
  const log = await createPostgresAuditLog({ connectionString, schema, ...overrides });
  open.push(log);
  return log;
}

/** A logger that keeps what it is told. */
function recordingLogger() {
  const lines: { level: 'warn' | 'error'; details: Record<string, unknown>; message: string }[] = [];
  const logger: AuditLogLogger = {
    warn: (details, message) => lines.push({ level: 'warn', details, message }),
    error: (details, message) => lines.push({ level: 'error', details, message }),
  };
  return { logger, lines };
}

let log: AuditLog;
let admin: pg.Client;
let counter = 0;
/** Tests share the schema but not projects, so they cannot see each other's events. */
const newProject = () => `p${Date.now().toString(36)}_${counter++}`;

const event = (overrides: Partial<AuditEventInput> = {}): AuditEventInput => ({
  principal: 'key:k1',
  rpc: 'fstore.v1.FeatureService/WriteOnlineFeatures',
  project: 'fraud',
  object: 'user_stats',
  outcome: 'OK',
  rows: 0,
  requestId: 'r',
  ...overrides,
});

beforeAll(async () => {
  log = await openLog();
  admin = new pg.Client({ connectionString });
  await admin.connect();
});

afterAll(async () => {
  await Promise.all(open.map((each) => each.close()));
  await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await admin.end();
});

/** Rows of a project straight from the table, with the number of INSERTs that wrote them. */
async function countWrites(project: string): Promise<{ rows: number; inserts: number }> {
  // Each INSERT is its own transaction, so distinct xmin = number of INSERT statements.
  const result = await admin.query<{ rows: string; inserts: string }>(
    `SELECT count(*)::text AS rows, count(DISTINCT xmin::text)::text AS inserts FROM ${table} WHERE project = $1`,
    [project],
  );
  const row = result.rows[0];
  return { rows: Number(row?.rows), inserts: Number(row?.inserts) };
}

describe('record, flush and list', () => {
  it('returns recorded events newest first with every field', async () => {
    const project = newProject();
    const before = Date.now() * 1000;
    log.record(
      event({ project, requestId: 'a', rows: 12, outcome: 'OK', timeMicros: 1_700_000_000_123_456 }),
    );
    log.record(
      event({
        project,
        requestId: 'b',
        principal: 'jwt:alice',
        rpc: 'fstore.v1.RegistryService/ApplyFeatureView',
        object: 'user_stats',
        outcome: 'INVALID_ARGUMENT',
      }),
    );
    await log.flush();
    const after = Date.now() * 1000;
    const events = await log.list({ projects: [project], limit: 10 });
    expect(events).toHaveLength(2);
    const [newest, oldest] = events;
    expect(oldest).toEqual({
      id: expect.any(Number),
      principal: 'key:k1',
      rpc: 'fstore.v1.FeatureService/WriteOnlineFeatures',
      project,
      object: 'user_stats',
      outcome: 'OK',
      rows: 12,
      requestId: 'a',
      // Microseconds survive the round trip exactly.
      timeMicros: 1_700_000_000_123_456,
    });
    expect(newest).toMatchObject({
      principal: 'jwt:alice',
      rpc: 'fstore.v1.RegistryService/ApplyFeatureView',
      project,
      outcome: 'INVALID_ARGUMENT',
      rows: 0,
      requestId: 'b',
    });
    expect(newest?.id).toBeGreaterThan(oldest?.id ?? Number.POSITIVE_INFINITY);
    // Without a time: when it was recorded.
    expect(newest?.timeMicros).toBeGreaterThanOrEqual(before);
    expect(newest?.timeMicros).toBeLessThanOrEqual(after);
  });

  it('writes by itself after the flush interval, without flush()', async () => {
    const later = await openLog({ flushIntervalMs: 500 });
    const project = newProject();
    const recorded = Date.now();
    later.record(event({ project }));
    // Queued, not yet written: record() only queues.
    expect(await log.list({ projects: [project], limit: 10 })).toEqual([]);
    const deadline = Date.now() + 5_000;
    while ((await log.list({ projects: [project], limit: 10 })).length === 0) {
      if (Date.now() > deadline) throw new Error('the event was not written within 5 s');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(Date.now() - recorded).toBeGreaterThanOrEqual(400);
  });

  it('cuts over-long strings and removes NUL characters', async () => {
    const project = newProject();
    log.record(
      event({
        project,
        principal: `jwt:${'x'.repeat(2_000)}`,
        // A surrogate pair straddling the limit is not split.
        object: `${'o'.repeat(511)}😀tail`,
        requestId: 'a\u0000b',
        rows: Number.NaN,
      }),
    );
    await log.flush();
    const [stored] = await log.list({ projects: [project], limit: 1 });
    expect(stored?.principal).toBe(`jwt:${'x'.repeat(508)}`);
    expect(stored?.object).toBe('o'.repeat(511));
    expect(stored?.requestId).toBe('ab');
    expect(stored?.rows).toBe(0);
  });

  it('flush() with nothing queued resolves at once', async () => {
    await log.flush();
    await log.flush();
  });
});

describe('filters', () => {
  const a = newProject();
  const b = newProject();
  const c = newProject();
  const base = 1_800_000_000_000_000;
  beforeAll(async () => {
    // 30 events: project cycles a/b/c, principal alternates, time increases by one second each.
    for (let index = 0; index < 30; index += 1)
      log.record(
        event({
          project: [a, b, c][index % 3],
          principal: index % 2 === 0 ? 'key:even' : 'jwt:odd',
          rpc:
            index % 5 === 0
              ? 'fstore.v1.RegistryService/ApplyFeatureView'
              : 'fstore.v1.FeatureService/WriteOnlineFeatures',
          requestId: `r${index}`,
          timeMicros: base + index * 1_000_000,
        }),
      );
    await log.flush();
  });
  const ids = (events: { requestId: string }[]) => events.map((each) => Number(each.requestId.slice(1)));
  const mine = [a, b, c];

  it('by projects', async () => {
    expect(ids(await log.list({ projects: [a], limit: 100 }))).toEqual([27, 24, 21, 18, 15, 12, 9, 6, 3, 0]);
    expect(ids(await log.list({ projects: [a, c], limit: 100 }))).toHaveLength(20);
    expect(await log.list({ projects: [], limit: 100 })).toEqual([]);
    expect(await log.list({ projects: ['no_such_project'], limit: 100 })).toEqual([]);
    // undefined: every project, this file's other events included.
    expect((await log.list({ limit: 10_000 })).length).toBeGreaterThanOrEqual(30);
  });

  it('by principal', async () => {
    expect(ids(await log.list({ projects: mine, principal: 'jwt:odd', limit: 100 }))).toEqual([
      29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
    ]);
    expect(await log.list({ projects: mine, principal: 'key:nobody', limit: 100 })).toEqual([]);
  });

  it('by rpc, full name or method name', async () => {
    const applied = [25, 20, 15, 10, 5, 0];
    expect(
      ids(await log.list({ projects: mine, rpc: 'fstore.v1.RegistryService/ApplyFeatureView', limit: 100 })),
    ).toEqual(applied);
    expect(ids(await log.list({ projects: mine, rpc: 'ApplyFeatureView', limit: 100 }))).toEqual(applied);
    expect(await log.list({ projects: mine, rpc: 'FeatureView', limit: 100 })).toEqual([]);
    expect(await log.list({ projects: mine, rpc: 'fstore.v1.RegistryService/Other', limit: 100 })).toEqual(
      [],
    );
  });

  it('by time range, start inclusive and end exclusive', async () => {
    const range = { startMicros: base + 10 * 1_000_000, endMicros: base + 14 * 1_000_000 };
    expect(ids(await log.list({ projects: mine, ...range, limit: 100 }))).toEqual([13, 12, 11, 10]);
    expect(ids(await log.list({ projects: mine, startMicros: base + 27_000_000, limit: 100 }))).toEqual([
      29, 28, 27,
    ]);
    expect(ids(await log.list({ projects: mine, endMicros: base + 2_000_000, limit: 100 }))).toEqual([1, 0]);
  });

  it('combines filters, limits and pages with beforeId', async () => {
    const filter = { projects: [a, b], principal: 'key:even', limit: 3 };
    const first = await log.list(filter);
    expect(ids(first)).toEqual([28, 24, 22]);
    const second = await log.list({ ...filter, beforeId: first.at(-1)?.id });
    expect(ids(second)).toEqual([18, 16, 12]);
    const rest = await log.list({ ...filter, limit: 100, beforeId: second.at(-1)?.id });
    expect(ids(rest)).toEqual([10, 6, 4, 0]);
  });

  it('refuses a bad limit or bound', async () => {
    for (const limit of [0, -1, 1.5, 10_001, Number.NaN])
      expect((await failure(log.list({ limit }))).code, String(limit)).toBe('invalid_argument');
    expect((await failure(log.list({ limit: 1, beforeId: 0 }))).message).toMatch(/^beforeId: /);
    expect((await failure(log.list({ limit: 1, startMicros: 0.5 }))).message).toMatch(/^startMicros: /);
  });
});

describe('append-only', () => {
  it('PostgreSQL refuses UPDATE, DELETE and TRUNCATE', async () => {
    const project = newProject();
    log.record(event({ project }));
    await log.flush();
    const statements = [
      `UPDATE ${table} SET outcome = 'OK' WHERE project = '${project}'`,
      `DELETE FROM ${table} WHERE project = '${project}'`,
      // Even an attempt that would change nothing.
      `DELETE FROM ${table} WHERE false`,
      `TRUNCATE ${table}`,
    ];
    for (const statement of statements)
      await expect(admin.query(statement), statement).rejects.toThrow(/audit_events is append-only/);
    expect(await countWrites(project)).toMatchObject({ rows: 1 });
    // Inserting is what it is for.
    await admin.query(
      `INSERT INTO ${table} (time, principal, rpc, project, object, outcome, rows, request_id)
         VALUES (now(), 'anonymous', 'x/Y', $1, '', 'OK', 0, '')`,
      [project],
    );
    expect(await countWrites(project)).toMatchObject({ rows: 2 });
  });
});

describe('batching', () => {
  it('writes 5,000 events recorded at once in a few multi-row INSERTs, in order', async () => {
    const project = newProject();
    for (let index = 0; index < 5_000; index += 1)
      log.record(event({ project, requestId: String(index), rows: index }));
    await log.flush();
    const { rows, inserts } = await countWrites(project);
    expect(rows).toBe(5_000);
    // 500 per INSERT: 10, give or take the interval timer splitting one.
    expect(inserts).toBeLessThanOrEqual(12);
    const events = await log.list({ projects: [project], limit: 5_000 });
    expect(events.map((each) => Number(each.requestId))).toEqual(
      Array.from({ length: 5_000 }, (_, index) => 4_999 - index),
    );
    expect(events.every((each) => each.rows === Number(each.requestId))).toBe(true);
  });

  it('gathers events recorded over time into one INSERT per interval', async () => {
    const slow = await openLog({ flushIntervalMs: 1_000 });
    const project = newProject();
    for (let index = 0; index < 20; index += 1) {
      slow.record(event({ project, requestId: String(index) }));
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await slow.flush();
    const { rows, inserts } = await countWrites(project);
    expect(rows).toBe(20);
    expect(inserts).toBeLessThanOrEqual(2);
  });

  it('drops events beyond a full queue, logs the count and records the gap', async () => {
    const { logger, lines } = recordingLogger();
    const small = await openLog({ maxQueuedEvents: 3, batchSize: 10, flushIntervalMs: 60_000, logger });
    const project = newProject();
    for (let index = 0; index < 5; index += 1) small.record(event({ project, requestId: String(index) }));
    expect(lines.filter((line) => line.level === 'error')).toHaveLength(1);
    expect(lines[0]?.message).toMatch(/dropped 1 audit events: the queue holds its maximum of 3 events/);
    await small.flush();
    // The marker is queued by the successful write; a second flush writes it.
    await small.flush();
    const events = await small.list({ projects: [project], limit: 10 });
    expect(events.map((each) => each.requestId)).toEqual(['2', '1', '0']);
    const [marker] = await small.list({ rpc: auditEventsDroppedRpc, principal: 'fstore', limit: 1 });
    expect(marker).toMatchObject({ rpc: auditEventsDroppedRpc, outcome: 'RESOURCE_EXHAUSTED', rows: 2 });
    expect(lines.at(-1)).toMatchObject({ level: 'error', details: { dropped: 1 } });
  });
});

describe('close', () => {
  it('writes what is queued, then refuses and reports later events', async () => {
    const { logger, lines } = recordingLogger();
    const closing = await createPostgresAuditLog({
      connectionString,
      schema,
      flushIntervalMs: 60_000,
      logger,
    });
    const project = newProject();
    for (let index = 0; index < 7; index += 1) closing.record(event({ project }));
    await closing.close();
    expect(await countWrites(project)).toEqual({ rows: 7, inserts: 1 });
    await closing.close();
    closing.record(event({ project }));
    expect(lines).toMatchObject([{ level: 'error', message: expect.stringMatching(/audit log is closed/) }]);
    expect(await countWrites(project)).toMatchObject({ rows: 7 });
  });

  it('refuses bad options', async () => {
    const error = await failure(createPostgresAuditLog({ connectionString, schema, batchSize: 0 }));
    expect(error.code).toBe('invalid_argument');
    expect(error.message).toMatch(/^audit log option batchSize: /);
  });
});

describe('PostgreSQL outage', () => {
  // Stops and restarts PostgreSQL, so it runs a server of its own instead of the shared one.
  let server: ThrowawayPostgres;
  beforeAll(async () => {
    server = await startThrowawayPostgres();
  });
  afterAll(async () => {
    await server?.destroy();
  });

  it('keeps events while PostgreSQL is down, flush rejects unavailable, and writes them once it is back', async () => {
    const { logger, lines } = recordingLogger();
    const outage = await createPostgresAuditLog({
      connectionString: server.connectionString,
      schema: 'fstore',
      connectTimeoutMs: 1_000,
      flushTimeoutMs: 1_000,
      retryInitialDelayMs: 20,
      retryMaxDelayMs: 200,
      logger,
    });
    open.push(outage);
    outage.record(event({ requestId: 'before' }));
    await outage.flush();

    await server.stop();
    for (let index = 0; index < 3; index += 1) outage.record(event({ requestId: `during${index}` }));
    const started = Date.now();
    const error = await failure(outage.flush());
    expect(error.code).toBe('unavailable');
    expect(error.message).toMatch(/^audit log: 3 events are not written after 1000 ms \(audit log database/);
    expect(Date.now() - started).toBeLessThan(3_000);
    // One warning for the outage, however many retries (the pool's own warnings aside).
    const own = () => lines.filter((line) => line.message.startsWith('audit log: '));
    expect(own()).toMatchObject([{ level: 'warn', message: expect.stringMatching(/stay queued/) }]);

    await server.start();
    // The background retries write them without being asked.
    const deadline = Date.now() + 10_000;
    let events = await outage.list({ limit: 10 }).catch(() => []);
    while (events.length < 4) {
      if (Date.now() > deadline)
        throw new Error(`only ${events.length} of 4 events written 10 s after restart`);
      await new Promise((resolve) => setTimeout(resolve, 50));
      events = await outage.list({ limit: 10 }).catch(() => []);
    }
    await outage.flush();
    // Each exactly once, in the order recorded.
    expect(events.map((each) => each.requestId)).toEqual(['during2', 'during1', 'during0', 'before']);
    expect(own().at(-1)).toMatchObject({ level: 'warn', message: expect.stringMatching(/works again/) });
  });
});
