import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createPostgresOfflineStore,
  type PostgresOfflineStore,
} from '../../../src/adapters/postgres/offline/postgres-offline-store.js';
import type { FeatureView, KeyValue } from '../../../src/domain/model.js';
import { pointInTimeStatus } from '../../../src/domain/point-in-time.js';
import type { OfflineRowBatch } from '../../../src/ports/offline-store.js';
import { runPointInTimeTask } from '../../../src/workers/point-in-time-task.js';

/**
 * The write order of offline rows (`seq`): what breaks full ties (same keys, equal event AND
 * created time: the row written last wins) in the store's reads, on new tables and on tables made
 * before it existed, which get it at start-up.
 */

const connectionString = process.env.FSTORE_TEST_POSTGRES_URL;
if (!connectionString)
  throw new Error(
    'FSTORE_TEST_POSTGRES_URL is not set: start PostgreSQL with `bash scripts/servers.sh start-postgres` and export the variables printed by `bash scripts/servers.sh env`',
  );

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
function makeView(): FeatureView {
  return {
    id: nextViewId++,
    project: 'p',
    name: 'v',
    version: 1,
    createdAt: new Date(0),
    entities: ['user'],
    joinKeys: [{ name: 'user_id', type: 'int64' }],
    features: [{ name: 'x', type: 'double', description: '', tags: {} }],
    ttlMs: 0,
    online: true,
    source: 'batch',
    owner: '',
    description: '',
    tags: {},
  };
}

interface Row {
  readonly key: bigint;
  readonly event: number;
  readonly created: number;
  readonly x: number;
}

const batchOf = (view: FeatureView, rows: readonly Row[]): OfflineRowBatch => ({
  view,
  keys: [rows.map((row) => row.key)],
  eventTimes: rows.map((row) => row.event),
  createdTimes: rows.map((row) => row.created),
  values: [rows.map((row) => row.x)],
});

const utc = (iso: string) => Date.parse(iso) * 1_000;
const january = utc('2024-01-10T00:00:00Z');
const february = utc('2024-02-10T00:00:00Z');
const tableOf = (view: FeatureView) => `"${schema}".offline_view_${view.id}`;

/** x of readLatest's row per key over every time. */
async function latest(view: FeatureView): Promise<Map<bigint, number>> {
  const chosen = new Map<bigint, number>();
  for await (const batch of store.readLatest(view, { startMicros: 0, endMicros: 2 ** 52 }, { batchRows: 7 }))
    for (let row = 0; row < batch.eventTimes.length; row++)
      chosen.set(batch.keys[0]?.[row] as bigint, batch.values[0]?.[row] as number);
  return chosen;
}

/** x of the point-in-time row of each key at `t`, through the worker's merge (small segments). */
async function pointInTime(
  view: FeatureView,
  keys: readonly bigint[],
  t: number,
  reader = store,
): Promise<(number | undefined)[]> {
  const chosen = new Array<number | undefined>(keys.length);
  for await (const segment of reader.readPointInTime(
    view,
    { keys: [keys as KeyValue[]], maxTimes: new Float64Array(keys.length).fill(t) },
    { segmentRows: 2 },
  )) {
    const ranks = segment.lastRank - segment.firstRank + 1;
    const result = runPointInTimeTask({
      bytes: segment.bytes,
      rows: segment.rows,
      columnTypes: ['double'],
      wanted: [0],
      keyRanks: Int32Array.from({ length: ranks }, (_, index) => segment.firstRank + index),
      times: new Float64Array(ranks).fill(t),
      ttlMicros: 0,
    });
    for (let index = 0; index < ranks; index++)
      if (result.status[index] === pointInTimeStatus.present)
        chosen[segment.firstRank + index] = (result.values[0] as Float64Array)[index];
  }
  return chosen;
}

async function seqColumn(view: FeatureView) {
  const result = await sql.query<{ type: string; nullable: string; default: string | null }>(
    `SELECT data_type AS type, is_nullable AS nullable, column_default AS default
     FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 AND column_name = 'seq'`,
    [schema, `offline_view_${view.id}`],
  );
  return result.rows[0];
}

