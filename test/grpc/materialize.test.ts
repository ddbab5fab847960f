import type { MessageInitShape } from '@bufbuild/protobuf';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type {
  IngestFeaturesRequestSchema,
  MaterializeResponse,
} from '../../gen/fstore/v1/feature_service_pb.js';
import { FeatureStatus, ValueType } from '../../gen/fstore/v1/values_pb.js';
import { randomName } from '../support/environment.js';
import { doubles, failureOf, strings, valuesOf } from '../support/fixtures.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

type Request = MessageInitShape<typeof IngestFeaturesRequestSchema>;

const t = (step: number) => 1_767_225_600_000_000 + step * 1_000_000; // 2026-01-01 + seconds

/** Offline rows → online store through Materialize, against PostgreSQL and a real Redis. */
describe('Materialize', () => {
  let server: TestServer;
  const project = randomName('p');

  async function ingest(
    rows: { user: string; time: number; score: number | null; created?: number }[],
  ): Promise<void> {
    const requests: Request[] = [
      { message: { case: 'header', value: { project, featureView: 'scores' } } },
      {
        message: {
          case: 'rows',
          value: {
            entities: { user_id: strings(...rows.map((row) => row.user)) },
            eventTimestamps: rows.map((row) => BigInt(row.time)),
            createdTimestamps: rows.some((row) => row.created)
              ? rows.map((row) => BigInt(row.created ?? 1))
              : [],
            features: [
              {
                name: 'score',
                values: doubles(...rows.map((row) => row.score ?? 0)),
                nullRows: rows.flatMap((row, index) => (row.score === null ? [index] : [])),
              },
            ],
          },
        },
      },
      { message: { case: 'end', value: { rowCount: BigInt(rows.length) } } },
    ];
    await server.features.ingestFeatures(requests);
  }

  async function materialize(request: Record<string, unknown>): Promise<MaterializeResponse[]> {
    const progress: MaterializeResponse[] = [];
    for await (const message of server.features.materialize({ project, ...request })) progress.push(message);
    return progress;
  }

  const read = (...users: string[]) =>
    server.features.getOnlineFeatures({
      project,
      features: ['scores:score'],
      entities: { user_id: strings(...users) },
    });

  beforeAll(async () => {
    server = await startTestServer('redis');
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
        features: [{ name: 'x', type: ValueType.DOUBLE }],
      },
    });
    await ingest([
      { user: 'a', time: t(1), score: 1 },
      { user: 'a', time: t(3), score: 3 },
      { user: 'a', time: t(2), score: 2 },
      { user: 'b', time: t(1), score: 10 },
      { user: 'c', time: t(20), score: 30 }, // after the first range
      { user: 'd', time: t(1), score: 5, created: 100 },
      { user: 'd', time: t(1), score: 6, created: 200 }, // same event time, recorded later: wins
      { user: 'e', time: t(2), score: null },
    ]);
  });
  afterAll(async () => server?.stop());

  it('copies the latest row per entity of the range, ties by created time, and records the run', async () => {
    const progress = await materialize({
      featureViews: ['scores'],
      startTime: BigInt(t(0)),
      endTime: BigInt(t(10)),
    });
    const last = progress.at(-1);
    expect(last).toMatchObject({
      featureView: 'scores',
      done: true,
      rowsRead: 4n,
      rowsWritten: 4n,
      rowsStale: 0n,
    });
    expect(last?.startTime).toBe(BigInt(t(0)));
    const response = await read('a', 'b', 'c', 'd', 'e');
    expect(valuesOf(response.features[0])).toEqual([3, 10, 0, 6, 0]);
    expect(response.features[0]?.statuses).toEqual([
      FeatureStatus.PRESENT,
      FeatureStatus.PRESENT,
      FeatureStatus.NOT_FOUND,
      FeatureStatus.PRESENT,
      FeatureStatus.NULL_VALUE,
    ]);
    expect(response.features[0]?.eventTimestamps[0]).toBe(BigInt(t(3)));
  });

  it('never overwrites a newer online row, so runs can repeat', async () => {
    await server.features.writeOnlineFeatures({
      project,
      featureView: 'scores',
      entities: { user_id: strings('b') },
      eventTimestamps: [BigInt(t(5))],
      features: [{ name: 'score', values: doubles(99) }],
    });
    const progress = await materialize({
      featureViews: ['scores'],
      startTime: BigInt(t(0)),
      endTime: BigInt(t(10)),
    });
    expect(progress.at(-1)).toMatchObject({ done: true, rowsRead: 4n, rowsWritten: 3n, rowsStale: 1n });
    expect(valuesOf((await read('a', 'b')).features[0])).toEqual([3, 99]);
  });

  it('continues an incremental run from the recorded end of the previous one', async () => {
    const progress = await materialize({ incremental: true, endTime: BigInt(t(30)) });
    expect(progress.at(-1)).toMatchObject({
      featureView: 'scores',
      done: true,
      startTime: BigInt(t(10)),
      endTime: BigInt(t(30)),
      rowsRead: 1n,
    });
    expect(valuesOf((await read('c')).features[0])).toEqual([30]);
    const again = await materialize({ incremental: true, endTime: BigInt(t(30)) });
    expect(again).toEqual([expect.objectContaining({ done: true, rowsRead: 0n })]);
  });

  it('refuses unknown or offline-only views and empty ranges', async () => {
    expect(
      await failureOf(materialize({ featureViews: ['nope'], startTime: 0n, endTime: 1n })),
    ).toMatchObject({
      code: 'not_found',
      message: expect.stringContaining('feature_views[0]'),
    });
    expect(
      await failureOf(materialize({ featureViews: ['offline_only'], startTime: 0n, endTime: 1n })),
    ).toMatchObject({
      code: 'failed_precondition',
    });
    expect(await failureOf(materialize({ startTime: BigInt(t(5)), endTime: BigInt(t(5)) }))).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('start_time'),
    });
  });
});
