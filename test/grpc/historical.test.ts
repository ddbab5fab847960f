import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FeatureStatus, ValueType } from '../../gen/fstore/v1/values_pb.js';
import { randomName } from '../support/environment.js';
import { doubles, failureOf, int64s, strings } from '../support/fixtures.js';
import {
  type HistoricalRequest,
  historicalRequests,
  ingestRequests,
  retrieveHistorical,
} from '../support/historical.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

const base = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z in microseconds
const t = (seconds: number) => base + seconds * 1_000_000;
const { PRESENT, NOT_FOUND, NULL_VALUE, OUTSIDE_MAX_AGE } = FeatureStatus;

/** GetHistoricalFeatures end to end: real gRPC, real PostgreSQL, the piscina pool. */
describe('GetHistoricalFeatures', () => {
  let server: TestServer;
  const project = randomName('p');

  beforeAll(async () => {
    // Small blocks, chunks and segments: every boundary is crossed by a few rows.
    server = await startTestServer('memory', {
      historicalBlockRows: 3,
      historicalSegmentRows: 2,
      historicalChunkRows: 5,
    });
    const { registry, features } = server;
    await registry.applyEntity({
      project,
      entity: { name: 'user', joinKeys: [{ name: 'user_id', type: ValueType.STRING }] },
    });
    await registry.applyEntity({
      project,
      entity: { name: 'merchant', joinKeys: [{ name: 'merchant_id', type: ValueType.INT64 }] },
    });
    await registry.applyFeatureView({
      project,
      featureView: {
        name: 'scores',
        entities: ['user'],
        ttl: { seconds: 10n },
        features: [
          { name: 'score', type: ValueType.DOUBLE },
          { name: 'label', type: ValueType.STRING },
        ],
      },
    });
    await registry.applyFeatureView({
      project,
      featureView: {
        name: 'pairs',
        entities: ['user', 'merchant'],
        features: [{ name: 'amount', type: ValueType.DOUBLE }],
      },
    });
    const scores = [
      { user: 'a', time: t(0), score: 1, label: 'a0' },
      { user: 'a', time: t(5), score: 2, label: 'a5' },
      { user: 'a', time: t(5), score: 3, label: 'a5-later', created: t(100) }, // same time, recorded later
      { user: 'a', time: t(20), score: 4, label: 'a20' },
      { user: 'b', time: t(0), score: null, label: 'b0' },
      { user: 'c', time: t(50), score: 7, label: 'c50' },
    ];
    await features.ingestFeatures(
      ingestRequests(
        project,
        'scores',
        {
          entities: { user_id: strings(...scores.map((row) => row.user)) },
          eventTimestamps: scores.map((row) => BigInt(row.time)),
          createdTimestamps: scores.map((row) => BigInt(row.created ?? t(60))),
          features: [
            {
              name: 'score',
              values: doubles(...scores.map((row) => row.score ?? 0)),
              nullRows: scores.flatMap((row, index) => (row.score === null ? [index] : [])),
            },
            { name: 'label', values: strings(...scores.map((row) => row.label)) },
          ],
        },
        scores.length,
      ),
    );
    const pairs = [
      { user: 'a', merchant: 1, time: t(1), amount: 10 },
      { user: 'a', merchant: 2, time: t(1), amount: 20 },
      { user: 'b', merchant: 1, time: t(3), amount: 30 },
    ];
    await features.ingestFeatures(
      ingestRequests(
        project,
        'pairs',
        {
          entities: {
            user_id: strings(...pairs.map((row) => row.user)),
            merchant_id: int64s(...pairs.map((row) => row.merchant)),
          },
          eventTimestamps: pairs.map((row) => BigInt(row.time)),
          features: [{ name: 'amount', values: doubles(...pairs.map((row) => row.amount)) }],
        },
        pairs.length,
      ),
    );
  });
  afterAll(async () => server?.stop());

  it('joins point in time, in input order, with statuses, ttl, ties by created time and carried columns', async () => {
    // Unsorted, with a duplicate row, across two input chunks and several blocks.
    const rows = [
      { user: 'a', merchant: 2, time: t(6), label: 1 }, // a@5 (later created), ttl ok; pair a/2@1
      { user: 'a', merchant: 1, time: t(4), label: 2 }, // a@0, pair a/1@1
      { user: 'b', merchant: 1, time: t(3), label: 3 }, // b@0 null score; pair b/1 exactly at t
      { user: 'a', merchant: 1, time: t(15), label: 4 }, // a@5 aged: 10 s + 0 = exactly ttl → present
      { user: 'a', merchant: 1, time: t(15) + 1, label: 5 }, // one microsecond over → outside max age
      { user: 'c', merchant: 9, time: t(49), label: 6 }, // c's only row is later → not found
      { user: 'zz', merchant: 1, time: t(99), label: 7 }, // unknown entity
      { user: 'a', merchant: 2, time: t(6), label: 8 }, // duplicate of the first row
      { user: 'a', merchant: 1, time: t(-5), label: 9 }, // before every row
    ];
    const chunk = (part: typeof rows) => ({
      entities: {
        user_id: strings(...part.map((row) => row.user)),
        merchant_id: int64s(...part.map((row) => row.merchant)),
      },
      timestamps: part.map((row) => BigInt(row.time)),
      carry: { label: int64s(...part.map((row) => row.label)) },
    });
    const result = await retrieveHistorical(
      server.features,
      historicalRequests(
        { project, features: ['pairs:amount', 'scores:score', 'scores:label'], chunkRows: 2 },
        [chunk(rows.slice(0, 5)), chunk(rows.slice(5))],
      ),
    );
    // Blocks of 5 and 4 input rows, answered in chunks of at most 2.
    expect(result.chunks.map((chunk) => chunk.timestamps.length)).toEqual([2, 2, 1, 2, 2]);
    expect(result.keys.user_id).toEqual(rows.map((row) => row.user));
    expect(result.keys.merchant_id).toEqual(rows.map((row) => BigInt(row.merchant)));
    expect(result.timestamps).toEqual(rows.map((row) => BigInt(row.time)));
    expect(result.carry.label).toEqual(rows.map((row) => BigInt(row.label)));
    const score = result.features['scores:score'];
    expect(score?.statuses).toEqual([
      PRESENT,
      PRESENT,
      NULL_VALUE,
      PRESENT,
      OUTSIDE_MAX_AGE,
      NOT_FOUND,
      NOT_FOUND,
      PRESENT,
      NOT_FOUND,
    ]);
    expect(score?.values).toEqual([3, 1, 0, 3, 0, 0, 0, 3, 0]);
    expect(score?.eventTimes).toEqual(
      [t(5), t(0), t(0), t(5), t(5), 0, 0, t(5), 0].map((value) => BigInt(value)),
    );
    expect(result.features['scores:label']?.values).toEqual([
      'a5-later',
      'a0',
      'b0',
      'a5-later',
      '',
      '',
      '',
      'a5-later',
      '',
    ]);
    const amount = result.features['pairs:amount'];
    expect(amount?.values).toEqual([20, 10, 30, 10, 10, 0, 0, 20, 0]);
    expect(amount?.statuses).toEqual([
      PRESENT,
      PRESENT,
      PRESENT,
      PRESENT,
      PRESENT,
      NOT_FOUND,
      NOT_FOUND,
      PRESENT,
      NOT_FOUND,
    ]);
  });

  it('in range mode, returns every (key, event time) of the range with its row', async () => {
    const result = await retrieveHistorical(server.features, [
      {
        message: {
          case: 'query',
          value: {
            project,
            features: ['scores:score', 'scores:label'],
            range: { startTime: BigInt(t(0)), endTime: BigInt(t(20)) },
          },
        },
      },
      { message: { case: 'end', value: { rowCount: 0n } } },
    ]);
    expect(result.keys.user_id).toEqual(['a', 'a', 'b']);
    expect(result.timestamps).toEqual([t(0), t(5), t(0)].map((value) => BigInt(value)));
    expect(result.features['scores:label']?.values).toEqual(['a0', 'a5-later', 'b0']);
    expect(result.features['scores:score']?.statuses).toEqual([PRESENT, PRESENT, NULL_VALUE]);
  });

  const query = (features: string[]): HistoricalRequest => ({
    message: { case: 'query', value: { project, features } },
  });
  const rowsOf = (users: string[], times: number[]): HistoricalRequest => ({
    message: {
      case: 'rows',
      value: { entities: { user_id: strings(...users) }, timestamps: times.map((time) => BigInt(time)) },
    },
  });
  const end = (rowCount: number): HistoricalRequest => ({
    message: { case: 'end', value: { rowCount: BigInt(rowCount) } },
  });
  const fails = (requests: HistoricalRequest[]) => failureOf(retrieveHistorical(server.features, requests));

  it('rejects bad input with the status and the place', async () => {
    expect(await fails([])).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('empty'),
    });
    expect(await fails([rowsOf(['a'], [t(1)]), end(1)])).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('first message must be a query'),
    });
    expect(await fails([query(['scores:nope']), end(0)])).toMatchObject({
      code: 'not_found',
      message: expect.stringContaining('no feature "nope"'),
    });
    expect(await fails([query(['nope:score']), end(0)])).toMatchObject({ code: 'not_found' });
    expect(await fails([query(['scores:score', 'scores:score']), end(0)])).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('features[1]'),
    });
    // A chunk without the join key of a requested view.
    expect(
      await fails([
        query(['scores:score']),
        {
          message: { case: 'rows', value: { entities: { other: strings('a') }, timestamps: [BigInt(t(1))] } },
        },
        end(1),
      ]),
    ).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringMatching(/^chunks\[0\]\.entities.*user_id/),
    });
    // A key of the wrong type.
    expect(
      await fails([
        query(['scores:score']),
        {
          message: { case: 'rows', value: { entities: { user_id: int64s(1) }, timestamps: [BigInt(t(1))] } },
        },
        end(1),
      ]),
    ).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('chunks[0].entities["user_id"]'),
    });
    // Missing label times.
    expect(await fails([query(['scores:score']), rowsOf(['a', 'b'], [t(1)]), end(2)])).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('chunks[0].timestamps'),
    });
    expect(await fails([query(['scores:score']), rowsOf(['a'], [t(1)]), end(5)])).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('end.row_count'),
    });
    expect(await fails([query(['scores:score']), rowsOf(['a'], [t(1)])])).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('without an end message'),
    });
    expect(await fails([query(['scores:score']), end(0), rowsOf(['a'], [t(1)])])).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('followed the end'),
    });
    expect(await fails([query(['scores:score']), query(['scores:score'])])).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('only the first message'),
    });
    expect(
      await fails([
        {
          message: {
            case: 'query',
            value: {
              project,
              features: ['scores:score'],
              range: { startTime: BigInt(t(1)), endTime: BigInt(t(2)) },
            },
          },
        },
        rowsOf(['a'], [t(1)]),
        end(1),
      ]),
    ).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('range mode takes no entity rows'),
    });
  });

  it('answers an input of zero rows with no chunks', async () => {
    const result = await retrieveHistorical(server.features, [query(['scores:score']), end(0)]);
    expect(result.chunks).toEqual([]);
  });
});
