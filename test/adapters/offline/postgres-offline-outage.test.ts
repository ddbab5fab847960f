import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  createPostgresOfflineStore,
  type PostgresOfflineStore,
} from '../../../src/adapters/postgres/offline/postgres-offline-store.js';
import type { FeatureView } from '../../../src/domain/model.js';
import type { OfflineRowBatch } from '../../../src/ports/offline-store.js';
import { failure } from '../../support/rejection.js';
import { startThrowawayPostgres, type ThrowawayPostgres } from '../../support/throwaway-postgres.js';

// This file stops and restarts PostgreSQL, so it runs its own server instead of the shared one.
let server: ThrowawayPostgres;
let store: PostgresOfflineStore;

const view: FeatureView = {
  id: 1,
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

const batch = (from: number, count: number): OfflineRowBatch => ({
  view,
  keys: [Array.from({ length: count }, (_, index) => BigInt(from + index))],
  eventTimes: Array.from({ length: count }, (_, index) => (from + index) * 1_000_000),
  createdTimes: Array.from({ length: count }, () => 0),
  values: [Array.from({ length: count }, (_, index) => index / 2)],
});

beforeAll(async () => {
  server = await startThrowawayPostgres();
  store = await createPostgresOfflineStore({
    connectionString: server.connectionString,
    schema: 'fstore',
    connectTimeoutMs: 1_000,
  });
});

afterAll(async () => {
  await store?.close();
  await server?.destroy();
});

it('fails fast with unavailable while PostgreSQL is down and works again after it restarts', async () => {
  await store.ensureView(view);
  expect(await store.writeRows([batch(0, 100)])).toEqual({ rows: 100 });

  await server.stop();
  const started = Date.now();
  const error = await failure(store.writeRows([batch(100, 100)]));
  expect(error.code).toBe('unavailable');
  expect(error.message).toMatch(/^offline database \(PostgreSQL\) is unavailable: /);
  expect(Date.now() - started).toBeLessThan(2_000);

  await server.start();
  expect(await store.writeRows([batch(100, 100)])).toEqual({ rows: 100 });
  expect(await store.writeRows([batch(200, 100)])).toEqual({ rows: 100 });
});

it('rejects with unavailable when PostgreSQL stops in the middle of a streamed write, and keeps nothing of it', async () => {
  const before = await countRows();
  async function* batches() {
    yield batch(1_000, 100);
    await server.stop();
    yield batch(1_100, 100);
  }
  const error = await failure(store.writeRows(batches()));
  expect(error.code).toBe('unavailable');
  await server.start();
  expect(await countRows()).toBe(before);
  expect(await store.writeRows([batch(2_000, 10)])).toEqual({ rows: 10 });
});

async function countRows(): Promise<number> {
  const pg = await import('pg');
  const client = new pg.default.Client({ connectionString: server.connectionString });
  await client.connect();
  try {
    const result = await client.query<{ n: string }>('SELECT count(*)::text AS n FROM fstore.offline_view_1');
    return Number(result.rows[0]?.n);
  } finally {
    await client.end();
  }
}
