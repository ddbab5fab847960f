import type { MessageInitShape } from '@bufbuild/protobuf';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IngestFeaturesRequestSchema } from '../../gen/fstore/v1/feature_service_pb.js';
import { ValueType } from '../../gen/fstore/v1/values_pb.js';
import { randomName, requireEnvironment } from '../support/environment.js';
import { doubles, failureOf, int64s, lists, strings } from '../support/fixtures.js';
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

  describe('validation rules', () => {
    beforeAll(async () => {
      await server.registry.applyFeatureView({
        project,
        featureView: {
          name: 'checked',
          entities: ['driver'],
          features: [
            { name: 'amount', type: ValueType.DOUBLE, min: 0, max: 1e6 },
            { name: 'counts', type: ValueType.INT64_LIST, min: 0 },
            { name: 'label', type: ValueType.STRING, required: true },
          ],
        },
      });
    });

    type Column = { values: ReturnType<typeof doubles>; nullRows?: number[] };
    /**
     * Rows of `checked` numbered from `firstRow` in the stream, one per amount, every other value
     * valid unless `replace` gives a feature's column.
     */
    const checkedChunk = (
      firstRow: number,
      amounts: number[],
      replace: Record<string, Column> = {},
    ): Request => {
      const columns: Record<string, Column> = {
        amount: { values: doubles(...amounts) },
        counts: { values: lists(...amounts.map(() => int64s(0, 5))) },
        label: { values: strings(...amounts.map((amount) => `amount ${amount}`)) },
        ...replace,
      };
      return {
        message: {
          case: 'rows',
          value: {
            entities: { driver_id: int64s(...amounts.map((_, index) => firstRow + index)) },
            eventTimestamps: amounts.map((_, index) => BigInt(1_700_000_000_000_000 + firstRow + index)),
            features: Object.entries(columns).map(([name, column]) => ({ name, ...column })),
          },
        },
      };
    };
    const ingestChecked = (...chunks: number[][]) => {
      let firstRow = 0;
      const requests = chunks.map((amounts) => {
        const chunk = checkedChunk(firstRow, amounts);
        firstRow += amounts.length;
        return chunk;
      });
      return failureOf(server.features.ingestFeatures([header('checked'), ...requests, end(firstRow)]));
    };
    const tens = (count: number) => Array.from({ length: count }, (_, index) => index * 10);

    it('refuses a row breaking a rule, naming its row in the stream, the feature and the rule; stores nothing', async () => {
      expect(await ingestChecked(tens(10), [1, 2, 1e9, 3])).toEqual({
        code: 'invalid_argument',
        message:
          'rows chunk 1 (stream rows from 10): rows[12].features["amount"]: 1000000000 is above the maximum 1000000',
      });
      expect(await ingestChecked([1, -0.5])).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('rows[1].features["amount"]: -0.5 is below the minimum 0'),
      });
      expect(await ingestChecked([Number.NaN])).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('rows[0].features["amount"]: NaN is refused'),
      });
      const negativeCount = checkedChunk(5, [1, 2], { counts: { values: lists(int64s(0), int64s(3, -1)) } });
      expect(
        await failureOf(
          server.features.ingestFeatures([
            header('checked'),
            checkedChunk(0, tens(5)),
            negativeCount,
            end(7),
          ]),
        ),
      ).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('rows[6].features["counts"][1]: -1 is below the minimum 0'),
      });
      const nullLabel = checkedChunk(0, tens(5), {
        label: { values: strings('a', 'b', 'c', 'd', 'e'), nullRows: [3] },
      });
      expect(await failureOf(server.features.ingestFeatures([header('checked'), nullLabel, end(5)]))).toEqual(
        {
          code: 'invalid_argument',
          message:
            'rows chunk 0 (stream rows from 0): rows[3].features["label"]: is null but the feature is required',
        },
      );
      expect(await storedRows('checked')).toBe(0);
    });

    it('accepts values exactly at the bounds, and nulls where not required', async () => {
      const atBounds = checkedChunk(0, [0, 1e6, 5], {
        amount: { values: doubles(0, 1e6, 0), nullRows: [2] },
        counts: { values: lists(int64s(0), int64s(), int64s(0, 1_000_000_000_000)) },
      });
      const response = await server.features.ingestFeatures([header('checked'), atBounds, end(3)]);
      expect(response.rowsIngested).toBe(3n);
      expect(await storedRows('checked')).toBe(3);
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