/** The table's rows as (x, seq), in seq order. */
async function storedOrder(view: FeatureView): Promise<{ x: number; seq: string }[]> {
  const result = await sql.query<{ x: number; seq: string }>(
    `SELECT f_x AS x, seq::text AS seq FROM ${tableOf(view)} ORDER BY seq`,
  );
  return result.rows;
}

describe('the write order of new view tables', () => {
  it('is a seq column filled from a sequence the table owns, in the order rows are written', async () => {
    const view = makeView();
    await store.ensureView(view);
    expect(await seqColumn(view)).toEqual({
      type: 'bigint',
      nullable: 'NO',
      default: `nextval('${schema}.offline_view_${view.id}_seq'::regclass)`,
    });
    // Two batches of one write, then a second write; rows in two months (two partitions).
    await store.writeRows([
      batchOf(view, [
        { key: 1n, event: february, created: 0, x: 1 },
        { key: 1n, event: january, created: 0, x: 2 },
      ]),
      batchOf(view, [{ key: 2n, event: february, created: 0, x: 3 }]),
    ]);
    await store.writeRows([
      batchOf(view, [
        { key: 2n, event: january, created: 0, x: 4 },
        { key: 1n, event: february, created: 0, x: 5 },
      ]),
    ]);
    expect((await storedOrder(view)).map((row) => row.x)).toEqual([1, 2, 3, 4, 5]);
    // The sequence goes with the table.
    const owner = await sql.query<{ owner: string }>(
      `SELECT d.refobjid::regclass::text AS owner FROM pg_depend d
       WHERE d.objid = to_regclass($1) AND d.deptype = 'a'`,
      [`"${schema}".offline_view_${view.id}_seq`],
    );
    expect(owner.rows.map((row) => row.owner)).toEqual([`${schema}.offline_view_${view.id}`]);
  });

  it('makes the row written last the answer of full ties, in readLatest and readPointInTime', async () => {
    const view = makeView();
    // Key 1: four rows tied on (event, created), over two batches; key 2: a tie across two writes;
    // key 3: a tie on event time only, decided by the created time whatever the write order.
    await store.writeRows([
      batchOf(view, [
        { key: 1n, event: january, created: 5, x: 10 },
        { key: 2n, event: january, created: 5, x: 20 },
        { key: 1n, event: january, created: 5, x: 11 },
        { key: 3n, event: january, created: 9, x: 30 },
        { key: 1n, event: january, created: 5, x: 12 },
      ]),
      batchOf(view, [
        { key: 1n, event: january, created: 5, x: 13 },
        { key: 1n, event: january, created: 4, x: 14 }, // written last but recorded earlier: loses
      ]),
    ]);
    await store.writeRows([
      batchOf(view, [
        { key: 2n, event: january, created: 5, x: 21 },
        { key: 3n, event: january, created: 8, x: 31 },
      ]),
    ]);
    const want = new Map([
      [1n, 13],
      [2n, 21],
      [3n, 30],
    ]);
    for (let repeat = 0; repeat < 3; repeat++) {
      expect(await latest(view)).toEqual(want);
      expect(await pointInTime(view, [3n, 1n, 2n, 4n], january)).toEqual([30, 13, 21, undefined]);
    }
    expect(await pointInTime(view, [1n], january - 1)).toEqual([undefined]);
  });
});

