import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FeatureService } from '../../gen/fstore/v1/feature_service_pb.js';
import { FeatureStatus } from '../../gen/fstore/v1/values_pb.js';
import { createClient } from '../../src/grpc/client.js';
import { randomName } from '../support/environment.js';
import { applyFixtures, failureOf, int64s, strings, valuesOf, writePairAmount } from '../support/fixtures.js';
import { checkHealth, reflect } from '../support/grpc-probes.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { startThrowawayRedis, type ThrowawayRedis } from '../support/throwaway-redis.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function eventually<T>(
  probe: () => Promise<T>,
  accept: (value: T) => boolean,
  timeoutMs: number,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch((error: unknown) => error as T);
    if (accept(value)) return value;
    if (Date.now() > deadline)
      throw new Error(`condition not met within ${timeoutMs} ms; last: ${String(value)}`);
    await sleep(100);
  }
}

/** Health, reflection, deadlines, outages and shutdown, against a Redis this file owns. */
describe('serving process lifecycle', () => {
  let redis: ThrowawayRedis;
  let server: TestServer;
  const project = randomName('p');
  const read = (timeoutMs?: number) =>
    server.features.getOnlineFeatures(
      {
        project,
        features: ['pair_stats:amount'],
        entities: { user_id: strings('a'), merchant_id: int64s(1) },
      },
      timeoutMs === undefined ? {} : { timeoutMs },
    );

  beforeAll(async () => {
    redis = await startThrowawayRedis();
    server = await startTestServer('redis', { redisUrl: redis.url });
    await applyFixtures(server.registry, project);
    await writePairAmount(server.features, project, 'a', 1, 9.5);
  });
  afterAll(async () => {
    await server?.stop();
    await redis?.stop();
  });

  it('answers grpc.health.v1 for the server and each service', async () => {
    expect(await checkHealth(server.address)).toBe('SERVING');
    expect(await checkHealth(server.address, 'fstore.v1.FeatureService')).toBe('SERVING');
    expect(await checkHealth(server.address, 'fstore.v1.RegistryService')).toBe('SERVING');
  });

  it('lists its services and serves their descriptors through reflection', async () => {
    const listed = await reflect(server.address, { list_services: '' });
    const names = (listed.list_services_response as { service: { name: string }[] }).service.map(
      (service) => service.name,
    );
    expect(names).toEqual(expect.arrayContaining(['fstore.v1.FeatureService', 'fstore.v1.RegistryService']));
    const files = await reflect(server.address, { file_containing_symbol: 'fstore.v1.FeatureService' });
    const descriptors = (files.file_descriptor_response as { file_descriptor_proto: Buffer[] })
      .file_descriptor_proto;
    const text = descriptors.map((bytes) => Buffer.from(bytes).toString('latin1')).join('\n');
    expect(text).toContain('fstore/v1/feature_service.proto');
    expect(text).toContain('fstore/v1/values.proto');
  });

  it('honours the call deadline when the store is slow', async () => {
    expect(valuesOf((await read()).features[0])).toEqual([9.5]);
    await redis.command('CLIENT', 'PAUSE', '700', 'ALL');
    const started = Date.now();
    expect(await failureOf(read(150))).toMatchObject({ code: 'deadline_exceeded' });
    expect(Date.now() - started).toBeLessThan(600);
    await sleep(700);
    expect(valuesOf((await read()).features[0])).toEqual([9.5]);
  });

  it('fails fast with UNAVAILABLE while Redis is down, reports NOT_SERVING, and recovers by itself', async () => {
    await redis.stop();
    const started = Date.now();
    expect(await failureOf(read())).toMatchObject({
      code: 'unavailable',
      message: expect.stringContaining('Redis'),
    });
    expect(Date.now() - started).toBeLessThan(1_500);
    await eventually(
      () => checkHealth(server.address),
      (status) => status === 'NOT_SERVING',
      5_000,
    );

    await redis.start(); // empty again: the row written before is gone
    const response = await eventually(
      () => read(),
      (value) => Array.isArray((value as { features?: unknown[] }).features),
      10_000,
    );
    expect(response.features[0]?.statuses).toEqual([FeatureStatus.NOT_FOUND]);
    await eventually(
      () => checkHealth(server.address),
      (status) => status === 'SERVING',
      5_000,
    );
  });

  it('drains in-flight calls on shutdown, after reporting NOT_SERVING', async () => {
    const other = await startTestServer('redis', { redisUrl: redis.url, shutdownGraceMs: 3_000 });
    try {
      await applyFixtures(other.registry, project);
      await redis.command('CLIENT', 'PAUSE', '600', 'ALL');
      const inFlight = other.features.getOnlineFeatures(
        {
          project,
          features: ['pair_stats:amount'],
          entities: { user_id: strings('a'), merchant_id: int64s(1) },
        },
        { timeoutMs: 5_000 },
      );
      await sleep(100);
      const stopping = other.stop();
      await sleep(50);
      // The in-flight call completes normally once Redis answers.
      const response = await inFlight;
      expect(response.features[0]?.statuses).toHaveLength(1);
      await stopping;
      const late = createClient(FeatureService, other.address);
      try {
        expect(
          await failureOf(
            late.getOnlineFeatures({ project, features: ['pair_stats:amount'] }, { timeoutMs: 1_000 }),
          ),
        ).toMatchObject({
          code: 'unavailable',
        });
      } finally {
        late.close();
      }
    } finally {
      await other.stop();
    }
  });

  it('cuts calls still running when the drain time is over', async () => {
    const other = await startTestServer('redis', {
      redisUrl: redis.url,
      shutdownGraceMs: 300,
      redisCommandTimeoutMs: 5_000,
    });
    try {
      await applyFixtures(other.registry, project);
      await redis.command('CLIENT', 'PAUSE', '2000', 'ALL');
      const stuck = failureOf(
        other.features.getOnlineFeatures(
          {
            project,
            features: ['pair_stats:amount'],
            entities: { user_id: strings('a'), merchant_id: int64s(1) },
          },
          { timeoutMs: 10_000 },
        ),
      );
      await sleep(100);
      const started = Date.now();
      const stopping = other.stop();
      const failure = await stuck;
      // Cut once the 300 ms drain time is over, not when Redis answers (the pause lasts 2 s).
      expect(Date.now() - started).toBeLessThan(1_500);
      expect(failure.code).toBe('cancelled');
      await stopping;
    } finally {
      await other.stop();
      await sleep(1_000); // let the pause end before the next test
    }
  });

  it('refuses a request larger than the maximum message size with RESOURCE_EXHAUSTED', async () => {
    const small = await startTestServer('memory', { maxMessageBytes: 1024 });
    try {
      const ids = Array.from({ length: 200 }, (_, index) => `a_rather_long_user_id_${index}`);
      expect(
        await failureOf(
          small.features.getOnlineFeatures({
            project,
            features: ['pair_stats:amount'],
            entities: { user_id: strings(...ids) },
          }),
        ),
      ).toMatchObject({ code: 'resource_exhausted' });
    } finally {
      await small.stop();
    }
  });
});
