import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FeatureStatus, ValueType } from '../../gen/fstore/v1/values_pb.js';
import { randomName } from '../support/environment.js';
import {
  applyFixtures,
  bools,
  bytes,
  doubles,
  failureOf,
  floats,
  hourMs,
  int64s,
  lists,
  nowMicros,
  strings,
  timestamps,
  userStatsView,
  valuesOf,
} from '../support/fixtures.js';
import { type OnlineStoreKind, startTestServer, type TestServer } from '../support/serving-harness.js';

/**
 * The online serving path end to end: gRPC → registry cache → online store, the same suite for
 * every online store, so the embedded store and Redis (single and cluster) behave alike.
 */
describe.each<OnlineStoreKind>(['memory', 'redis', 'redis-cluster'])('online serving (%s)', (kind) => {
  let server: TestServer;
  const project = randomName('p');

  beforeAll(async () => {
    server = await startTestServer(kind, { maxBatchRows: 500 });
    await applyFixtures(server.registry, project);
  });
  afterAll(async () => server?.stop());

  const writeUsers = (
    userIds: string[],
    eventTime: number,
    overrides: { clicks?: number[]; nullScoreRows?: number[] } = {},
  ) =>
    server.features.writeOnlineFeatures({
      project,
      featureView: 'user_stats',
      entities: { user_id: strings(...userIds) },
      eventTimestamps: userIds.map(() => BigInt(eventTime)),
      features: [
        { name: 'clicks', values: int64s(...(overrides.clicks ?? userIds.map((_, index) => index + 1))) },
        {
          name: 'score',
          values: doubles(...userIds.map((_, index) => index + 0.5)),
          nullRows: overrides.nullScoreRows ?? [],
        },
        { name: 'ratio', values: floats(...userIds.map(() => 0.1)) },
        { name: 'name', values: strings(...userIds.map((id) => `name of ${id}`)) },
        { name: 'active', values: bools(...userIds.map((_, index) => index % 2 === 0)) },
        { name: 'blob', values: bytes(...userIds.map(() => new Uint8Array([1, 2, 3]))) },
        { name: 'last_seen', values: timestamps(...userIds.map(() => eventTime - 5)) },
        { name: 'embedding', values: lists(...userIds.map((_, index) => floats(index, 0.25, -1))) },
        { name: 'tags', values: lists(...userIds.map((id) => strings(id, 'x|y'))) },
      ],
    });

  it('writes rows of every value type and reads them back column-major', async () => {
    const eventTime = nowMicros() - 1_000_000;
    const written = await writeUsers(['u1', 'u2'], eventTime, { clicks: [7, 2 ** 60] });
    expect(written).toMatchObject({ rowsWritten: 2, rowsStale: 0 });

    const response = await server.features.getOnlineFeatures({
      project,
      features: userStatsView.features?.map((feature) => `user_stats:${feature.name}`) ?? [],
      entities: { user_id: strings('u2', 'u1') },
    });
    const column = (name: string) => {
      const found = response.features.find((feature) => feature.name === `user_stats:${name}`);
      if (!found) throw new Error(`no column ${name}`);
      return found;
    };
    expect(response.features.map((feature) => feature.name)).toEqual(
      userStatsView.features?.map((feature) => `user_stats:${feature.name}`),
    );
    expect(column('clicks').values?.values).toEqual({
      case: 'int64Values',
      value: expect.objectContaining({ values: [2n ** 60n, 7n] }),
    });
    expect(column('score').values?.values.value).toMatchObject({ values: [1.5, 0.5] });
    expect(column('ratio').values?.values.value).toMatchObject({
      values: [Math.fround(0.1), Math.fround(0.1)],
    });
    expect(column('name').values?.values.value).toMatchObject({ values: ['name of u2', 'name of u1'] });
    expect(column('active').values?.values.value).toMatchObject({ values: [false, true] });
    expect((valuesOf(column('blob')) as Uint8Array[]).map((value) => [...value])).toEqual([
      [1, 2, 3],
      [1, 2, 3],
    ]);
    expect(column('last_seen').values?.values).toMatchObject({
      case: 'timestampValues',
      value: { values: [BigInt(eventTime - 5), BigInt(eventTime - 5)] },
    });
    const embeddings = column('embedding').values?.values;
    expect(embeddings?.case).toBe('listValues');
    if (embeddings?.case === 'listValues') {
      expect(embeddings.value.rows.map((row) => valuesOf({ values: row }))).toEqual([
        [1, 0.25, -1],
        [0, 0.25, -1],
      ]);
    }
    const tags = column('tags').values?.values;
    if (tags?.case !== 'listValues') throw new Error('tags is not a list column');
    expect(tags.value.rows.map((row) => valuesOf({ values: row }))).toEqual([
      ['u2', 'x|y'],
      ['u1', 'x|y'],
    ]);
    for (const feature of response.features) {
      expect(feature.statuses).toEqual([FeatureStatus.PRESENT, FeatureStatus.PRESENT]);
      expect(feature.eventTimestamps).toEqual([BigInt(eventTime), BigInt(eventTime)]);
    }
    expect(Number(response.requestTime)).toBeGreaterThanOrEqual(eventTime);
  });

  it('reports NOT_FOUND, NULL_VALUE and OUTSIDE_MAX_AGE per row, withholding aged-out values', async () => {
    const fresh = nowMicros() - 1_000_000;
    const aged = nowMicros() - 1.5 * hourMs * 1000; // older than the one-hour ttl, still within the expiry grace
    await writeUsers(['n1'], fresh, { nullScoreRows: [0] });
    await writeUsers(['old1'], aged);
    const response = await server.features.getOnlineFeatures({
      project,
      features: ['user_stats:score', 'user_stats:clicks'],
      entities: { user_id: strings('n1', 'missing', 'old1') },
    });
    const [score, clicks] = response.features;
    expect(score?.statuses).toEqual([
      FeatureStatus.NULL_VALUE,
      FeatureStatus.NOT_FOUND,
      FeatureStatus.OUTSIDE_MAX_AGE,
    ]);
    expect(valuesOf(score)).toEqual([0, 0, 0]);
    expect(score?.eventTimestamps).toEqual([BigInt(fresh), 0n, BigInt(aged)]);
    expect(clicks?.statuses).toEqual([
      FeatureStatus.PRESENT,
      FeatureStatus.NOT_FOUND,
      FeatureStatus.OUTSIDE_MAX_AGE,
    ]);
    expect(valuesOf(clicks)).toEqual([1n, 0n, 0n]);
  });

  it('keeps the row with the latest event time (last write wins)', async () => {
    const base = nowMicros() - 10_000_000;
    expect(await writeUsers(['lww'], base + 2, { clicks: [20] })).toMatchObject({
      rowsWritten: 1,
      rowsStale: 0,
    });
    expect(await writeUsers(['lww'], base + 1, { clicks: [10] })).toMatchObject({
      rowsWritten: 0,
      rowsStale: 1,
    });
    expect(await writeUsers(['lww'], base + 2, { clicks: [30] })).toMatchObject({
      rowsWritten: 1,
      rowsStale: 0,
    });
    const response = await server.features.getOnlineFeatures({
      project,
      features: ['user_stats:clicks'],
      entities: { user_id: strings('lww') },
    });
    expect(valuesOf(response.features[0])).toEqual([30n]);
    expect(response.features[0]?.eventTimestamps).toEqual([BigInt(base + 2)]);
  });

  it('serves duplicate rows, several views and composite keys in one request', async () => {
    const eventTime = nowMicros() - 1_000;
    await writeUsers(['d1', 'd2'], eventTime, { clicks: [11, 22] });
    await server.features.writeOnlineFeatures({
      project,
      featureView: 'pair_stats',
      entities: { user_id: strings('d1', 'd1'), merchant_id: int64s(5, 6) },
      eventTimestamps: [BigInt(eventTime), BigInt(eventTime)],
      features: [{ name: 'amount', values: doubles(1.25, 2.5) }],
    });
    const response = await server.features.getOnlineFeatures({
      project,
      features: ['pair_stats:amount', 'user_stats:clicks'],
      entities: { user_id: strings('d1', 'd2', 'd1', 'd1'), merchant_id: int64s(6, 5, 6, 5) },
    });
    expect(response.features.map((feature) => feature.name)).toEqual([
      'pair_stats:amount',
      'user_stats:clicks',
    ]);
    expect(valuesOf(response.features[0])).toEqual([2.5, 0, 2.5, 1.25]);
    expect(response.features[0]?.statuses).toEqual([
      FeatureStatus.PRESENT,
      FeatureStatus.NOT_FOUND,
      FeatureStatus.PRESENT,
      FeatureStatus.PRESENT,
    ]);
    expect(valuesOf(response.features[1])).toEqual([11n, 22n, 11n, 11n]);
  });

  it('resolves a feature set to its features in the set order', async () => {
    await server.registry.applyFeatureSet({
      project,
      featureSet: { name: 'ranker', features: ['user_stats:name', 'user_stats:clicks'] },
    });
    await writeUsers(['fs1'], nowMicros() - 1_000, { clicks: [4] });
    const response = await server.features.getOnlineFeatures({
      project,
      featureSet: 'ranker',
      entities: { user_id: strings('fs1') },
    });
    expect(response.features.map((feature) => feature.name)).toEqual([
      'user_stats:name',
      'user_stats:clicks',
    ]);
    expect(valuesOf(response.features[1])).toEqual([4n]);
  });

  it('reads rows written before a compatible schema change; the new feature is NULL_VALUE on them', async () => {
    const view = {
      name: 'evolving',
      entities: ['user'],
      online: true,
      features: [{ name: 'a', type: ValueType.DOUBLE }],
    };
    await server.registry.applyFeatureView({ project, featureView: view });
    await server.features.writeOnlineFeatures({
      project,
      featureView: 'evolving',
      entities: { user_id: strings('e1') },
      eventTimestamps: [BigInt(nowMicros())],
      features: [{ name: 'a', values: doubles(3) }],
    });
    const applied = await server.registry.applyFeatureView({
      project,
      featureView: { ...view, features: [{ name: 'b', type: ValueType.STRING }, ...view.features] },
    });
    expect(applied.featureView?.version).toBe(2);
    const response = await server.features.getOnlineFeatures({
      project,
      features: ['evolving:a', 'evolving:b'],
      entities: { user_id: strings('e1') },
    });
    expect(valuesOf(response.features[0])).toEqual([3]);
    expect(response.features[0]?.statuses).toEqual([FeatureStatus.PRESENT]);
    expect(response.features[1]?.statuses).toEqual([FeatureStatus.NULL_VALUE]);
  });

  it('enforces validation rules on writes: a bad row fails the batch whole, bounds are inclusive', async () => {
    await server.registry.applyFeatureView({
      project,
      featureView: {
        name: 'bounded',
        entities: ['user'],
        online: true,
        features: [
          { name: 'score', type: ValueType.DOUBLE, required: true, min: -1, max: 1 },
          { name: 'ratio', type: ValueType.FLOAT, max: 0.1 },
          { name: 'clicks', type: ValueType.INT64, min: 0 },
          { name: 'seen', type: ValueType.TIMESTAMP, min: 1_000 },
          { name: 'embedding', type: ValueType.FLOAT_LIST, min: -1, max: 1 },
        ],
      },
    });
    const users = ['b0', 'b1'];
    const eventTime = BigInt(nowMicros());
    type Column = { values: ReturnType<typeof doubles>; nullRows?: number[] };
    const write = (replace: Record<string, Column>) => {
      const columns: Record<string, Column> = {
        score: { values: doubles(0, 0.5) },
        ratio: { values: floats(0, 0.05) },
        clicks: { values: int64s(0, 7) },
        seen: { values: timestamps(1_000, 2_000) },
        embedding: { values: lists(floats(0), floats(-0.5, 0.5)) },
        ...replace,
      };
      return server.features.writeOnlineFeatures({
        project,
        featureView: 'bounded',
        entities: { user_id: strings(...users) },
        eventTimestamps: users.map(() => eventTime),
        features: Object.entries(columns).map(([name, column]) => ({ name, ...column })),
      });
    };
    expect(await failureOf(write({ score: { values: doubles(0, 2) } }))).toEqual({
      code: 'invalid_argument',
      message: 'rows[1].features["score"]: 2 is above the maximum 1',
    });
    expect(await failureOf(write({ score: { values: doubles(0, 0), nullRows: [0] } }))).toEqual({
      code: 'invalid_argument',
      message: 'rows[0].features["score"]: is null but the feature is required',
    });
    expect(await failureOf(write({ score: { values: doubles(Number.NaN, 0) } }))).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('rows[0].features["score"]: NaN is refused'),
    });
    expect(await failureOf(write({ ratio: { values: floats(0.1, 0.11) } }))).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringMatching(/^rows\[1\]\.features\["ratio"\]: 0\.10\d+ is above the maximum 0\.1$/),
    });
    expect(await failureOf(write({ clicks: { values: int64s(0, -1) } }))).toMatchObject({
      code: 'invalid_argument',
      message: 'rows[1].features["clicks"]: -1 is below the minimum 0',
    });
    expect(await failureOf(write({ seen: { values: timestamps(999, 1_000) } }))).toMatchObject({
      code: 'invalid_argument',
      message: 'rows[0].features["seen"]: 999 is below the minimum 1000',
    });
    expect(await failureOf(write({ embedding: { values: lists(floats(0), floats(1, 1.5)) } }))).toEqual({
      code: 'invalid_argument',
      message: 'rows[1].features["embedding"][1]: 1.5 is above the maximum 1',
    });
    const read = () =>
      server.features.getOnlineFeatures({
        project,
        features: ['bounded:score', 'bounded:ratio'],
        entities: { user_id: strings(...users) },
      });
    expect((await read()).features[0]?.statuses).toEqual([FeatureStatus.NOT_FOUND, FeatureStatus.NOT_FOUND]);

    // Exactly at the bounds (a float bound compares as float32, as the values do).
    const written = await write({
      score: { values: doubles(-1, 1) },
      ratio: { values: floats(0.1, 0), nullRows: [1] },
      embedding: { values: lists(floats(-1, 1), floats()) },
    });
    expect(written).toMatchObject({ rowsWritten: 2, rowsStale: 0 });
    const [score, ratio] = (await read()).features;
    expect(valuesOf(score)).toEqual([-1, 1]);
    expect(valuesOf(ratio)).toEqual([Math.fround(0.1), 0]);
    expect(ratio?.statuses).toEqual([FeatureStatus.PRESENT, FeatureStatus.NULL_VALUE]);
  });

  describe('bad input', () => {
    const read = (request: Record<string, unknown>) =>
      failureOf(
        server.features.getOnlineFeatures({
          project,
          features: ['user_stats:clicks'],
          entities: { user_id: strings('a') },
          ...request,
        }),
      );

    it('names the unknown project, view or feature (NOT_FOUND)', async () => {
      expect(await read({ project: 'no_such_project' })).toEqual({
        code: 'not_found',
        message: 'project "no_such_project" does not exist',
      });
      expect(await read({ features: ['nope:clicks'] })).toMatchObject({
        code: 'not_found',
        message: expect.stringContaining('features[0]'),
      });
      expect(await read({ features: ['user_stats:clicks', 'user_stats:nope'] })).toMatchObject({
        code: 'not_found',
        message: expect.stringMatching(/features\[1\].*no feature "nope"/),
      });
      expect(await read({ features: [], featureSet: 'no_set' })).toMatchObject({ code: 'not_found' });
    });

    it('refuses malformed references, keys and batches (INVALID_ARGUMENT / RESOURCE_EXHAUSTED)', async () => {
      expect(await read({ features: ['clicks'] })).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('features[0]'),
      });
      expect(await read({ features: [] })).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('features'),
      });
      expect(await read({ features: ['user_stats:clicks', 'user_stats:clicks'] })).toMatchObject({
        code: 'invalid_argument',
      });
      expect(await read({ entities: { user_id: int64s(1) } })).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('entities["user_id"]: expected string_values'),
      });
      expect(await read({ entities: {} })).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('entities'),
      });
      expect(await read({ entities: { user_id: strings() } })).toMatchObject({ code: 'invalid_argument' });
      expect(await read({ entities: { other: strings('x') } })).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('missing join key "user_id"'),
      });
      expect(
        await read({
          features: ['pair_stats:amount'],
          entities: { user_id: strings('a', 'b'), merchant_id: int64s(1) },
        }),
      ).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('every key vector needs one value per row'),
      });
      const tooMany = Array.from({ length: 501 }, (_, index) => `u${index}`);
      expect(await read({ entities: { user_id: strings(...tooMany) } })).toMatchObject({
        code: 'resource_exhausted',
        message: expect.stringContaining('maximum batch of 500'),
      });
      expect(await read({ features: ['offline_only:x'] })).toMatchObject({ code: 'failed_precondition' });
    });

    it('validates a write whole and writes nothing from a bad batch', async () => {
      const eventTime = BigInt(nowMicros());
      const write = (request: Record<string, unknown>) =>
        failureOf(
          server.features.writeOnlineFeatures({
            project,
            featureView: 'pair_stats',
            entities: { user_id: strings('bad1', 'bad2'), merchant_id: int64s(1, 2) },
            eventTimestamps: [eventTime, eventTime],
            features: [{ name: 'amount', values: doubles(1, 2) }],
            ...request,
          }),
        );
      expect(await write({ eventTimestamps: [] })).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('event_timestamps'),
      });
      expect(await write({ eventTimestamps: [eventTime, 0n] })).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('event_timestamps[1]'),
      });
      expect(await write({ features: [{ name: 'amount', values: strings('1', '2') }] })).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('features[0].values: expected double_values'),
      });
      expect(await write({ features: [{ name: 'amount', values: doubles(1) }] })).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('features[0].values: has 1 values, expected 2'),
      });
      expect(await write({ features: [] })).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('missing feature "amount"'),
      });
      expect(
        await write({
          features: [
            { name: 'amount', values: doubles(1, 2) },
            { name: 'zzz', values: doubles(1, 2) },
          ],
        }),
      ).toMatchObject({
        code: 'not_found',
        message: expect.stringContaining('features[1].name'),
      });
      expect(
        await write({ features: [{ name: 'amount', values: doubles(1, 2), nullRows: [1, 0] }] }),
      ).toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('null_rows[1]'),
      });
      expect(await write({ featureView: 'offline_only' })).toMatchObject({ code: 'failed_precondition' });
      expect(await write({ featureView: 'missing_view' })).toMatchObject({ code: 'not_found' });

      const response = await server.features.getOnlineFeatures({
        project,
        features: ['pair_stats:amount'],
        entities: { user_id: strings('bad1', 'bad2'), merchant_id: int64s(1, 2) },
      });
      expect(response.features[0]?.statuses).toEqual([FeatureStatus.NOT_FOUND, FeatureStatus.NOT_FOUND]);
    });
  });
});
