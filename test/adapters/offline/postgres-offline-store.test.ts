import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createPostgresOfflineStore,
  type PostgresOfflineStore,
} from '../../../src/adapters/postgres/offline/postgres-offline-store.js';
import {
  type FeatureDefinition,
  type FeatureValue,
  type FeatureView,
  type JoinKey,
  type KeyValue,
  type ValueType,
  valueTypes,
} from '../../../src/domain/model.js';
import type { OfflineRowBatch } from '../../../src/ports/offline-store.js';
import { failure } from '../../support/rejection.js';

const connectionString = process.env.FSTORE_TEST_POSTGRES_URL;
if (!connectionString)
  throw new Error(
    'FSTORE_TEST_POSTGRES_URL is not set: start PostgreSQL with `bash scripts/servers.sh start-postgres` and export the variables printed by `bash scripts/servers.sh env`',
  );

// Every test file works in its own schema and drops it at the end (see afterAll).
const schema = `fstore_test_${randomBytes(6).toString('hex')}`;
const open: PostgresOfflineStore[] = [];
let store: PostgresOfflineStore;
let sql: pg.Client;

async function openStore(): Promise<PostgresOfflineStore> {
  const created = await createPostgresOfflineStore({ connectionString: connectionString as string, schema });
  open.push(created);
  return created;
}

beforeAll(async () => {
  store = await openStore();
  sql = new pg.Client({ connectionString });
  await sql.connect();
});

afterAll(async () => {
  await Promise.all(open.map((each) => each.close()));
  await sql?.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await sql?.end();
});

let nextViewId = 1;
const feature = (name: string, type: ValueType): FeatureDefinition => ({
  name,
  type,
  description: '',
  tags: {},
});
const userKey: JoinKey = { name: 'user_id', type: 'int64' };

function makeView(features: FeatureDefinition[], overrides: Partial<FeatureView> = {}): FeatureView {
  return {
    id: nextViewId++,
    project: 'p',
    name: 'v',
    version: 1,
    createdAt: new Date(0),
    entities: ['user'],
    joinKeys: [userKey],
    features,
    ttlMs: 0,
    online: true,
    source: 'batch',
    owner: '',
    description: '',
    tags: {},
    ...overrides,
  };
}

/** A batch from row objects (tests think in rows; the port is column-major). */
function batchOf(
  view: FeatureView,
  rows: { keys: KeyValue[]; event: number; created?: number; values: FeatureValue[] }[],
): OfflineRowBatch {
  return {
    view,
    keys: view.joinKeys.map((_, index) => rows.map((row) => row.keys[index] as KeyValue)),
    eventTimes: rows.map((row) => row.event),
    createdTimes: rows.map((row) => row.created ?? row.event),
    values: view.features.map((_, index) => rows.map((row) => row.values[index] ?? null)),
  };
}

const micros = (column: string) => `(EXTRACT(EPOCH FROM ${column}) * 1000000)::bigint::text`;
const tableOf = (view: FeatureView) => `"${schema}".offline_view_${view.id}`;

async function rowCount(view: FeatureView): Promise<number> {
  const result = await sql.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${tableOf(view)}`);
  return Number(result.rows[0]?.n);
}

async function partitionsOf(view: FeatureView): Promise<string[]> {
  const result = await sql.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = to_regclass($1) ORDER BY 1`,
    [tableOf(view)],
  );
  return result.rows.map((row) => row.name);
}

const utc = (iso: string) => Date.parse(iso) * 1_000;

