import type { MessageInitShape } from '@bufbuild/protobuf';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IngestFeaturesRequestSchema } from '../../gen/fstore/v1/feature_service_pb.js';
import { ValueType } from '../../gen/fstore/v1/values_pb.js';
import { randomName, requireEnvironment } from '../support/environment.js';
import { doubles, failureOf, int64s, strings } from '../support/fixtures.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

type Request = MessageInitShape<typeof IngestFeaturesRequestSchema>;

/** IngestFeatures end to end: client stream → validation → one COPY transaction in PostgreSQL. */
describe('IngestFeatures', () => {
  let server: TestServer;
  let database: pg.Client;
  const project = randomName('p');

  const header = (featureView = 'trips'): Request => ({
    message: { case: 'header', value: { project, featureView } },
  });
  const end = (rowCount: number): Request => ({
    message: { case: 'end', value: { rowCount: BigInt(rowCount) } },
  });
  const chunk = (firstRow: number, count: number, overrides: Record<string, unknown> = {}): Request => {
    const rows = Array.from({ length: count }, (_, index) => firstRow + index);
    return {
      message: {
        case: 'rows',
        value: {
          entities: {
            driver_id: int64s(...rows.map((row) => row % 100)),
            city: strings(...rows.map((row) => `c${row % 3}`)),
          },
          eventTimestamps: rows.map((row) => BigInt(1_700_000_000_000_000 + row)),
          features: [
            { name: 'distance', values: doubles(...rows.map((row) => row / 10)) },
            { name: 'label', values: strings(...rows.map((row) => `row ${row}`)), nullRows: [0] },
          ],
          ...overrides,
        },
      },
    };
  };

  async function storedRows(view = 'trips'): Promise<number> {
    const schema = server.config.postgresSchema;
    const { rows } = await database.query(
      `SELECT id FROM "${schema}".feature_views WHERE project = $1 AND name = $2`,
      [project, view],
    );
    const id = rows[0]?.id as number;
    const exists = await database.query('SELECT to_regclass($1) AS table', [
      `"${schema}".offline_view_${id}`,
    ]);
    if (!exists.rows[0]?.table) return 0;
    const counted = await database.query(`SELECT count(*)::int AS count FROM "${schema}".offline_view_${id}`);
    return counted.rows[0]?.count as number;
  }

  beforeAll(async () => {
    server = await startTestServer('memory', { maxBatchRows: 1000 });
    database = new pg.Client({ connectionString: requireEnvironment('FSTORE_TEST_POSTGRES_URL') });
    await database.connect();
    await server.registry.applyEntity({
      project,
      entity: { name: 'driver', joinKeys: [{ name: 'driver_id', type: ValueType.INT64 }] },
    });
    await server.registry.applyEntity({
      project,
      entity: { name: 'city', joinKeys: [{ name: 'city', type: ValueType.STRING }] },
    });
    await server.registry.applyFeatureView({
      project,
      featureView: {
        name: 'trips',
        entities: ['driver', 'city'],
        features: [
          { name: 'distance', type: ValueType.DOUBLE },
          { name: 'label', type: ValueType.STRING },
        ],
      },
    });
  });
  afterAll(async () => {
    await database?.end();
    await server?.stop();
  });

  it('stores every row of a streamed ingest in one transaction', async () => {
    async function* requests(): AsyncGenerator<Request> {
      yield header();
      for (let first = 0; first < 2_500; first += 1_000) yield chunk(first, Math.min(1_000, 2_500 - first));
      yield end(2_500);
    }
    const response = await server.features.ingestFeatures(requests());
    expect(response.rowsIngested).toBe(2_500n);
    expect(await storedRows()).toBe(2_500);
  });

  it('names the chunk, field and row of a bad value, and stores nothing of the call', async () => {
    const before = await storedRows();
    const bad = chunk(1_000, 10, { eventTimestamps: Array.from({ length: 9 }, () => 1n) });
    const failure = await failureOf(
      server.features.ingestFeatures([header(), chunk(0, 1_000), bad, chunk(2_000, 10), end(1_020)]),
    );
    expect(failure.code).toBe('invalid_argument');
    expect(failure.message).toContain('rows chunk 1 (stream rows from 1000)');
    expect(failure.message).toContain('event_timestamps: has 9 values, expected 10');
    const wrongType = chunk(0, 5, {
      features: [{ name: 'distance', values: strings('a', 'b', 'c', 'd', 'e') }],
    });
    expect(await failureOf(server.features.ingestFeatures([header(), wrongType, end(5)]))).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('features[0].values: expected double_values'),
    });
    expect(await storedRows()).toBe(before);
  });

  it('refuses malformed streams with a clear status', async () => {
    expect(await failureOf(server.features.ingestFeatures([]))).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('the stream is empty'),
    });
    expect(await failureOf(server.features.ingestFeatures([header(), end(0)]))).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('no rows'),
    });
    expect(await failureOf(server.features.ingestFeatures([header(), chunk(0, 3)]))).toMatchObject({
      code: 'cancelled',
      message: expect.stringContaining('without its end message'),
    });
    expect(await failureOf(server.features.ingestFeatures([header(), chunk(0, 3), end(4)]))).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('end.row_count'),
    });
    expect(
      await failureOf(server.features.ingestFeatures([header(), chunk(0, 3), end(3), chunk(3, 1)])),
    ).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('nothing may follow the end message'),
    });
    expect(await failureOf(server.features.ingestFeatures([chunk(0, 1)]))).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('first message must be a header'),
    });
    expect(await failureOf(server.features.ingestFeatures([header(), header()]))).toMatchObject({
      code: 'invalid_argument',
    });
    expect(
      await failureOf(server.features.ingestFeatures([header('nope'), chunk(0, 1), end(1)])),
    ).toMatchObject({
      code: 'not_found',
      message: expect.stringContaining('"nope"'),
    });
    expect(
      await failureOf(server.features.ingestFeatures([header(), chunk(0, 1_001), end(1_001)])),
    ).toMatchObject({
      code: 'resource_exhausted',
    });
  });

  it('rolls back when the client gives up mid-stream', async () => {
    const before = await storedRows();
    async function* failing(): AsyncGenerator<Request> {
      yield header();
      yield chunk(0, 1_000);
      await new Promise((resolve) => setTimeout(resolve, 100));
      throw new Error('the source file is truncated');
    }
    expect(await failureOf(server.features.ingestFeatures(failing()))).toMatchObject({ code: 'cancelled' });
    // The server sees the cancellation and rolls back; give it a moment.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(await storedRows()).toBe(before);
  });
});