describe('tables made before the write order', () => {
  /** A view table as the store made it before `seq` existed, with its mapping, partitions and rows. */
  async function makeOldTable(view: FeatureView, rows: readonly Row[]): Promise<void> {
    const table = tableOf(view);
    await sql.query(`CREATE TABLE ${table} (
      k_user_id    bigint,
      event_time   timestamptz NOT NULL,
      created_time timestamptz NOT NULL,
      view_version integer     NOT NULL
      , f_x double precision
    ) PARTITION BY RANGE (event_time)`);
    await sql.query(`CREATE INDEX offline_view_${view.id}_time_idx ON ${table} (event_time)`);
    await sql.query(
      `CREATE INDEX offline_view_${view.id}_pit_v1_idx ON ${table} (k_user_id, event_time DESC, created_time DESC)`,
    );
    for (const [suffix, from, to] of [
      ['p202401', '2024-01-01', '2024-02-01'],
      ['p202402', '2024-02-01', '2024-03-01'],
    ]) {
      const partition = `"${schema}".offline_view_${view.id}_${suffix}`;
      await sql.query(`CREATE TABLE ${partition} (LIKE ${table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`);
      await sql.query(
        `ALTER TABLE ${table} ATTACH PARTITION ${partition} FOR VALUES FROM ('${from} 00:00:00+00') TO ('${to} 00:00:00+00')`,
      );
    }
    await sql.query(
      `INSERT INTO "${schema}".offline_columns (view_id, version, role, name, column_name, value_type)
       VALUES ($1, 1, 'key', 'user_id', 'k_user_id', 'int64'), ($1, 1, 'feature', 'x', 'f_x', 'double')`,
      [view.id],
    );
    for (const row of rows)
      await sql.query(
        `INSERT INTO ${table} (k_user_id, event_time, created_time, view_version, f_x)
         VALUES ($1, to_timestamp($2::numeric / 1000000), to_timestamp($3::numeric / 1000000), 1, $4)`,
        [String(row.key), String(row.event), String(row.created), row.x],
      );
  }

  it('get a seq column at start-up: stored rows keep fixed values, below every row written later', async () => {
    const view = makeView();
    await makeOldTable(view, [
      { key: 1n, event: january, created: 5, x: 1 },
      { key: 1n, event: january, created: 5, x: 2 },
      { key: 2n, event: february, created: 5, x: 3 },
      { key: 2n, event: february, created: 5, x: 4 },
      { key: 3n, event: january, created: 5, x: 5 },
    ]);
    expect(await seqColumn(view)).toBeUndefined();

    const started = await openStore();
    expect(await seqColumn(view)).toMatchObject({ type: 'bigint', nullable: 'NO' });
    const upgraded = await storedOrder(view);
    expect(upgraded.map((row) => row.x).sort()).toEqual([1, 2, 3, 4, 5]);
    expect(new Set(upgraded.map((row) => row.seq)).size).toBe(5);
    // Starting again changes nothing.
    await openStore();
    expect(await storedOrder(view)).toEqual(upgraded);

    // Old full ties: one fixed answer, every time.
    const answers = new Set<string>();
    for (let repeat = 0; repeat < 3; repeat++) {
      answers.add(JSON.stringify([...(await latest(view))].map(([key, x]) => [String(key), x])));
      answers.add(JSON.stringify(await pointInTime(view, [1n, 2n], february, started)));
    }
    expect(answers.size).toBe(2);

    // A row written now, fully tied with stored ones, wins; so does one in a month made now.
    await started.writeRows([
      batchOf(view, [
        { key: 1n, event: january, created: 5, x: 6 },
        { key: 2n, event: february, created: 5, x: 7 },
        { key: 4n, event: utc('2024-03-10T00:00:00Z'), created: 5, x: 8 },
      ]),
    ]);
    const after = await storedOrder(view);
    expect(after.slice(0, 5)).toEqual(upgraded);
    expect(after.slice(5).map((row) => row.x)).toEqual([6, 7, 8]);
    expect(await latest(view)).toEqual(
      new Map([
        [1n, 6],
        [2n, 7],
        [3n, 5],
        [4n, 8],
      ]),
    );
    expect(await pointInTime(view, [1n, 2n, 3n], february, started)).toEqual([6, 7, 5]);
  });

  it('get it on first use when another process made one after this store started', async () => {
    const view = makeView();
    await makeOldTable(view, [
      { key: 1n, event: january, created: 5, x: 1 },
      { key: 1n, event: january, created: 5, x: 2 },
    ]);
    const before = new Set((await storedOrder(view).catch(() => [])).map((row) => row.x));
    expect(before.size).toBe(0); // no seq to order by yet
    await store.writeRows([batchOf(view, [{ key: 1n, event: january, created: 5, x: 3 }])]);
    expect(await seqColumn(view)).toMatchObject({ type: 'bigint', nullable: 'NO' });
    expect((await storedOrder(view)).map((row) => row.x).at(-1)).toBe(3);
    expect(await latest(view)).toEqual(new Map([[1n, 3]]));
  });
});