describe('ensureView', () => {
  it('creates the table and mapping lazily, partitions only on write, and is idempotent', async () => {
    const view = makeView([feature('clicks', 'int64'), feature('ctr', 'double')]);
    expect((await sql.query('SELECT to_regclass($1) AS t', [tableOf(view)])).rows[0].t).toBeNull();
    await store.ensureView(view);
    await store.ensureView(view);
    await (await openStore()).ensureView(view);
    expect(await partitionsOf(view)).toEqual([]);
    const columns = await sql.query(
      `SELECT role, name, column_name, value_type FROM "${schema}".offline_columns WHERE view_id = $1 ORDER BY role, name`,
      [view.id],
    );
    expect(columns.rows).toEqual([
      { role: 'feature', name: 'clicks', column_name: 'f_clicks', value_type: 'int64' },
      { role: 'feature', name: 'ctr', column_name: 'f_ctr', value_type: 'double' },
      { role: 'key', name: 'user_id', column_name: 'k_user_id', value_type: 'int64' },
    ]);
    const indexes = await sql.query<{ indexdef: string }>(
      'SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = $2 ORDER BY indexname',
      [schema, `offline_view_${view.id}`],
    );
    expect(indexes.rows.map((row) => row.indexdef.replace(/^.* USING /, ''))).toEqual([
      'btree (k_user_id, event_time DESC, created_time DESC)',
      'btree (event_time)',
    ]);
  });

  it('lets two store instances ensure and write the same new view at once', async () => {
    const view = makeView([feature('x', 'double')]);
    const [first, second] = [await openStore(), await openStore()];
    const write = async (each: PostgresOfflineStore, offset: number) => {
      await each.ensureView(view);
      return each.writeRows([
        batchOf(
          view,
          Array.from({ length: 500 }, (_, index) => ({
            keys: [BigInt(index + offset)],
            event: utc('2024-01-15T00:00:00Z') + index * 86_400_000_000,
            values: [index],
          })),
        ),
      ]);
    };
    const results = await Promise.all([write(first, 0), write(second, 1_000), write(store, 2_000)]);
    expect(results).toEqual([{ rows: 500 }, { rows: 500 }, { rows: 500 }]);
    expect(await rowCount(view)).toBe(1_500);
    expect((await partitionsOf(view)).length).toBe(17); // 2024-01 .. 2025-05
  });

  it('writes into a month another writer attached after its own transaction began writing the view', async () => {
    const view = makeView([feature('x', 'double')]);
    // January exists before: the slow writer below then holds no lock that stops others adding a
    // month (a writer that adds a month itself makes others adding months wait for its commit).
    await store.writeRows([batchOf(view, [{ keys: [0n], event: utc('2024-01-01T00:00:00Z'), values: [0] }])]);
    const other = await openStore();
    let release = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let firstWritten = () => {};
    const firstDone = new Promise<void>((resolve) => {
      firstWritten = resolve;
    });
    async function* batches() {
      yield batchOf(view, [{ keys: [1n], event: utc('2024-01-10T00:00:00Z'), values: [1] }]);
      firstWritten();
      await gate;
      yield batchOf(view, [{ keys: [2n], event: utc('2024-02-10T00:00:00Z'), values: [2] }]);
    }
    const slow = store.writeRows(batches());
    await firstDone;
    // Give the first COPY time to run (the generator resumes only after it).
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(
      await other.writeRows([
        batchOf(view, [{ keys: [3n], event: utc('2024-02-11T00:00:00Z'), values: [3] }]),
      ]),
    ).toEqual({ rows: 1 });
    release();
    expect(await slow).toEqual({ rows: 2 });
    expect(await rowCount(view)).toBe(4);
  });

  it('writes without an ensureView first (the write creates the storage)', async () => {
    const view = makeView([feature('x', 'double')]);
    expect(await store.writeRows([batchOf(view, [{ keys: [1n], event: 0, values: [1.5] }])])).toEqual({
      rows: 1,
    });
    expect(await rowCount(view)).toBe(1);
  });
});

