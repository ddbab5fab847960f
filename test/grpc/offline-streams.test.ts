import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FeatureService } from '../../gen/fstore/v1/feature_service_pb.js';
import { RegistryService } from '../../gen/fstore/v1/registry_pb.js';
import { resolvePostgresOptions } from '../../src/adapters/postgres/options.js';
import { createPostgresPool } from '../../src/adapters/postgres/pool.js';
import { FStoreError } from '../../src/domain/errors.js';
import { createClient } from '../../src/grpc/client.js';
import { requireEnvironment } from '../support/environment.js';
import { applyFixtures, doubles, failureOf, int64s, nowMicros, strings } from '../support/fixtures.js';
import { historicalRequests, ingestRequests, retrieveHistorical } from '../support/historical.js';
import { adminClientFor, bootstrapKey, createKey, keyMetadata } from '../support/security.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

/**
 * Idle or piled-up streams cannot starve the offline tier: a request stream silent for
 * FSTORE_STREAM_IDLE_TIMEOUT_MS ends (DEADLINE_EXCEEDED, nothing kept); offline streams are capped
 * per process and per principal (RESOURCE_EXHAUSTED at once, with a retry hint); a pool that is
 * merely full is RESOURCE_EXHAUSTED, never "the database is unavailable".
 */

const project = 'streams';
const pairKeys = { user_id: strings('u1'), merchant_id: int64s(1) };
const oneRow = () =>
  ingestRequests(
    project,
    'pair_stats',
    {
      entities: pairKeys,
      eventTimestamps: [BigInt(nowMicros())],
      features: [{ name: 'amount', values: doubles(1) }],
    },
    1,
  );

/** A stream that sends its header and then nothing, until `release` is called. */
function idleIngest(release: Promise<void>) {
  return (async function* () {
    yield { message: { case: 'header' as const, value: { project, featureView: 'pair_stats' } } };
    await release;
  })();
}

let server: TestServer;
let admin: { key: string };

beforeAll(async () => {
  server = await startTestServer('redis', {
    auth: 'on',
    streamIdleTimeoutMs: 1_500,
    maxOfflineStreams: 8,
    maxOfflineStreamsPerPrincipal: 3,
  });
  admin = await bootstrapKey(server);
  const registry = createClient(RegistryService, server.address, { metadata: keyMetadata(admin.key) });
  try {
    await applyFixtures(registry, project);
  } finally {
    registry.close();
  }
});

afterAll(async () => {
  await server?.stop();
});

async function storedRows(): Promise<number> {
  const client = new pg.Client({ connectionString: requireEnvironment('FSTORE_TEST_POSTGRES_URL') });
  await client.connect();
  try {
    const schema = server.config.postgresSchema;
    const view = await client.query(
      `SELECT id FROM "${schema}".feature_views WHERE project = $1 AND name = 'pair_stats'`,
      [project],
    );
    const table = `"${schema}".offline_view_${view.rows[0]?.id}`;
    const exists = await client.query('SELECT to_regclass($1) AS t', [table]);
    if (!exists.rows[0]?.t) return 0;
    return (await client.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0]?.n as number;
  } finally {
    await client.end();
  }
}

describe('offline streams', () => {
  it("caps one caller's streams, serves other callers meanwhile, and ends idle streams with nothing kept", async () => {
    const adminClient = adminClientFor(server, admin.key);
    const hog = await createKey(adminClient, 'hog', [{ role: 'writer', project }]);
    const other = await createKey(adminClient, 'other', [{ role: 'writer', project }]);
    adminClient.close();
    const hogClient = createClient(FeatureService, server.address, { metadata: keyMetadata(hog.key) });
    const otherClient = createClient(FeatureService, server.address, { metadata: keyMetadata(other.key) });
    let release = () => {};
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    try {
      const before = await storedRows();
      const started = Date.now();
      const hogCalls = Array.from({ length: 6 }, () =>
        failureOf(hogClient.ingestFeatures(idleIngest(released))),
      );
      // The three over the cap are refused at once.
      const refusals = await Promise.all(hogCalls.slice(3));
      for (const refusal of refusals) {
        expect(refusal.code).toBe('resource_exhausted');
        expect(refusal.message).toMatch(/FSTORE_MAX_OFFLINE_STREAMS_PER_PRINCIPAL/);
      }
      expect(Date.now() - started).toBeLessThan(1_500);
      // Another caller is served while the three admitted streams idle.
      const ingested = await otherClient.ingestFeatures(oneRow());
      expect(ingested.rowsIngested).toBe(1n);
      const history = await retrieveHistorical(
        otherClient,
        historicalRequests({ project, features: ['pair_stats:amount'] }, [
          { entities: pairKeys, timestamps: [BigInt(nowMicros())] },
        ]),
      );
      expect(history.features['pair_stats:amount']?.values).toEqual([1]);
      // The admitted streams end when they idle out, and keep nothing.
      const idled = await Promise.all(hogCalls.slice(0, 3));
      for (const failure of idled) {
        expect(failure.code).toBe('deadline_exceeded');
        expect(failure.message).toMatch(
          /no message for 1500 ms .*FSTORE_STREAM_IDLE_TIMEOUT_MS.*nothing it sent was kept/,
        );
      }
      expect(await storedRows()).toBe(before + 1);
      // Their slots are free again.
      expect((await hogClient.ingestFeatures(oneRow())).rowsIngested).toBe(1n);
    } finally {
      release();
      hogClient.close();
      otherClient.close();
    }
  });
});

describe('a full connection pool', () => {
  it('is RESOURCE_EXHAUSTED with a retry hint, not the database being unavailable', async () => {
    const pool = createPostgresPool(
      resolvePostgresOptions({
        connectionString: requireEnvironment('FSTORE_TEST_POSTGRES_URL'),
        poolSize: 1,
        connectTimeoutMs: 300,
      }),
      'offline database',
    );
    let release = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    try {
      const holder = pool.transaction(() => held);
      const failure = await pool.query('SELECT 1').then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(failure).toBeInstanceOf(FStoreError);
      expect((failure as FStoreError).code).toBe('resource_exhausted');
      expect((failure as FStoreError).message).toMatch(/all 1 connections of this server are in use/);
      expect((failure as FStoreError).retryAfterMs).toBeGreaterThan(0);
      release();
      await holder;
      await expect(pool.query('SELECT 1')).resolves.toBeDefined();
    } finally {
      release();
      await pool.end();
    }
  });
});
