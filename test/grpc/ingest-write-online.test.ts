import type { MessageInitShape } from '@bufbuild/protobuf';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IngestFeaturesRequestSchema } from '../../gen/fstore/v1/feature_service_pb.js';
import { FeatureStatus, ValueType } from '../../gen/fstore/v1/values_pb.js';
import { randomName } from '../support/environment.js';
import { doubles, failureOf, strings, valuesOf } from '../support/fixtures.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { startThrowawayRedis, type ThrowawayRedis } from '../support/throwaway-redis.js';

type Request = MessageInitShape<typeof IngestFeaturesRequestSchema>;

const t = (step: number) => 1_767_225_600_000_000 + step * 1_000_000; // 2026-01-01 + seconds

interface Row {
  readonly user: string;
  readonly time: number;
  readonly score: number;
  /** Created time; 1 when not given. */
  readonly created?: number;
}

/**
 * IngestFeatures with write_online: offline commit first, then the latest row per entity online
 * through last-write-wins, against PostgreSQL and a Redis this file owns (one test stops it).
 */
describe('IngestFeatures with write_online', () => {
  let redis: ThrowawayRedis;
  let server: TestServer;
  const project = randomName('p');

  const header = (featureView = 'scores', writeOnline = true): Request => ({
    message: { case: 'header', value: { project, featureView, writeOnline } },
  });
  const chunk = (rows: readonly Row[]): Request => ({
    message: {
      case: 'rows',
      value: {
        entities: { user_id: strings(...rows.map((row) => row.user)) },
        eventTimestamps: rows.map((row) => BigInt(row.time)),
        createdTimestamps: rows.map((row) => BigInt(row.created ?? 1)),
        features: [{ name: 'score', values: doubles(...rows.map((row) => row.score)) }],
      },
    },
  });
  const end = (rowCount: number): Request => ({
    message: { case: 'end', value: { rowCount: BigInt(rowCount) } },
  });
  const ingest = (...chunks: Row[][]) =>
    server.features.ingestFeatures([
      header(),
      ...chunks.map(chunk),
      end(chunks.reduce((sum, rows) => sum + rows.length, 0)),
    ]);
  const read = (...users: string[]) =>
    server.features.getOnlineFeatures({
      project,
      features: ['scores:score'],
      entities: { user_id: strings(...users) },
    });

  beforeAll(async () => {
    redis = await startThrowawayRedis();
    server = await startTestServer('redis', { redisUrl: redis.url });
    await server.registry.applyEntity({
      project,
      entity: { name: 'user', joinKeys: [{ name: 'user_id', type: ValueType.STRING }] },
    });
    await server.registry.applyFeatureView({
      project,
      featureView: {
        name: 'scores',
        entities: ['user'],
        online: true,
        features: [{ name: 'score', type: ValueType.DOUBLE }],
      },
    });
    await server.registry.applyFeatureView({
      project,
      featureView: {
        name: 'offline_only',
        entities: ['user'],
        online: false,
        features: [{ name: 'score', type: ValueType.DOUBLE }],
      },
    });
  });
  afterAll(async () => {
    await server?.stop();
    await redis?.stop();
  });

  it('writes the latest row per entity online: greatest event time, ties by latest created time', async () => {
    const response = await ingest(
      [
        { user: 'a', time: t(1), score: 1 },
        { user: 'a', time: t(3), score: 3 },
        { user: 'b', time: t(2), score: 20, created: 100 },
      ],
      [
        { user: 'a', time: t(2), score: 2 }, // later in the stream, older in time: loses
        { user: 'b', time: t(2), score: 21, created: 200 }, // same event time, recorded later: wins
        { user: 'b', time: t(2), score: 19, created: 50 },
        { user: 'c', time: t(1), score: 30 },
      ],
    );
    expect(response).toMatchObject({ rowsIngested: 7n, rowsWrittenOnline: 3n, rowsStaleOnline: 0n });
    const online = await read('a', 'b', 'c');
    expect(valuesOf(online.features[0])).toEqual([3, 21, 30]);
    expect(online.features[0]?.eventTimestamps).toEqual([BigInt(t(3)), BigInt(t(2)), BigInt(t(1))]);
  });

  it('never overwrites a newer online row: such rows are counted stale', async () => {
    await server.features.writeOnlineFeatures({
      project,
      featureView: 'scores',
      entities: { user_id: strings('d') },
      eventTimestamps: [BigInt(t(10))],
      features: [{ name: 'score', values: doubles(99) }],
    });
    const response = await ingest([
      { user: 'd', time: t(5), score: 5 },
      { user: 'e', time: t(1), score: 1 },
    ]);
    expect(response).toMatchObject({ rowsIngested: 2n, rowsWrittenOnline: 1n, rowsStaleOnline: 1n });
    expect(valuesOf((await read('d', 'e')).features[0])).toEqual([99, 1]);
  });

  it('writes nothing online when the ingest fails or is cancelled', async () => {
    const good = chunk([{ user: 'f', time: t(1), score: 1 }]);
    const bad: Request = {
      message: {
        case: 'rows',
        value: {
          entities: { user_id: strings('g') },
          eventTimestamps: [], // one per row is required
          features: [{ name: 'score', values: doubles(1) }],
        },
      },
    };
    expect(await failureOf(server.features.ingestFeatures([header(), good, bad, end(2)]))).toMatchObject({
      code: 'invalid_argument',
    });
    expect(await failureOf(server.features.ingestFeatures([header(), good, end(5)]))).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('end.row_count'),
    });
    expect(await failureOf(server.features.ingestFeatures([header(), good]))).toMatchObject({
      code: 'cancelled',
    });
    async function* givingUp(): AsyncGenerator<Request> {
      yield header();
      yield good;
      await new Promise((resolve) => setTimeout(resolve, 100));
      throw new Error('the source file is truncated');
    }
    expect(await failureOf(server.features.ingestFeatures(givingUp()))).toMatchObject({ code: 'cancelled' });
    await new Promise((resolve) => setTimeout(resolve, 300)); // the server sees the cancellation
    expect((await read('f', 'g')).features[0]?.statuses).toEqual([
      FeatureStatus.NOT_FOUND,
      FeatureStatus.NOT_FOUND,
    ]);
  });

  it('refuses write_online for a view not served online (FAILED_PRECONDITION)', async () => {
    const rows = chunk([{ user: 'h', time: t(1), score: 1 }]);
    expect(await failureOf(server.features.ingestFeatures([header('offline_only'), rows, end(1)]))).toEqual({
      code: 'failed_precondition',
      message: 'header.write_online: feature view "offline_only" is not served online',
    });
    // Without write_online the same rows are welcome.
    expect(await server.features.ingestFeatures([header('offline_only', false), rows, end(1)])).toMatchObject(
      { rowsIngested: 1n, rowsWrittenOnline: 0n, rowsStaleOnline: 0n },
    );
  });

  it('fails with UNAVAILABLE when the online write fails after the commit; Materialize repeats it', async () => {
    await redis.stop();
    const failure = await failureOf(
      ingest([
        { user: 'i', time: t(4), score: 4 },
        { user: 'i', time: t(6), score: 6 },
        { user: 'j', time: t(2), score: 2 },
      ]),
    );
    expect(failure.code).toBe('unavailable');
    expect(failure.message).toContain('the 3 rows ARE committed to the offline store');
    const range = /from start_time (\d+) to end_time (\d+)/.exec(failure.message);
    expect(range?.slice(1).map(Number)).toEqual([t(2), t(6) + 1]);

    await redis.start(); // empty again
    const deadline = Date.now() + 10_000;
    for (;;) {
      const online = await read('i', 'j').catch(() => undefined);
      if (online) {
        expect(online.features[0]?.statuses).toEqual([FeatureStatus.NOT_FOUND, FeatureStatus.NOT_FOUND]);
        break;
      }
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const runs = server.features.materialize({
      project,
      featureViews: ['scores'],
      startTime: BigInt(range?.[1] ?? 0),
      endTime: BigInt(range?.[2] ?? 0),
    });
    for await (const progress of runs) if (progress.done) expect(progress.rowsWritten).toBeGreaterThan(0n);
    expect(valuesOf((await read('i', 'j')).features[0])).toEqual([6, 2]);
  });
});