describe('writeRows round trip', () => {
  it('stores every value type exactly, with nulls, lists, odd bytes and strings, big int64s and pre-1970 times', async () => {
    const types: readonly ValueType[] = valueTypes;
    const view = makeView(
      types.map((type) => feature(`v_${type}`, type)),
      {
        entities: ['store'],
        joinKeys: [
          { name: 'country', type: 'string' },
          { name: 'store_id', type: 'int64' },
        ],
      },
    );
    const oddBytes = new Uint8Array([0, 9, 10, 13, 92, 0x5c, 0x80, 0xff, 0x22, 0x2c, 0x7b]);
    const oddString = 'tab\there\nnew line \\ back\\\\slash "quoted" {a,b} NULL \\N é 日本 😀';
    const full: FeatureValue[] = [
      2n ** 63n - 1n,
      0.1,
      Math.fround(1.1),
      oddString,
      true,
      oddBytes,
      -1,
      [-(2n ** 63n), 2n ** 53n + 1n, 0n],
      [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, -0, 5e-324, 1.7976931348623157e308],
      [Math.fround(3.3), -0],
      ['', 'a,b', '{x}', '"', '\\', 'NULL', oddString],
      [true, false],
      [new Uint8Array(0), oddBytes],
    ];
    const rows = [
      // 1 µs before the epoch.
      { keys: ['de\tx', 2n ** 62n + 7n], event: -1, created: 1, values: full },
      { keys: ['', -(2n ** 63n)], event: 1_700_000_000_123_457, created: 1_700_000_000_123_458, values: [] },
      {
        keys: ['日本', 0n],
        event: utc('1899-12-31T23:59:59.999Z') + 999,
        values: [
          -(2n ** 63n),
          -0,
          0,
          '',
          false,
          new Uint8Array(0),
          utc('1700-01-01T00:00:00Z') + 1,
          [],
          [],
          [],
          [],
          [],
          [],
        ],
      },
      { keys: ['max', 1n], event: Number.MAX_SAFE_INTEGER, created: -Number.MAX_SAFE_INTEGER, values: [] },
    ];
    await store.ensureView(view);
    expect(await store.writeRows([batchOf(view, rows)])).toEqual({ rows: 4 });

    const columns = types.map((type) =>
      type === 'int64'
        ? 'f_v_int64::text'
        : type === 'timestamp'
          ? `${micros('f_v_timestamp')} AS f_v_timestamp`
          : type === 'int64_list'
            ? 'f_v_int64_list::text[]'
            : `f_v_${type}`,
    );
    const result = await sql.query(
      `SELECT k_country, k_store_id::text, ${micros('event_time')} AS event, ${micros('created_time')} AS created,
              view_version, ${columns.join(', ')}
       FROM ${tableOf(view)} ORDER BY k_store_id`,
    );
    const byKey = new Map(result.rows.map((row) => [row.k_store_id as string, row]));
    const stored = byKey.get(String(2n ** 62n + 7n));
    expect(stored).toMatchObject({ k_country: 'de\tx', event: '-1', created: '1', view_version: 1 });
    expect(stored.f_v_int64).toBe(String(2n ** 63n - 1n));
    expect(stored.f_v_double).toBe(0.1);
    expect(Math.fround(stored.f_v_float)).toBe(Math.fround(1.1));
    expect(stored.f_v_string).toBe(oddString);
    expect(stored.f_v_bool).toBe(true);
    expect(new Uint8Array(stored.f_v_bytes)).toEqual(oddBytes);
    expect(stored.f_v_timestamp).toBe('-1');
    expect(stored.f_v_int64_list).toEqual([String(-(2n ** 63n)), String(2n ** 53n + 1n), '0']);
    const doubles = stored.f_v_double_list as number[];
    expect(doubles.map((value) => (Object.is(value, -0) ? '-0' : String(value)))).toEqual([
      'NaN',
      'Infinity',
      '-Infinity',
      '-0',
      '5e-324',
      '1.7976931348623157e+308',
    ]);
    expect((stored.f_v_float_list as number[]).map((value) => Math.fround(value))).toEqual([
      Math.fround(3.3),
      -0,
    ]);
    expect(Object.is(stored.f_v_float_list[1], -0)).toBe(true);
    expect(stored.f_v_string_list).toEqual(['', 'a,b', '{x}', '"', '\\', 'NULL', oddString]);
    expect(stored.f_v_bool_list).toEqual([true, false]);
    expect((stored.f_v_bytes_list as Buffer[]).map((value) => new Uint8Array(value))).toEqual([
      new Uint8Array(0),
      oddBytes,
    ]);

    const nulls = byKey.get(String(-(2n ** 63n)));
    expect(nulls).toMatchObject({ k_country: '', event: '1700000000123457', created: '1700000000123458' });
    for (const type of types) expect(nulls[`f_v_${type}`], type).toBeNull();

    const empties = byKey.get('0');
    expect(empties.event).toBe(String(utc('1899-12-31T23:59:59.999Z') + 999));
    expect(empties.f_v_int64).toBe(String(-(2n ** 63n)));
    expect(Object.is(empties.f_v_double, -0)).toBe(true);
    expect(empties.f_v_timestamp).toBe(String(utc('1700-01-01T00:00:00Z') + 1));
    for (const type of types.filter((each) => each.endsWith('_list')))
      expect(empties[`f_v_${type}`], type).toEqual([]);

    const extreme = byKey.get('1');
    expect(extreme).toMatchObject({
      event: String(Number.MAX_SAFE_INTEGER),
      created: String(-Number.MAX_SAFE_INTEGER),
    });

    // The same rows back through readLatest (binary fetch, batches of 2): every value exact.
    const normalize = (value: unknown): unknown =>
      value instanceof Uint8Array ? [...value] : Array.isArray(value) ? value.map(normalize) : value;
    const rowsOf = (batch: OfflineRowBatch) =>
      batch.eventTimes.map((eventTime, row) => ({
        keys: batch.keys.map((column) => column[row]),
        eventTime,
        createdTime: batch.createdTimes[row],
        values: batch.values.map((column) => normalize(column[row])),
      }));
    const read: ReturnType<typeof rowsOf> = [];
    for await (const batch of store.readLatest(
      view,
      { startMicros: -3e15, endMicros: 2 ** 53 },
      { batchRows: 2 },
    ))
      read.push(...rowsOf(batch));
    const byStore = (list: ReturnType<typeof rowsOf>) =>
      [...list].sort((a, b) => (String(a.keys[1]) < String(b.keys[1]) ? -1 : 1));
    expect(byStore(read)).toEqual(byStore(rowsOf(batchOf(view, rows))));
  });

  it('routes rows spanning several months to their month partitions, exactly at the boundaries', async () => {
    const view = makeView([feature('x', 'int64')]);
    const february = utc('2024-02-01T00:00:00Z');
    const rows = [
      { event: february - 1, expected: 'p202401' },
      { event: february, expected: 'p202402' },
      { event: utc('2024-02-29T23:59:59.999Z') + 999, expected: 'p202402' },
      { event: utc('2024-03-01T00:00:00Z'), expected: 'p202403' },
      { event: utc('1969-12-31T23:59:59.999Z'), expected: 'p196912' },
      { event: utc('2024-07-04T12:00:00Z'), expected: 'p202407' },
    ];
    await store.writeRows([
      batchOf(
        view,
        rows
          .slice(0, 3)
          .map((row, index) => ({ keys: [BigInt(index)], event: row.event, values: [BigInt(index)] })),
      ),
      batchOf(
        view,
        rows.slice(3).map((row, index) => ({
          keys: [BigInt(index + 3)],
          event: row.event,
          values: [BigInt(index + 3)],
        })),
      ),
    ]);
    const result = await sql.query<{ partition: string; x: string }>(
      `SELECT tableoid::regclass::text AS partition, f_x::text AS x FROM ${tableOf(view)} ORDER BY f_x`,
    );
    expect(result.rows.map((row) => row.partition.replace(/^.*_/, ''))).toEqual(
      rows.map((row) => row.expected),
    );
    expect(await partitionsOf(view)).toEqual(
      ['p196912', 'p202401', 'p202402', 'p202403', 'p202407'].map(
        (suffix) => `offline_view_${view.id}_${suffix}`,
      ),
    );
    // No default partition: every row is in a real month.
    const defaults = await sql.query(
      `SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass($1) AND partdefid <> 0`,
      [tableOf(view)],
    );
    expect(defaults.rows).toEqual([]);
  });
});

