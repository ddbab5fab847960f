import type { MessageInitShape } from '@bufbuild/protobuf';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type {
  GetHistoricalFeaturesResponse,
  IngestFeaturesRequestSchema,
} from '../../gen/fstore/v1/feature_service_pb.js';
import { ValueType } from '../../gen/fstore/v1/values_pb.js';
import { doubles, failureOf, strings } from '../support/fixtures.js';
import { type HistoricalRequest, historicalRequests, retrieveHistorical } from '../support/historical.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { startThrowawayPostgres, type ThrowawayPostgres } from '../support/throwaway-postgres.js';

type IngestRequest = MessageInitShape<typeof IngestFeaturesRequestSchema>;

const base = 1_767_225_600_000_000;
const entities = 2_000;
const rowsPerEntity = 10;

/**
 * Faults during retrieval and ingest: client cancellation, deadlines, and PostgreSQL restarting
 * mid-call. This file restarts PostgreSQL, so it runs its own server instead of the shared one.
 */
describe('GetHistoricalFeatures under faults', () => {
  let database: ThrowawayPostgres;
  let server: TestServer;
  const project = 'faults';
  const users = Array.from({ length: entities }, (_, index) => `user-${index}`);

  const activeQueries = async (): Promise<string[]> => {
    const client = new pg.Client({ connectionString: database.connectionString });
    await client.connect();
    try {
      const result = await client.query<{ query: string }>(
        `SELECT query FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND query ILIKE '%fstore_pit_keys%'`,
      );
      return result.rows.map((row) => row.query);
    } finally {
      await client.end();
    }
  };

  /** Key tables of point-in-time reads left behind (none: each lives only in its transaction). */
  const keyTables = async (): Promise<number> => {
    const client = new pg.Client({ connectionString: database.connectionString });
    await client.connect();
    try {
      const result = await client.query<{ n: string }>(
        `SELECT count(*)::text AS n FROM pg_class WHERE relname LIKE 'fstore_pit_keys_%'`,
      );
      return Number(result.rows[0]?.n);
    } finally {
      await client.end();
    }
  };

  /** Every user at the end of its rows, `repeat` times: plenty of blocks and chunks. */
  const requests = (repeat: number): HistoricalRequest[] =>
    historicalRequests(
      { project, features: ['scores:score'], chunkRows: 100 },
      Array.from({ length: repeat }, () => ({
        entities: { user_id: strings(...users) },
        timestamps: users.map(() => BigInt(base + rowsPerEntity * 1_000_000)),
      })),
    );

  beforeAll(async () => {
    database = await startThrowawayPostgres();
    server = await startTestServer(
      'memory',
      {
        postgresUrl: database.connectionString,
        historicalBlockRows: 500,
        historicalSegmentRows: 200,
        historicalChunkRows: 2_000,
      },
      { keepSchema: true },
    );
    await server.registry.applyEntity({
      project,
      entity: { name: 'user', joinKeys: [{ name: 'user_id', type: ValueType.STRING }] },
    });
    await server.registry.applyFeatureView({
      project,
      featureView: {
        name: 'scores',
        entities: ['user'],
        features: [{ name: 'score', type: ValueType.DOUBLE }],
      },
    });
    // In chunks of 1,000 rows (the server's default maximum per chunk).
    async function* setup(): AsyncGenerator<IngestRequest> {
      yield { message: { case: 'header', value: { project, featureView: 'scores' } } };
      for (let from = 0; from < entities; from += 100) {
        const part = users.slice(from, from + 100);
        const keys = part.flatMap((user) => Array.from({ length: rowsPerEntity }, () => user));
        yield {
          message: {
            case: 'rows',
            value: {
              entities: { user_id: strings(...keys) },
              eventTimestamps: keys.map((_, index) => BigInt(base + (index % rowsPerEntity) * 1_000_000)),
              features: [
                { name: 'score', values: doubles(...keys.map((_, index) => from * rowsPerEntity + index)) },
              ],
            },
          },
        };
      }
      yield { message: { case: 'end', value: { rowCount: BigInt(entities * rowsPerEntity) } } };
    }
    await server.features.ingestFeatures(setup());
  }, 120_000);
  afterAll(async () => {
    await server?.stop();
    await database?.destroy();
  });

  it('stops reading and querying when the client cancels, and serves the next call', async () => {
    let received = 0;
    for await (const chunk of server.features.getHistoricalFeatures(requests(5))) {
      received += chunk.timestamps.length;
      if (received >= 200) break; // cancels the call
    }
    // The server notices, cancels its query and frees the connection.
    const deadline = Date.now() + 5_000;
    let active = await activeQueries();
    while (active.length > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      active = await activeQueries();
    }
    expect(active).toEqual([]);
    expect(await keyTables()).toBe(0);
    const result = await retrieveHistorical(server.features, requests(1));
    expect(result.timestamps).toHaveLength(entities);
    expect(result.features['scores:score']?.values.at(-1)).toBe(entities * rowsPerEntity - 1);
  });

  it('fails with DEADLINE_EXCEEDED when the deadline passes mid-stream', async () => {
    const chunks: GetHistoricalFeaturesResponse[] = [];
    const error = await failureOf(
      (async () => {
        for await (const chunk of server.features.getHistoricalFeatures(requests(20), { timeoutMs: 300 })) {
          chunks.push(chunk);
          await new Promise((resolve) => setTimeout(resolve, 20)); // a slow reader
        }
      })(),
    );
    expect(error.code).toBe('deadline_exceeded');
    expect(chunks.length * 100).toBeLessThan(20 * entities);
    const result = await retrieveHistorical(server.features, requests(1));
    expect(result.timestamps).toHaveLength(entities);
  });

  it('fails with UNAVAILABLE when PostgreSQL restarts mid-retrieval, and works once it is back', async () => {
    let received = 0;
    const error = await failureOf(
      (async () => {
        for await (const chunk of server.features.getHistoricalFeatures(requests(10))) {
          received += chunk.timestamps.length;
          if (received === 500) await database.stop();
        }
      })(),
    );
    expect(error.code).toBe('unavailable');
    expect(error.message).toMatch(/offline database \(PostgreSQL\)/);
    expect(received).toBeLessThan(10 * entities);
    await database.start();
    const result = await retrieveHistorical(server.features, requests(1));
    expect(result.timestamps).toHaveLength(entities);
    expect(await keyTables()).toBe(0);
  });

  it('keeps nothing of an ingest when PostgreSQL restarts in the middle of it', async () => {
    const count = async () => {
      const client = new pg.Client({ connectionString: database.connectionString });
      await client.connect();
      try {
        const tables = await client.query<{ name: string }>(
          `SELECT c.oid::regclass::text AS name FROM pg_class c WHERE relname LIKE 'offline_view_%' AND relkind = 'p'`,
        );
        const name = tables.rows[0]?.name as string;
        const result = await client.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${name}`);
        return Number(result.rows[0]?.n);
      } finally {
        await client.end();
      }
    };
    const before = await count();
    const chunk = (from: number): IngestRequest => ({
      message: {
        case: 'rows',
        value: {
          entities: { user_id: strings(...users.slice(0, 100)) },
          eventTimestamps: users.slice(0, 100).map((_, index) => BigInt(base + (from + index) * 1_000_000)),
          features: [{ name: 'score', values: doubles(...users.slice(0, 100).map((_, index) => index)) }],
        },
      },
    });
    async function* stream(): AsyncGenerator<IngestRequest> {
      yield { message: { case: 'header', value: { project, featureView: 'scores' } } };
      yield chunk(0);
      await new Promise((resolve) => setTimeout(resolve, 100));
      await database.stop();
      yield chunk(100);
      yield { message: { case: 'end', value: { rowCount: 200n } } };
    }
    const error = await failureOf(
      server.features.ingestFeatures(
        stream() as AsyncIterable<
          Parameters<typeof server.features.ingestFeatures>[0] extends Iterable<infer R> ? R : never
        >,
      ),
    );
    expect(error.code).toBe('unavailable');
    await database.start();
    expect(await count()).toBe(before);
  });
});
