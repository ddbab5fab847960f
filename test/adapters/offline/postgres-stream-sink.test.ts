import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createPostgresOfflineStore,
  type PostgresOfflineStore,
} from '../../../src/adapters/postgres/offline/postgres-offline-store.js';
import { resolvePostgresOptions } from '../../../src/adapters/postgres/options.js';
import { createPostgresPool, type PostgresPool } from '../../../src/adapters/postgres/pool.js';
import type { FeatureValue, FeatureView, JoinKey, KeyValue } from '../../../src/domain/model.js';
import type {
  OfflineRowBatch,
  StreamBatchCommit,
  StreamCheckpointScope,
} from '../../../src/ports/offline-store.js';
import { randomName, requireEnvironment } from '../../support/environment.js';
import { failure } from '../../support/rejection.js';

// The sink of the stream tier: window rows and the partition's checkpoint in one transaction,
// fenced by the checkpoint's generation.

const connectionString = requireEnvironment('FSTORE_TEST_POSTGRES_URL');
// This file works in its own schema and drops it at the end (see afterAll).
const schema = `fstore_test_${randomBytes(6).toString('hex')}`;
const open: PostgresOfflineStore[] = [];
let store: PostgresOfflineStore;
let sql: pg.Client;

async function openStore(): Promise<PostgresOfflineStore> {
  const created = await createPostgresOfflineStore({ connectionString, schema });
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
const userKey: JoinKey = { name: 'user_id', type: 'int64' };

function makeView(joinKeys: JoinKey[] = [userKey]): FeatureView {
  return {
    id: nextViewId++,
    project: 'p',
    name: 'clicks_1h',
    version: 1,
    createdAt: new Date(0),
    entities: ['user'],
    joinKeys,
    features: [
      { name: 'count', type: 'int64', description: '', tags: {} },
      { name: 'mean', type: 'double', description: '', tags: {} },
    ],
    ttlMs: 0,
    online: true,
    source: 'stream',
    owner: '',
    description: '',
    tags: {},
  };
}

interface Row {
  keys: KeyValue[];
  event: number;
  created?: number;
  values: FeatureValue[];
}

function batchOf(view: FeatureView, rows: Row[]): OfflineRowBatch {
  return {
    view,
    keys: view.joinKeys.map((_, index) => rows.map((row) => row.keys[index] as KeyValue)),
    eventTimes: rows.map((row) => row.event),
    createdTimes: rows.map((row) => row.created ?? row.event),
    values: view.features.map((_, index) => rows.map((row) => row.values[index] ?? null)),
  };
}

const newScope = (): StreamCheckpointScope => ({
  project: 'p',
  aggregation: randomName('agg'),
  topic: 'clicks',
});
const bytes = (...values: number[]) => Uint8Array.from(values);

function commitOf(
  scope: StreamCheckpointScope,
  expectedGeneration: number | null,
  state: Uint8Array,
  rows: OfflineRowBatch[] = [],
  partition = 0,
): StreamBatchCommit {
  return { scope, partition, expectedGeneration, state, rows };
}

const utc = (iso: string) => Date.parse(iso) * 1_000;
// Not a whole millisecond: the DELETE must match the stored event time to the microsecond.
const windowEnd = utc('2024-03-31T23:00:00Z') + 123;

/** Every stored row of the view, as text, sorted by keys then event time. */
async function storedRows(view: FeatureView) {
  const keyColumns = view.joinKeys.map((key) => `k_${key.name}`);
  const result = await sql.query<Record<string, string | null>>(
    `SELECT ${keyColumns.map((column) => `${column}::text`).join(', ')},
       ((EXTRACT(EPOCH FROM event_time) * 1000000)::bigint)::text AS event,
       f_count::text AS count, f_mean::text AS mean
     FROM "${schema}".offline_view_${view.id} ORDER BY ${[...keyColumns, 'event_time'].join(', ')}`,
  );
  return result.rows;
}

async function loadOne(scope: StreamCheckpointScope, partition = 0) {
  const checkpoint = (await store.loadStreamCheckpoints(scope, [partition])).get(partition);
  return checkpoint && { generation: checkpoint.generation, state: [...checkpoint.state] };
}

describe('commitStreamBatch', () => {
  it('starts at generation 1, bumps it on every commit and fences a stale writer, which writes nothing', async () => {
    const view = makeView();
    const scope = newScope();
    const row = (user: bigint, count: bigint) => ({ keys: [user], event: windowEnd, values: [count, 0.5] });
    const commit = (expected: number | null, state: number, rows: Row[]) =>
      store.commitStreamBatch(commitOf(scope, expected, bytes(state), [batchOf(view, rows)]));

    expect(await commit(null, 1, [row(1n, 1n)])).toEqual({ committed: true, generation: 1 });
    expect(await commit(1, 2, [row(2n, 2n)])).toEqual({ committed: true, generation: 2 });
    // The owner before a rebalance, still at generation 1.
    expect(await commit(1, 9, [row(1n, 9n), row(3n, 9n)])).toEqual({ committed: false, generation: 2 });
    // A writer that thinks there is no checkpoint yet.
    expect(await commit(null, 9, [row(4n, 9n)])).toEqual({ committed: false, generation: 2 });
    expect(await loadOne(scope)).toEqual({ generation: 2, state: [2] });
    expect(await storedRows(view)).toEqual([
      { k_user_id: '1', event: String(windowEnd), count: '1', mean: '0.5' },
      { k_user_id: '2', event: String(windowEnd), count: '2', mean: '0.5' },
    ]);

    expect(await store.commitStreamBatch(commitOf(scope, 2, bytes(3)))).toEqual({
      committed: true,
      generation: 3,
    });
    expect(await loadOne(scope)).toEqual({ generation: 3, state: [3] });
  });

  it('fences a commit that expects a generation when the checkpoint was deleted', async () => {
    const scope = newScope();
    await store.commitStreamBatch(commitOf(scope, null, bytes(1)));
    await store.deleteStreamCheckpoints(scope);
    expect(await store.commitStreamBatch(commitOf(scope, 1, bytes(2)))).toEqual({
      committed: false,
      generation: null,
    });
    expect(await loadOne(scope)).toBeUndefined();
  });

  it('replaces stored rows with the same keys and event time, and leaves other times and keys alone', async () => {
    const view = makeView();
    const scope = newScope();
    const earlier = windowEnd - 3_600_000_000;
    // Rows written before, by a batch ingest: one of them is replaced below.
    await store.writeRows([
      batchOf(view, [
        { keys: [1n], event: windowEnd, created: 5, values: [100n, 1] },
        { keys: [1n], event: earlier, values: [7n, 7] },
        { keys: [2n], event: windowEnd, values: [8n, 8] },
      ]),
    ]);
    const first = await store.commitStreamBatch(
      commitOf(scope, null, bytes(1), [batchOf(view, [{ keys: [1n], event: windowEnd, values: [1n, 1.5] }])]),
    );
    expect(first).toEqual({ committed: true, generation: 1 });
    // The same window again (a replay after a restart, or a late event updating it).
    const second = await store.commitStreamBatch(
      commitOf(scope, 1, bytes(2), [batchOf(view, [{ keys: [1n], event: windowEnd, values: [2n, 2.5] }])]),
    );
    expect(second).toEqual({ committed: true, generation: 2 });

    expect(await storedRows(view)).toEqual([
      { k_user_id: '1', event: String(earlier), count: '7', mean: '7' },
      { k_user_id: '1', event: String(windowEnd), count: '2', mean: '2.5' },
      { k_user_id: '2', event: String(windowEnd), count: '8', mean: '8' },
    ]);
    // And through the port: the latest row per entity.
    const latest: { key: KeyValue | undefined; values: FeatureValue[] }[] = [];
    for await (const batch of store.readLatest(
      view,
      { startMicros: earlier, endMicros: windowEnd + 1 },
      { batchRows: 10 },
    ))
      for (const [row, key] of (batch.keys[0] ?? []).entries())
        latest.push({ key, values: batch.values.map((column) => column[row] ?? null) });
    expect(latest.sort((a, b) => (String(a.key) < String(b.key) ? -1 : 1))).toEqual([
      { key: 1n, values: [2n, 2.5] },
      { key: 2n, values: [8n, 8] },
    ]);
  });

  it('matches composite keys (string and int64) exactly, in rows of several months and two batches', async () => {
    const view = makeView([
      { name: 'country', type: 'string' },
      { name: 'shop', type: 'int64' },
    ]);
    const scope = newScope();
    const april = utc('2024-04-01T00:00:00Z'); // the first microsecond of the next month's partition
    const before = [
      { keys: ['fr', 1n], event: windowEnd, values: [1n, 1] },
      { keys: ['fr', 2n], event: windowEnd, values: [2n, 2] }, // same string key, other int64 key
      { keys: ['de', 1n], event: windowEnd, values: [3n, 3] }, // same int64 key, other string key
      { keys: ['fr', 1n], event: april, values: [4n, 4] },
      { keys: ['fr', 1n], event: windowEnd + 1, values: [5n, 5] }, // one microsecond later
      { keys: ['', -(2n ** 63n)], event: april, values: [6n, 6] },
      // Microseconds a double of seconds cannot tell apart (year 2255).
      { keys: ['fr', 1n], event: Number.MAX_SAFE_INTEGER, values: [7n, 7] },
      { keys: ['fr', 1n], event: Number.MAX_SAFE_INTEGER - 1, values: [8n, 8] },
    ];
    expect(await store.commitStreamBatch(commitOf(scope, null, bytes(1), [batchOf(view, before)]))).toEqual({
      committed: true,
      generation: 1,
    });
    const replacing = await store.commitStreamBatch(
      commitOf(scope, 1, bytes(2), [
        batchOf(view, [{ keys: ['fr', 1n], event: windowEnd, values: [10n, 10] }]),
        batchOf(view, [
          { keys: ['fr', 1n], event: april, values: [40n, 40] },
          { keys: ['', -(2n ** 63n)], event: april, values: [60n, 60] },
          { keys: ['fr', 1n], event: Number.MAX_SAFE_INTEGER, values: [70n, 70] },
        ]),
      ]),
    );
    expect(replacing).toEqual({ committed: true, generation: 2 });
    expect(await storedRows(view)).toEqual([
      { k_country: '', k_shop: String(-(2n ** 63n)), event: String(april), count: '60', mean: '60' },
      { k_country: 'de', k_shop: '1', event: String(windowEnd), count: '3', mean: '3' },
      { k_country: 'fr', k_shop: '1', event: String(windowEnd), count: '10', mean: '10' },
      { k_country: 'fr', k_shop: '1', event: String(windowEnd + 1), count: '5', mean: '5' },
      { k_country: 'fr', k_shop: '1', event: String(april), count: '40', mean: '40' },
      { k_country: 'fr', k_shop: '1', event: String(Number.MAX_SAFE_INTEGER - 1), count: '8', mean: '8' },
      { k_country: 'fr', k_shop: '1', event: String(Number.MAX_SAFE_INTEGER), count: '70', mean: '70' },
      { k_country: 'fr', k_shop: '2', event: String(windowEnd), count: '2', mean: '2' },
    ]);
  });

  it('rolls back the checkpoint with the rows when a batch is invalid', async () => {
    const view = makeView(); // new: its table is created in the transactions that roll back
    const scope = newScope();
    const good = batchOf(view, [{ keys: [1n], event: windowEnd, values: [1n, 1] }]);
    const wrongColumns: OfflineRowBatch = { ...good, values: [[1n]] };
    const wrongKey = batchOf(view, [{ keys: [1.5 as unknown as bigint], event: windowEnd, values: [1n, 1] }]);

    const shape = await failure(
      store.commitStreamBatch(commitOf(scope, null, bytes(1), [good, wrongColumns])),
    );
    expect(shape.code).toBe('invalid_argument');
    expect(shape.message).toMatch(/^batches\[1\]\.values: has 1 columns/);
    expect(await loadOne(scope)).toBeUndefined();

    expect(await store.commitStreamBatch(commitOf(scope, null, bytes(1), [good]))).toEqual({
      committed: true,
      generation: 1,
    });
    const value = await failure(
      store.commitStreamBatch(
        commitOf(scope, 1, bytes(2), [
          batchOf(view, [{ keys: [1n], event: windowEnd, values: [5n, 5] }]),
          wrongKey,
        ]),
      ),
    );
    expect(value.code).toBe('invalid_argument');
    expect(value.message).toMatch(/^batches\[1\]\.rows\[0\]\.user_id: expected an int64 key/);
    expect(await loadOne(scope)).toEqual({ generation: 1, state: [1] });
    expect(await storedRows(view)).toEqual([
      { k_user_id: '1', event: String(windowEnd), count: '1', mean: '1' },
    ]);
  });

  it('rejects a partition or generation PostgreSQL could not store, naming it', async () => {
    const scope = newScope();
    for (const [commit, field] of [
      [{ ...commitOf(scope, null, bytes()), partition: -1 }, 'partition'],
      [{ ...commitOf(scope, null, bytes()), partition: 2 ** 31 }, 'partition'],
      [commitOf(scope, 1.5, bytes()), 'expectedGeneration'],
      [commitOf(scope, 0, bytes()), 'expectedGeneration'],
    ] as const) {
      const error = await failure(store.commitStreamBatch(commit));
      expect(error.code).toBe('invalid_argument');
      expect(error.message.startsWith(`${field}: `)).toBe(true);
    }
    expect((await failure(store.loadStreamCheckpoints(scope, [0, 0.5]))).message).toMatch(
      /^partitions\[1\]: /,
    );
  });

  it('lets exactly one of two concurrent commits with the same expected generation through', async () => {
    const view = makeView();
    const scope = newScope();
    const other = await openStore();
    const rowsOf = (count: bigint) => [
      batchOf(view, [
        { keys: [1n], event: windowEnd, values: [count, 0] },
        { keys: [2n], event: windowEnd, values: [count, 0] },
      ]),
    ];
    for (const expected of [null, 1]) {
      const results = await Promise.all([
        store.commitStreamBatch(commitOf(scope, expected, bytes(1), rowsOf(1n))),
        other.commitStreamBatch(commitOf(scope, expected, bytes(2), rowsOf(2n))),
      ]);
      const generation = (expected ?? 0) + 1;
      const winner = results.findIndex((result) => result.committed);
      expect(results.filter((result) => result.committed)).toEqual([{ committed: true, generation }]);
      expect(results.filter((result) => !result.committed)).toEqual([{ committed: false, generation }]);
      // The winner's state and rows, none of the loser's.
      expect(await loadOne(scope)).toEqual({ generation, state: [winner + 1] });
      expect((await storedRows(view)).map((row) => row.count)).toEqual([
        String(winner + 1),
        String(winner + 1),
      ]);
    }
  });
});

describe('replaceRows', () => {
  it('replaces rows of the same keys and event time without touching any checkpoint', async () => {
    const view = makeView();
    await store.writeRows([batchOf(view, [{ keys: [3n], event: windowEnd, values: [1n, 1] }])]);
    const result = await store.replaceRows([
      batchOf(view, [
        { keys: [3n], event: windowEnd, values: [5n, 5.5] },
        { keys: [4n], event: windowEnd, values: [6n, null] },
      ]),
    ]);
    expect(result).toEqual({ rows: 2 });
    // Twice: a replay after a restart changes nothing.
    await store.replaceRows([batchOf(view, [{ keys: [3n], event: windowEnd, values: [5n, 5.5] }])]);
    expect(await storedRows(view)).toEqual([
      { k_user_id: '3', event: String(windowEnd), count: '5', mean: '5.5' },
      { k_user_id: '4', event: String(windowEnd), count: '6', mean: null },
    ]);
  });
});

describe('loadStreamCheckpoints and deleteStreamCheckpoints', () => {
  it('loads the partitions that have a checkpoint and deletes every partition of one scope only', async () => {
    const scope = newScope();
    const otherTopic = { ...scope, topic: 'views' };
    await store.commitStreamBatch(commitOf(scope, null, bytes(0), [], 0));
    await store.commitStreamBatch(commitOf(scope, null, bytes(3, 0, 255), [], 3));
    await store.commitStreamBatch(commitOf(scope, 1, bytes(3, 1), [], 3));
    await store.commitStreamBatch(commitOf(otherTopic, null, bytes(7), [], 1));
    const state = randomBytes(100_000); // bigger than a pooled Buffer slice
    await store.commitStreamBatch(commitOf(otherTopic, null, state, [], 2));

    const loaded = await store.loadStreamCheckpoints(scope, [0, 1, 2, 3]);
    expect([...loaded.keys()].sort()).toEqual([0, 3]);
    expect(loaded.get(0)).toEqual({ partition: 0, generation: 1, state: bytes(0) });
    expect(loaded.get(3)).toEqual({ partition: 3, generation: 2, state: bytes(3, 1) });
    expect((await store.loadStreamCheckpoints(scope, [])).size).toBe(0);
    expect((await store.loadStreamCheckpoints(scope, [1, 2])).size).toBe(0);
    const big = (await store.loadStreamCheckpoints(otherTopic, [2])).get(2);
    expect(Buffer.from(big?.state ?? []).equals(state)).toBe(true);

    expect(await store.deleteStreamCheckpoints(scope)).toBe(2);
    expect(await store.deleteStreamCheckpoints(scope)).toBe(0);
    expect((await store.loadStreamCheckpoints(scope, [0, 3])).size).toBe(0);
    expect([...(await store.loadStreamCheckpoints(otherTopic, [1, 2])).keys()].sort()).toEqual([1, 2]);
    // A fresh start after a delete (the aggregation is recomputed).
    expect(await store.commitStreamBatch(commitOf(scope, null, bytes(5)))).toEqual({
      committed: true,
      generation: 1,
    });
  });
});

describe('when PostgreSQL cannot be reached', () => {
  it('rejects every checkpoint call with unavailable', async () => {
    // A pool that reaches the real database for the store's bootstrap, then a port nobody listens on.
    const poolTo = (url: string) =>
      createPostgresPool(
        resolvePostgresOptions({ connectionString: url, schema, connectTimeoutMs: 1_000 }),
        'offline database',
      );
    const reachable = poolTo(connectionString);
    const unreachable = poolTo('postgres://fstore@127.0.0.1:1/fstore');
    let current = reachable;
    const pool: PostgresPool = {
      query: (text, values) => current.query(text, values),
      transaction: (work, options) => current.transaction(work, options),
      end: async () => {
        await Promise.all([reachable.end(), unreachable.end()]);
      },
    };
    const cut = await createPostgresOfflineStore({ pool, schema });
    current = unreachable;
    try {
      const scope = newScope();
      const view = makeView();
      for (const call of [
        cut.commitStreamBatch(
          commitOf(scope, null, bytes(1), [
            batchOf(view, [{ keys: [1n], event: windowEnd, values: [1n, 1] }]),
          ]),
        ),
        cut.loadStreamCheckpoints(scope, [0]),
        cut.deleteStreamCheckpoints(scope),
      ]) {
        const error = await failure(call);
        expect(error.code).toBe('unavailable');
        expect(error.message).toMatch(/^offline database \(PostgreSQL\) is unavailable: /);
      }
    } finally {
      await cut.close();
      await pool.end();
    }
  });
});