describe('schema changes', () => {
  it('adds a column for a new feature and a new column for a forced type change; old rows stay readable', async () => {
    const v1 = makeView([feature('clicks', 'int64'), feature('score', 'double')]);
    const v2: FeatureView = { ...v1, version: 2, features: [...v1.features, feature('country', 'string')] };
    const v3: FeatureView = {
      ...v1,
      version: 3,
      features: [feature('clicks', 'string'), feature('score', 'double'), feature('country', 'string')],
    };
    const january = utc('2024-01-10T00:00:00Z');
    await store.ensureView(v1);
    await store.writeRows([batchOf(v1, [{ keys: [1n], event: january, values: [5n, 0.5] }])]);
    await store.ensureView(v2);
    await store.writeRows([batchOf(v2, [{ keys: [2n], event: january, values: [6n, 0.6, 'fr'] }])]);
    await store.ensureView(v3);
    await store.writeRows([batchOf(v3, [{ keys: [3n], event: january, values: ['seven', 0.7, 'de'] }])]);

    const mapping = await sql.query(
      `SELECT version, name, column_name, value_type FROM "${schema}".offline_columns
       WHERE view_id = $1 AND role = 'feature' ORDER BY version, name`,
      [v1.id],
    );
    expect(mapping.rows).toEqual([
      { version: 1, name: 'clicks', column_name: 'f_clicks', value_type: 'int64' },
      { version: 1, name: 'score', column_name: 'f_score', value_type: 'double' },
      { version: 2, name: 'clicks', column_name: 'f_clicks', value_type: 'int64' },
      { version: 2, name: 'country', column_name: 'f_country', value_type: 'string' },
      { version: 2, name: 'score', column_name: 'f_score', value_type: 'double' },
      { version: 3, name: 'clicks', column_name: 'f_clicks__v3', value_type: 'string' },
      { version: 3, name: 'country', column_name: 'f_country', value_type: 'string' },
      { version: 3, name: 'score', column_name: 'f_score', value_type: 'double' },
    ]);
    const rows = await sql.query(
      `SELECT view_version, f_clicks::text AS clicks, f_score AS score, f_country AS country, f_clicks__v3 AS clicks_v3
       FROM ${tableOf(v1)} ORDER BY view_version`,
    );
    expect(rows.rows).toEqual([
      { view_version: 1, clicks: '5', score: 0.5, country: null, clicks_v3: null },
      { view_version: 2, clicks: '6', score: 0.6, country: 'fr', clicks_v3: null },
      { view_version: 3, clicks: null, score: 0.7, country: 'de', clicks_v3: 'seven' },
    ]);
    // The new column reached the partition created before it.
    const partitionColumns = await sql.query<{ column_name: string }>(
      `SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2`,
      [schema, `offline_view_${v1.id}_p202401`],
    );
    expect(partitionColumns.rows.map((row) => row.column_name)).toEqual(
      expect.arrayContaining(['f_country', 'f_clicks__v3']),
    );
  });

  it('gives a changed join key type its own column and index', async () => {
    const v1 = makeView([feature('x', 'double')]);
    const v2: FeatureView = { ...v1, version: 2, joinKeys: [{ name: 'user_id', type: 'string' }] };
    await store.writeRows([batchOf(v1, [{ keys: [1n], event: 0, values: [1] }])]);
    await store.writeRows([batchOf(v2, [{ keys: ['u1'], event: 0, values: [2] }])]);
    const rows = await sql.query(
      `SELECT k_user_id::text AS old, k_user_id__v2 AS new, f_x AS x FROM ${tableOf(v1)} ORDER BY f_x`,
    );
    expect(rows.rows).toEqual([
      { old: '1', new: null, x: 1 },
      { old: null, new: 'u1', x: 2 },
    ]);
    const indexes = await sql.query(
      'SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = $2',
      [schema, `offline_view_${v1.id}`],
    );
    expect(indexes.rows.map((row) => row.indexname).sort()).toEqual([
      `offline_view_${v1.id}_pit_v1_idx`,
      `offline_view_${v1.id}_pit_v2_idx`,
      `offline_view_${v1.id}_time_idx`,
    ]);
  });
});

