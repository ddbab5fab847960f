import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ValueType } from '../../gen/fstore/v1/values_pb.js';
import { randomName } from '../support/environment.js';
import { applyFixtures, failureOf, int64s, strings, valuesOf, writePairAmount } from '../support/fixtures.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { startThrowawayPostgres, type ThrowawayPostgres } from '../support/throwaway-postgres.js';

/** PostgreSQL going away under a running server: registry calls fail fast, serving goes on. */
describe('registry database outage', () => {
  let postgres: ThrowawayPostgres;
  let server: TestServer;
  const project = randomName('p');
  const read = () =>
    server.features.getOnlineFeatures({
      project,
      features: ['pair_stats:amount'],
      entities: { user_id: strings('a'), merchant_id: int64s(1) },
    });

  beforeAll(async () => {
    postgres = await startThrowawayPostgres();
    server = await startTestServer(
      'memory',
      { postgresUrl: postgres.connectionString },
      { keepSchema: true },
    );
    await applyFixtures(server.registry, project);
    await writePairAmount(server.features, project, 'a', 1, 6);
  });
  afterAll(async () => {
    await server?.stop();
    await postgres?.destroy();
  });

  it('answers registry calls with UNAVAILABLE, keeps serving from its cache, and recovers', async () => {
    await postgres.stop();
    const started = Date.now();
    expect(await failureOf(server.registry.listFeatureViews({ project }))).toMatchObject({
      code: 'unavailable',
      message: expect.stringContaining('PostgreSQL'),
    });
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(valuesOf((await read()).features[0])).toEqual([6]);

    await postgres.start();
    const deadline = Date.now() + 15_000;
    for (;;) {
      const listed = await server.registry.listFeatureViews({ project }).catch(() => undefined);
      if (listed) break;
      expect(Date.now()).toBeLessThan(deadline);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    await server.registry.applyFeatureView({
      project,
      featureView: {
        name: 'after_outage',
        entities: ['user'],
        online: true,
        features: [{ name: 'f', type: ValueType.DOUBLE }],
      },
    });
    const response = await server.features.getOnlineFeatures({
      project,
      features: ['after_outage:f'],
      entities: { user_id: strings('a') },
    });
    expect(response.features).toHaveLength(1);
  });
});
