import type { MessageInitShape } from '@bufbuild/protobuf';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApplyOutcome, type FeatureSchema } from '../../gen/fstore/v1/registry_pb.js';
import { FeatureStatus, ValueType } from '../../gen/fstore/v1/values_pb.js';
import { randomName } from '../support/environment.js';
import { applyFixtures, doubles, failureOf, nowMicros, strings, userEntity } from '../support/fixtures.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

const view = (features: { name: string; type: ValueType }[], extra: Record<string, unknown> = {}) => ({
  name: 'orders',
  entities: ['user'],
  online: true,
  features,
  ...extra,
});

describe('RegistryService over gRPC', () => {
  let server: TestServer;
  let replica: TestServer;
  const project = randomName('p');

  beforeAll(async () => {
    server = await startTestServer('redis');
    // A second serving process on the same registry schema, as another replica would be.
    replica = await startTestServer(
      'redis',
      { postgresSchema: server.config.postgresSchema, redisKeyPrefix: server.config.redisKeyPrefix },
      { keepSchema: true },
    );
    await applyFixtures(server.registry, project);
  });
  afterAll(async () => {
    await replica?.stop();
    await server?.stop();
  });

  it('applies, gets, lists and deletes entities, views and feature sets', async () => {
    expect((await server.registry.getEntity({ project, name: 'user' })).entity).toMatchObject({
      name: 'user',
      joinKeys: [{ name: 'user_id', type: ValueType.STRING }],
      description: 'a customer',
    });
    expect((await server.registry.applyEntity({ project, entity: userEntity })).outcome).toBe(
      ApplyOutcome.UNCHANGED,
    );
    const entities = await server.registry.listEntities({ project });
    expect(entities.entities.map((entity) => entity.name).sort()).toEqual(['merchant', 'user']);
    const views = await server.registry.listFeatureViews({ project });
    expect(views.featureViews.map((item) => item.name).sort()).toEqual([
      'offline_only',
      'pair_stats',
      'user_stats',
    ]);
    expect((await server.registry.listProjects({})).projects).toContain(project);

    await server.registry.applyFeatureSet({
      project,
      featureSet: { name: 'model_a', features: ['pair_stats:amount'] },
    });
    expect((await server.registry.getFeatureSet({ project, name: 'model_a' })).featureSet?.features).toEqual([
      'pair_stats:amount',
    ]);
    expect(await failureOf(server.registry.deleteFeatureView({ project, name: 'pair_stats' }))).toMatchObject(
      {
        code: 'failed_precondition',
        message: expect.stringContaining('model_a'),
      },
    );
    await server.registry.deleteFeatureSet({ project, name: 'model_a' });
    expect((await server.registry.listFeatureSets({ project })).featureSets).toEqual([]);
    expect(await failureOf(server.registry.getFeatureSet({ project, name: 'model_a' }))).toMatchObject({
      code: 'not_found',
    });
  });

  it('versions a view: compatible changes add a version, incompatible ones need force', async () => {
    const v1 = await server.registry.applyFeatureView({
      project,
      featureView: view([{ name: 'total', type: ValueType.DOUBLE }]),
    });
    expect(v1).toMatchObject({ outcome: ApplyOutcome.CREATED, featureView: { version: 1 } });
    const again = await server.registry.applyFeatureView({
      project,
      featureView: view([{ name: 'total', type: ValueType.DOUBLE }]),
    });
    expect(again).toMatchObject({ outcome: ApplyOutcome.UNCHANGED, featureView: { version: 1 } });

    const v2 = await server.registry.applyFeatureView({
      project,
      featureView: view([
        { name: 'total', type: ValueType.DOUBLE },
        { name: 'count', type: ValueType.INT64 },
      ]),
    });
    expect(v2).toMatchObject({ outcome: ApplyOutcome.UPDATED, featureView: { version: 2 } });

    const conflicting = view([{ name: 'total', type: ValueType.STRING }]);
    const refused = await failureOf(server.registry.applyFeatureView({ project, featureView: conflicting }));
    expect(refused.code).toBe('failed_precondition');
    expect(refused.message).toContain('"total" changes type from double to string');
    expect(refused.message).toContain('"count" is removed');

    const forced = await server.registry.applyFeatureView({ project, featureView: conflicting, force: true });
    expect(forced).toMatchObject({ outcome: ApplyOutcome.UPDATED, featureView: { version: 3 } });

    const history = await server.registry.listFeatureViewVersions({ project, name: 'orders' });
    expect(
      history.versions.map((version) => [version.version, version.features.map((feature) => feature.name)]),
    ).toEqual([
      [1, ['total']],
      [2, ['total', 'count']],
      [3, ['total']],
    ]);
    const first = await server.registry.getFeatureView({ project, name: 'orders', version: 1 });
    expect(first.featureView?.features[0]?.type).toBe(ValueType.DOUBLE);
  });

  it('carries validation rules: round trip, a new version per change without force', async () => {
    type FeatureInit = MessageInitShape<typeof FeatureSchema>;
    const ruled = (features: FeatureInit[]) => ({
      name: 'ruled',
      entities: ['user'],
      online: true,
      features,
    });
    const rules: FeatureInit[] = [
      { name: 'amount', type: ValueType.DOUBLE, required: true, min: 0, max: 1e6 },
      { name: 'count', type: ValueType.INT64, min: -5 },
      { name: 'at', type: ValueType.TIMESTAMP, max: 4_102_444_800_000_000 },
      { name: 'weights', type: ValueType.FLOAT_LIST, min: -1, max: 1 },
      { name: 'label', type: ValueType.STRING, required: true },
      { name: 'free', type: ValueType.DOUBLE },
    ];
    const rulesOf = (features: readonly { name: string; required: boolean; min?: number; max?: number }[]) =>
      features.map(({ name, required, min, max }) => ({ name, required, min, max }));
    const expected = [
      { name: 'amount', required: true, min: 0, max: 1e6 },
      { name: 'count', required: false, min: -5, max: undefined },
      { name: 'at', required: false, min: undefined, max: 4_102_444_800_000_000 },
      { name: 'weights', required: false, min: -1, max: 1 },
      { name: 'label', required: true, min: undefined, max: undefined },
      { name: 'free', required: false, min: undefined, max: undefined },
    ];

    const created = await server.registry.applyFeatureView({ project, featureView: ruled(rules) });
    expect(created).toMatchObject({ outcome: ApplyOutcome.CREATED, featureView: { version: 1 } });
    expect(rulesOf(created.featureView?.features ?? [])).toEqual(expected);
    // Read back from PostgreSQL, by the other replica too: a bound of 0 stays set.
    for (const reader of [server, replica]) {
      const stored = await reader.registry.getFeatureView({ project, name: 'ruled' });
      expect(rulesOf(stored.featureView?.features ?? [])).toEqual(expected);
    }
    expect((await server.registry.applyFeatureView({ project, featureView: ruled(rules) })).outcome).toBe(
      ApplyOutcome.UNCHANGED,
    );

    // Tightening and loosening rules are both compatible: old rows stay readable.
    const tightened = rules.map((feature) =>
      feature.name === 'amount'
        ? { ...feature, max: 1e3 }
        : feature.name === 'free'
          ? { ...feature, required: true }
          : feature,
    );
    expect(await server.registry.applyFeatureView({ project, featureView: ruled(tightened) })).toMatchObject({
      outcome: ApplyOutcome.UPDATED,
      featureView: { version: 2 },
    });
    const loosened = tightened.map((feature) =>
      feature.name === 'count' ? { ...feature, min: undefined } : feature,
    );
    expect(await server.registry.applyFeatureView({ project, featureView: ruled(loosened) })).toMatchObject({
      outcome: ApplyOutcome.UPDATED,
      featureView: { version: 3 },
    });
    const history = await server.registry.listFeatureViewVersions({ project, name: 'ruled' });
    expect(
      history.versions.map((version) => {
        const [amount, count, , , , free] = version.features;
        return [version.version, amount?.max, count?.min, free?.required];
      }),
    ).toEqual([
      [1, 1e6, -5, false],
      [2, 1e3, -5, true],
      [3, 1e3, undefined, true],
    ]);
  });

  it('refuses bad validation rules naming the feature and the rule', async () => {
    const refused = (feature: MessageInitShape<typeof FeatureSchema>) =>
      failureOf(
        server.registry.applyFeatureView({
          project,
          featureView: {
            name: 'bad_rules',
            entities: ['user'],
            features: [{ name: 'ok', type: ValueType.DOUBLE }, feature],
          },
        }),
      );
    expect(await refused({ name: 'label', type: ValueType.STRING, min: 0 })).toEqual({
      code: 'invalid_argument',
      message:
        'feature_view.features[1].min: applies only to int64, double, float and timestamp features and their lists, not to string',
    });
    expect(await refused({ name: 'flag', type: ValueType.BOOL_LIST, max: 1 })).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('feature_view.features[1].max: applies only to'),
    });
    expect(await refused({ name: 'x', type: ValueType.DOUBLE, min: 5, max: 1 })).toEqual({
      code: 'invalid_argument',
      message: 'feature_view.features[1].min: 5 is above the maximum 1',
    });
    expect(await refused({ name: 'x', type: ValueType.DOUBLE, max: Number.NaN })).toEqual({
      code: 'invalid_argument',
      message: 'feature_view.features[1].max: must be a finite number, got NaN',
    });
    expect(await refused({ name: 'x', type: ValueType.INT64, min: Number.NEGATIVE_INFINITY })).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('feature_view.features[1].min: must be a finite number'),
    });
    expect(await failureOf(server.registry.getFeatureView({ project, name: 'bad_rules' }))).toMatchObject({
      code: 'not_found',
    });
  });

  it('rejects malformed definitions naming the field', async () => {
    expect(
      await failureOf(server.registry.applyFeatureView({ project, featureView: view([]) })),
    ).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('feature_view.features'),
    });
    expect(
      await failureOf(
        server.registry.applyFeatureView({
          project,
          featureView: view([{ name: 'x', type: ValueType.UNSPECIFIED }]),
        }),
      ),
    ).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('feature_view.features[0].type'),
    });
    expect(
      await failureOf(
        server.registry.applyFeatureView({
          project,
          featureView: { ...view([{ name: 'x', type: ValueType.DOUBLE }]), entities: ['ghost'] },
        }),
      ),
    ).toMatchObject({ code: 'not_found', message: expect.stringContaining('feature_view.entities[0]') });
    expect(
      await failureOf(server.registry.applyEntity({ project: 'bad-project', entity: userEntity })),
    ).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('project'),
    });
    expect(
      await failureOf(
        server.registry.applyEntity({
          project,
          entity: { name: 'e', joinKeys: [{ name: 'k', type: ValueType.DOUBLE }] },
        }),
      ),
    ).toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('entity.join_keys[0].type'),
    });
    expect(
      await failureOf(
        server.registry.applyFeatureView({
          project,
          featureView: view([{ name: 'x', type: ValueType.DOUBLE }], { ttl: { seconds: 1n, nanos: 5 } }),
        }),
      ),
    ).toMatchObject({ code: 'invalid_argument', message: expect.stringContaining('feature_view.ttl') });
    expect(await failureOf(server.registry.getFeatureView({ project, name: 'nope' }))).toMatchObject({
      code: 'not_found',
    });
  });

  it('makes a change visible on another replica through the change feed, without polling delay', async () => {
    const name = 'fresh_view';
    await server.registry.applyFeatureView({
      project,
      featureView: {
        name,
        entities: ['user'],
        online: true,
        features: [{ name: 'v', type: ValueType.DOUBLE }],
      },
    });
    await server.features.writeOnlineFeatures({
      project,
      featureView: name,
      entities: { user_id: strings('r1') },
      eventTimestamps: [BigInt(nowMicros())],
      features: [{ name: 'v', values: doubles(4) }],
    });
    const started = Date.now();
    for (;;) {
      const result = await replica.features
        .getOnlineFeatures({ project, features: [`${name}:v`], entities: { user_id: strings('r1') } })
        .catch(() => undefined);
      if (result) {
        expect(result.features[0]?.statuses).toEqual([FeatureStatus.PRESENT]);
        break;
      }
      expect(Date.now() - started).toBeLessThan(2_000);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  });
});