describe('readLatest', () => {
  const collect = async (view: FeatureView, startMicros: number, endMicros: number, batchRows: number) => {
    const batches: OfflineRowBatch[] = [];
    for await (const batch of store.readLatest(view, { startMicros, endMicros }, { batchRows }))
      batches.push(batch);
    return batches;
  };
  const rowsOf = (batches: readonly OfflineRowBatch[]) =>
    batches
      .flatMap((batch) =>
        batch.eventTimes.map((eventTime, row) => ({
          key: batch.keys[0]?.[row],
          eventTime,
          createdTime: batch.createdTimes[row],
          values: batch.values.map((column) => column[row]),
        })),
      )
      .sort((a, b) => (String(a.key) < String(b.key) ? -1 : 1));

  it('reads the latest row per entity of [start, end) across months and versions, ties by created time', async () => {
    const v1 = makeView([feature('score', 'double')]);
    const v2: FeatureView = { ...v1, version: 2, features: [...v1.features, feature('label', 'string')] };
    const january = utc('2024-01-31T23:00:00Z');
    const february = utc('2024-02-01T01:00:00Z');
    await store.writeRows([
      batchOf(v1, [
        { keys: [1n], event: january, values: [1] },
        { keys: [1n], event: february, values: [2] }, // next month: the latest
        { keys: [2n], event: january, created: 10, values: [20] },
        { keys: [2n], event: january, created: 30, values: [30] }, // same event time, recorded later
        { keys: [2n], event: january, created: 20, values: [25] },
        { keys: [3n], event: february + 1_000_000, values: [3] }, // at the range's end: excluded
        { keys: [4n], event: january - 1, values: [4] }, // before the start: excluded
      ]),
    ]);
    await store.writeRows([batchOf(v2, [{ keys: [5n], event: february, values: [5, 'five'] }])]);

    const batches = await collect(v2, january, february + 1_000_000, 2);
    expect(batches.map((batch) => batch.eventTimes.length)).toEqual([2, 1]);
    expect(batches.every((batch) => batch.view === v2)).toBe(true);
    expect(rowsOf(batches)).toEqual([
      { key: 1n, eventTime: february, createdTime: february, values: [2, null] }, // v1 lacked label
      { key: 2n, eventTime: january, createdTime: 30, values: [30, null] },
      { key: 5n, eventTime: february, createdTime: february, values: [5, 'five'] },
    ]);
    expect(rowsOf(await collect(v2, february + 1_000_000, february + 2_000_000, 2))).toEqual([
      { key: 3n, eventTime: february + 1_000_000, createdTime: february + 1_000_000, values: [3, null] },
    ]);
    expect(await collect(v2, february + 2_000_000, february + 3_000_000, 2)).toEqual([]);
    // A view never written reads as nothing.
    expect(await collect(makeView([feature('x', 'double')]), 0, 2 ** 52, 10)).toEqual([]);
    await expect(collect(v2, 0.5, 1, 10)).rejects.toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('startMicros'),
    });
  });

  it('cancels its query when the reader stops early or its signal aborts, and serves the next call', async () => {
    const view = makeView([feature('x', 'double')]);
    const rows = 60_000;
    await store.writeRows([
      batchOf(
        view,
        Array.from({ length: rows }, (_, index) => ({
          keys: [BigInt(index)],
          event: utc('2024-03-01T00:00:00Z') + index,
          values: [index],
        })),
      ),
    ]);
    const activeCopies = async () => {
      const result = await sql.query(
        `SELECT pid FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid()
         AND query LIKE 'COPY (SELECT DISTINCT ON%' AND query LIKE $1`,
        [`%offline_view_${view.id} %`],
      );
      return result.rows.length;
    };
    const settled = async () => {
      const deadline = Date.now() + 5_000;
      while ((await activeCopies()) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      return activeCopies();
    };
    const range = { startMicros: 0, endMicros: 2 ** 52 };

    for await (const batch of store.readLatest(view, range, { batchRows: 100 })) {
      expect(batch.eventTimes).toHaveLength(100);
      break;
    }
    expect(await settled()).toBe(0);

    const controller = new AbortController();
    let taken = 0;
    const aborted = (async () => {
      for await (const batch of store.readLatest(view, range, {
        batchRows: 100,
        signal: controller.signal,
      })) {
        taken += batch.eventTimes.length;
        controller.abort(new Error('stop'));
      }
    })();
    await expect(aborted).rejects.toThrow('stop');
    expect(taken).toBe(100);
    expect(await settled()).toBe(0);

    const all = await collect(view, range.startMicros, range.endMicros, 25_000);
    expect(all.map((batch) => batch.eventTimes.length)).toEqual([25_000, 25_000, 10_000]);
  });
});

describe('atomicity', () => {
  const good = (view: FeatureView, from: number, count = 100) =>
    batchOf(
      view,
      Array.from({ length: count }, (_, index) => ({
        keys: [BigInt(from + index)],
        event: utc('2024-05-01T00:00:00Z') + (from + index) * 3_600_000_000,
        values: ['ok'],
      })),
    );

  it('leaves nothing when PostgreSQL rejects a value of a later batch, and names its row', async () => {
    const view = makeView([feature('note', 'string')]);
    await store.writeRows([good(view, 0, 1)]);
    const bad = batchOf(view, [
      { keys: [1_000n], event: 0, values: ['fine'] },
      { keys: [1_001n], event: 0, values: ['a NUL \u0000 byte'] },
    ]);
    const error = await failure(store.writeRows([good(view, 1), good(view, 2_000), bad]));
    expect(error.code).toBe('invalid_argument');
    expect(error.message).toMatch(/^batches\[2\]\.rows\[1\]\.note: PostgreSQL rejected the value: /);
    expect(await rowCount(view)).toBe(1);
    // The months created by the failed call are gone too (they were part of its transaction).
    expect(await partitionsOf(view)).toEqual([`offline_view_${view.id}_p202405`]);
  });

  it('leaves nothing when the input stream throws mid-way', async () => {
    const view = makeView([feature('note', 'string')]);
    async function* batches() {
      yield good(view, 0);
      yield good(view, 100);
      throw new Error('the client went away');
    }
    await store.ensureView(view);
    const error = await failure(store.writeRows(batches()));
    expect(error.message).toBe('reading batches[2] of the offline write failed: the client went away');
    expect(await rowCount(view)).toBe(0);
  });

  it('leaves nothing when a value cannot be encoded, and names it', async () => {
    const view = makeView([feature('n', 'int64'), feature('l', 'double_list')]);
    const tooBig = batchOf(view, [
      { keys: [1n], event: 0, values: [1n, [1]] },
      { keys: [2n], event: 0, values: [2n ** 63n, [1]] },
    ]);
    const badList = batchOf(view, [{ keys: [3n], event: 0, values: [1n, [1, 'x' as unknown as number]] }]);
    const ok = batchOf(view, [{ keys: [4n], event: 0, values: [1n, []] }]);
    await store.ensureView(view);
    const first = await failure(store.writeRows([ok, tooBig]));
    expect(first.code).toBe('invalid_argument');
    expect(first.message).toBe(
      `batches[1].rows[1].n: expected an int64 (a bigint in range), got ${2n ** 63n}n`,
    );
    const second = await failure(store.writeRows([ok, badList]));
    expect(second.message).toBe('batches[1].rows[0].l[1]: expected a double, got "x"');
    const shape = await failure(store.writeRows([ok, { ...ok, eventTimes: [0.5] }]));
    expect(shape.message).toBe('batches[1].rows[0].eventTime: must be integer microseconds since the epoch');
    expect(await rowCount(view)).toBe(0);
    // The store and its connections still work afterwards.
    expect(await store.writeRows([ok])).toEqual({ rows: 1 });
  });

  it('streams: the next batch is pulled only after the previous one is written', async () => {
    const view = makeView([feature('note', 'string')]);
    const seen: number[] = [];
    async function* batches() {
      for (let index = 0; index < 3; index += 1) {
        seen.push(await rowCount(view).catch(() => -1));
        yield good(view, index * 100);
      }
    }
    await store.ensureView(view);
    expect(await store.writeRows(batches())).toEqual({ rows: 300 });
    // Other sessions see nothing before the commit.
    expect(seen).toEqual([0, 0, 0]);
  });
});

describe('retention', () => {
  it('drops only whole partitions older than the cutoff', async () => {
    const view = makeView([feature('x', 'double')]);
    const months = ['2023-11-15', '2023-12-31', '2024-01-01', '2024-01-20', '2024-02-10'];
    await store.writeRows([
      batchOf(
        view,
        months.map((day, index) => ({
          keys: [BigInt(index)],
          event: utc(`${day}T00:00:00Z`),
          values: [index],
        })),
      ),
    ]);
    // The cutoff falls inside January: December and November go, January stays.
    const dropped = await store.dropPartitionsBefore(view, utc('2024-01-15T00:00:00Z'));
    expect(dropped).toEqual([`offline_view_${view.id}_p202311`, `offline_view_${view.id}_p202312`]);
    expect(await rowCount(view)).toBe(3);
    expect(await store.dropPartitionsBefore(view, utc('2024-01-15T00:00:00Z'))).toEqual([]);
    // Exactly at a month's end it goes.
    expect(await store.dropPartitionsBefore(view, utc('2024-02-01T00:00:00Z'))).toEqual([
      `offline_view_${view.id}_p202401`,
    ]);
    // Writing into a dropped month again recreates it.
    await store.writeRows([batchOf(view, [{ keys: [9n], event: utc('2023-11-15T00:00:00Z'), values: [9] }])]);
    expect(await rowCount(view)).toBe(2);
  });
});
