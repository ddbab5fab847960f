import type { MessageInitShape } from '@bufbuild/protobuf';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminService } from '../../gen/fstore/v1/admin_pb.js';
import type { IngestFeaturesRequestSchema } from '../../gen/fstore/v1/feature_service_pb.js';
import {
  AggregationFunction,
  EventTimeUnit,
  type FeatureViewSchema,
  type StreamAggregationSchema,
  StreamEncoding,
} from '../../gen/fstore/v1/registry_pb.js';
import { ValueType } from '../../gen/fstore/v1/values_pb.js';
import { inputLimits } from '../../src/domain/input-limits.js';
import { createClient, type ServiceClient } from '../../src/grpc/client.js';
import { randomName } from '../support/environment.js';
import { applyFixtures, doubles, failureOf, lists, nowMicros, strings } from '../support/fixtures.js';
import { historicalRequests, retrieveHistorical } from '../support/historical.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

/**
 * Part of "bad input is never INTERNAL": NUL characters (PostgreSQL text and jsonb cannot hold
 * them), integers beyond PostgreSQL's columns and oversize text are refused when the request is
 * validated, with INVALID_ARGUMENT naming the field (or NOT_FOUND), never by the database.
 */

type ViewInit = MessageInitShape<typeof FeatureViewSchema>;
type AggregationInit = MessageInitShape<typeof StreamAggregationSchema>;
type IngestRequest = MessageInitShape<typeof IngestFeaturesRequestSchema>;

const nul = 'a\u0000b';
const nulProblem = 'contains a NUL character';

describe('bad input is refused at validation, never INTERNAL', () => {
  let server: TestServer;
  let admin: ServiceClient<typeof AdminService>;
  const project = randomName('p');

  beforeAll(async () => {
    server = await startTestServer('redis');
    admin = createClient(AdminService, server.address);
    await applyFixtures(server.registry, project);
  });
  afterAll(async () => {
    admin?.close();
    await server?.stop();
  });

  /** The call fails with `code`, its message naming `field` and holding `problem`. */
  async function expectRefused(
    call: Promise<unknown>,
    field: string,
    problem: string | RegExp = nulProblem,
    code = 'invalid_argument',
  ): Promise<void> {
    const failure = await failureOf(call);
    expect(failure.code, failure.message).toBe(code);
    expect(failure.message).toContain(`${field}: `);
    if (typeof problem === 'string') expect(failure.message).toContain(`${field}: ${problem}`);
    else expect(failure.message).toMatch(problem);
  }

  const features = () => [
    { name: 'a', type: ValueType.DOUBLE },
    { name: 'b', type: ValueType.STRING, allowedValues: ['x', 'y'] },
    { name: 'c', type: ValueType.INT64 },
  ];
  const view = (extra: Record<string, unknown> = {}): ViewInit =>
    ({ name: 'texts', entities: ['user'], online: true, features: features(), ...extra }) as ViewInit;
  const withFeature = (index: number, feature: Record<string, unknown>): ViewInit => {
    const changed: Record<string, unknown>[] = features();
    changed[index] = { ...changed[index], ...feature };
    return view({ features: changed });
  };

  const aggregation = (extra: Record<string, unknown> = {}): AggregationInit =>
    ({
      name: 'clicks_agg',
      topic: 'clicks',
      encoding: StreamEncoding.JSON,
      keyFields: ['user'],
      entities: ['user'],
      eventTimeField: 'ts',
      eventTimeUnit: EventTimeUnit.EPOCH_MILLIS,
      aggregations: [
        {
          name: 'clicks_1h',
          function: AggregationFunction.SUM,
          field: 'n',
          windowSize: { seconds: 3600n },
          slide: { seconds: 300n },
        },
      ],
      ...extra,
    }) as AggregationInit;

  it('refuses a NUL in every free-text field of an entity, view, feature set and stream aggregation', async () => {
    const registry = server.registry;
    await expectRefused(
      registry.applyEntity({
        project,
        entity: { name: 'e1', joinKeys: [{ name: 'k', type: 1 }], description: nul },
      }),
      'entity.description',
    );
    await expectRefused(
      registry.applyEntity({ project, entity: { name: nul, joinKeys: [{ name: 'k', type: 1 }] } }),
      'entity.name',
    );
    await expectRefused(
      registry.applyEntity({ project, entity: { name: 'e1', joinKeys: [{ name: nul, type: 1 }] } }),
      'entity.join_keys[0].name',
    );
    await expectRefused(
      registry.applyFeatureView({ project, featureView: view({ description: nul }) }),
      'feature_view.description',
    );
    await expectRefused(
      registry.applyFeatureView({ project, featureView: view({ owner: nul }) }),
      'feature_view.owner',
    );
    await expectRefused(
      registry.applyFeatureView({ project, featureView: view({ tags: { team: nul } }) }),
      'feature_view.tags["team"]',
    );
    await expectRefused(
      registry.applyFeatureView({ project, featureView: view({ tags: { [nul]: 'x' } }) }),
      'feature_view.tags["a\\u0000b"]',
      'the key contains a NUL character',
    );
    await expectRefused(
      registry.applyFeatureView({ project, featureView: withFeature(2, { description: nul }) }),
      'feature_view.features[2].description',
    );
    await expectRefused(
      registry.applyFeatureView({ project, featureView: withFeature(0, { tags: { unit: nul } }) }),
      'feature_view.features[0].tags["unit"]',
    );
    await expectRefused(
      registry.applyFeatureView({ project, featureView: withFeature(1, { allowedValues: ['x', nul] }) }),
      'feature_view.features[1].allowed_values[1]',
    );
    await expectRefused(
      registry.applyFeatureView({ project, featureView: withFeature(1, { name: nul }) }),
      'feature_view.features[1].name',
    );
    await expectRefused(
      registry.applyFeatureView({ project, featureView: view({ entities: ['user', nul] }) }),
      'feature_view.entities[1]',
    );
    await expectRefused(
      registry.applyFeatureView({
        project,
        featureView: view({
          driftMonitor: { referenceProfile: nul, interval: { seconds: 60n }, window: { seconds: 60n } },
        }),
      }),
      'feature_view.drift_monitor.reference_profile',
    );
    await expectRefused(
      registry.applyFeatureSet({
        project,
        featureSet: { name: 's1', features: ['user_stats:clicks'], description: nul },
      }),
      'feature_set.description',
    );
    await expectRefused(
      registry.applyFeatureSet({
        project,
        featureSet: { name: 's1', features: ['user_stats:clicks', `user_stats:${nul}`] },
      }),
      'feature_set.features[1]',
    );
    for (const [extra, field] of [
      [{ description: nul }, 'stream_aggregation.description'],
      [{ owner: nul }, 'stream_aggregation.owner'],
      [{ tags: { team: nul } }, 'stream_aggregation.tags["team"]'],
      [{ keyFields: [nul] }, 'stream_aggregation.key_fields[0]'],
      [{ eventTimeField: nul }, 'stream_aggregation.event_time_field'],
      [
        {
          aggregations: [
            {
              name: 'clicks_1h',
              function: AggregationFunction.SUM,
              field: nul,
              windowSize: { seconds: 3600n },
              slide: { seconds: 300n },
            },
          ],
        },
        'stream_aggregation.aggregations[0].field',
      ],
    ] as const)
      await expectRefused(
        registry.applyStreamAggregation({
          project,
          streamAggregation: aggregation(extra),
        }),
        field,
      );
    // Nothing of it was stored.
    expect(
      (await registry.listFeatureViews({ project })).featureViews.map((item) => item.name),
    ).not.toContain('texts');
    expect((await registry.listStreamAggregations({ project })).streamAggregations).toEqual([]);
  });

  it('refuses a NUL in the names and projects of lookups and deletes', async () => {
    const registry = server.registry;
    await expectRefused(registry.getEntity({ project, name: nul }), 'name');
    await expectRefused(registry.deleteEntity({ project, name: nul }), 'name');
    await expectRefused(registry.getFeatureView({ project, name: nul }), 'name');
    await expectRefused(registry.listFeatureViewVersions({ project, name: nul }), 'name');
    await expectRefused(registry.deleteFeatureView({ project, name: nul }), 'name');
    await expectRefused(registry.getFeatureSet({ project, name: nul }), 'name');
    await expectRefused(registry.deleteFeatureSet({ project, name: nul }), 'name');
    await expectRefused(registry.getStreamAggregation({ project, name: nul }), 'name');
    await expectRefused(registry.deleteStreamAggregation({ project, name: nul }), 'name');
    await expectRefused(registry.listEntities({ project: nul }), 'project');
    await expectRefused(registry.getEntity({ project: nul, name: 'user' }), 'project');
    // A long name cannot exist either: refused before the database is asked.
    await expectRefused(
      registry.getEntity({ project, name: 'x'.repeat(100_000) }),
      'name',
      /longer than 128/,
    );
  });

  it('refuses a NUL in reference profile names and descriptions, and in monitoring lookups', async () => {
    const monitoring = server.monitoring;
    const offline = { source: { case: 'offline' as const, value: { startTime: 1n, endTime: 2n } } };
    await expectRefused(
      monitoring.saveReferenceProfile({
        project,
        name: 'base',
        featureView: 'user_stats',
        source: offline,
        description: nul,
      }),
      'description',
    );
    await expectRefused(
      monitoring.saveReferenceProfile({ project, name: nul, featureView: 'user_stats', source: offline }),
      'name',
    );
    await expectRefused(monitoring.getReferenceProfile({ project, name: nul }), 'name');
    await expectRefused(monitoring.deleteReferenceProfile({ project, name: nul }), 'name');
    await expectRefused(monitoring.listReferenceProfiles({ project, featureView: nul }), 'feature_view');
    await expectRefused(
      monitoring.getDriftReport({
        project,
        featureView: 'user_stats',
        reference: { source: { case: 'saved', value: { name: nul } } },
        current: offline,
      }),
      'reference.saved.name',
    );
  });

  it('refuses a NUL in API key names and audit filters, and finds no key of such an id', async () => {
    await expectRefused(admin.createApiKey({ name: nul, bindings: [{ role: 1, project }] }), 'name');
    // A key id is 12 characters of base32: any other is simply not found.
    expect((await failureOf(admin.revokeApiKey({ id: nul }))).code).toBe('not_found');
    await expectRefused(admin.listAuditEvents({ principal: nul }), 'principal');
    await expectRefused(admin.listAuditEvents({ rpc: nul }), 'rpc');
  });

  it('answers integers beyond PostgreSQL columns with INVALID_ARGUMENT or NOT_FOUND', async () => {
    const notInternal = async (call: Promise<unknown>) => {
      const failure = await failureOf(call);
      expect(['invalid_argument', 'not_found'], `${failure.code}: ${failure.message}`).toContain(
        failure.code,
      );
      return failure;
    };
    for (const version of [2_147_483_647, 2_147_483_648, 4_294_967_295]) {
      await notInternal(server.registry.getFeatureView({ project, name: 'user_stats', version }));
      await notInternal(server.monitoring.getReferenceProfile({ project, name: 'base', version }));
      await notInternal(
        server.monitoring.getDriftReport({
          project,
          featureView: 'user_stats',
          reference: { source: { case: 'saved', value: { name: 'base', version } } },
          current: { source: { case: 'offline', value: { startTime: 1n, endTime: 2n } } },
        }),
      );
    }
    await expectRefused(
      server.registry.getFeatureView({ project, name: 'user_stats', version: 2_147_483_648 }),
      'version',
      /from 1 to 2147483647, got 2147483648/,
    );
    for (const beforeId of [2n ** 63n - 1n, 2n ** 53n])
      await notInternal(admin.listAuditEvents({ beforeId }));
    await notInternal(admin.listAuditEvents({ limit: 4_294_967_295 }));
    await notInternal(admin.listAuditEvents({ startTime: { seconds: 2n ** 62n } }));
    await notInternal(admin.listAuditEvents({ endTime: { seconds: -(2n ** 62n) } }));
    // Expiry times beyond what PostgreSQL's timestamptz (or a JavaScript Date) holds.
    for (const seconds of [2n ** 62n, 9_000_000_000_000n, 300_000_000_000n])
      await expectRefused(
        admin.createApiKey({ name: 'far', bindings: [{ role: 1, project }], expiresAt: { seconds } }),
        'expires_at',
        /must be before/,
      );
    const materialize = async (request: { startTime?: bigint; endTime?: bigint }) => {
      for await (const _ of server.features.materialize({
        project,
        featureViews: ['user_stats'],
        ...request,
      })) {
        // drained
      }
    };
    await expectRefused(materialize({ startTime: 2n ** 62n }), 'start_time', /microseconds/);
    await expectRefused(materialize({ startTime: -(2n ** 63n), endTime: 10n }), 'start_time', /microseconds/);
    await expectRefused(materialize({ startTime: 1n, endTime: 2n ** 63n - 1n }), 'end_time', /microseconds/);
    await notInternal(
      server.registry.applyFeatureView({ project, featureView: view({ ttl: { seconds: 2n ** 62n } }) }),
    );
  });

  it('refuses oversize descriptions, tags and keys, naming the field and the limit', async () => {
    const registry = server.registry;
    const { descriptionBytes, tagsPerObject, tagValueBytes } = inputLimits;
    await expectRefused(
      registry.applyFeatureView({
        project,
        featureView: view({ description: 'd'.repeat(15 * 1024 * 1024) }),
      }),
      'feature_view.description',
      `is 15728640 bytes, more than the limit of ${descriptionBytes} bytes`,
    );
    // Bytes of UTF-8, not characters: 'é' is two.
    await expectRefused(
      registry.applyEntity({
        project,
        entity: {
          name: 'e1',
          joinKeys: [{ name: 'k', type: 1 }],
          description: 'é'.repeat(descriptionBytes / 2 + 1),
        },
      }),
      'entity.description',
      new RegExp(`: is [0-9]+ bytes, more than the limit of ${descriptionBytes} bytes$`),
    );
    await expectRefused(
      registry.applyFeatureView({
        project,
        featureView: withFeature(0, { description: 'd'.repeat(descriptionBytes + 1) }),
      }),
      'feature_view.features[0].description',
      new RegExp(`: is [0-9]+ bytes, more than the limit of ${descriptionBytes} bytes$`),
    );
    const manyTags = Object.fromEntries(
      Array.from({ length: tagsPerObject + 1 }, (_, index) => [`t${index}`, 'v']),
    );
    await expectRefused(
      registry.applyFeatureView({ project, featureView: view({ tags: manyTags }) }),
      'feature_view.tags',
      `${tagsPerObject + 1} tags, at most ${tagsPerObject}`,
    );
    await expectRefused(
      registry.applyFeatureView({
        project,
        featureView: view({ tags: { team: 'v'.repeat(tagValueBytes + 1) } }),
      }),
      'feature_view.tags["team"]',
      new RegExp(`: is [0-9]+ bytes, more than the limit of ${tagValueBytes} bytes$`),
    );
    await expectRefused(
      registry.applyFeatureSet({
        project,
        featureSet: {
          name: 's1',
          features: ['user_stats:clicks'],
          description: 'd'.repeat(descriptionBytes + 1),
        },
      }),
      'feature_set.description',
      new RegExp(`: is [0-9]+ bytes, more than the limit of ${descriptionBytes} bytes$`),
    );
    // At the limit: accepted.
    const atLimit = await registry.applyFeatureView({
      project,
      featureView: view({
        name: 'at_limit',
        description: 'd'.repeat(descriptionBytes),
        tags: { team: 'v'.repeat(tagValueBytes) },
      }),
    });
    expect(atLimit.featureView?.description.length).toBe(descriptionBytes);
  });

  describe('one entity key rule for every path', () => {
    const userStatsRow = (userIds: string[]) => ({
      entities: { user_id: strings(...userIds) },
      eventTimestamps: userIds.map(() => BigInt(nowMicros())),
      features: [{ name: 'score', values: doubles(...userIds.map(() => 1)) }],
    });
    const ingest = (rows: ReturnType<typeof userStatsRow> & { features: unknown[] }, view = 'pair_only') => {
      const requests: IngestRequest[] = [
        { message: { case: 'header', value: { project, featureView: view } } },
        { message: { case: 'rows', value: rows as never } },
        { message: { case: 'end', value: { rowCount: BigInt(rows.eventTimestamps.length) } } },
      ];
      return server.features.ingestFeatures(requests);
    };

    beforeAll(async () => {
      await server.registry.applyFeatureView({
        project,
        featureView: {
          name: 'pair_only',
          entities: ['user'],
          online: true,
          features: [{ name: 'score', type: ValueType.DOUBLE }],
        },
      });
    });

    /** Every key-taking RPC refuses `userIds` alike: the same field, the same problem. */
    async function refusedEverywhere(
      userIds: string[],
      field: string,
      problem: string | RegExp,
    ): Promise<void> {
      await expectRefused(
        server.features.writeOnlineFeatures({ project, featureView: 'pair_only', ...userStatsRow(userIds) }),
        field,
        problem,
      );
      await expectRefused(ingest(userStatsRow(userIds)), field, problem);
      await expectRefused(
        server.features.getOnlineFeatures({
          project,
          features: ['pair_only:score'],
          entities: { user_id: strings(...userIds) },
        }),
        field,
        problem,
      );
      await expectRefused(
        retrieveHistorical(
          server.features,
          historicalRequests({ project, features: ['pair_only:score'] }, [
            {
              entities: { user_id: strings(...userIds) },
              timestamps: userIds.map(() => BigInt(nowMicros())),
            },
          ]),
        ),
        `chunks[0].${field}`,
        problem,
      );
    }

    it('refuses a NUL in a string key value online and offline alike', async () => {
      await refusedEverywhere(['u1', nul, 'u3'], 'rows[1].entities["user_id"]', nulProblem);
    });

    it('refuses a key value above the limit in bytes online and offline alike', async () => {
      const { entityKeyBytes } = inputLimits;
      // 513 × 'é' is 1,026 bytes of UTF-8 in 513 characters.
      await refusedEverywhere(
        ['u1', 'é'.repeat(entityKeyBytes / 2 + 1)],
        'rows[1].entities["user_id"]',
        `is ${entityKeyBytes + 2} bytes, more than the limit of ${entityKeyBytes} bytes`,
      );
      await refusedEverywhere(
        ['k'.repeat(1024 * 1024)],
        'rows[0].entities["user_id"]',
        new RegExp(`: is 1048576 bytes, more than the limit of ${entityKeyBytes} bytes$`),
      );
      // Exactly at the limit: accepted everywhere.
      const longest = 'k'.repeat(entityKeyBytes);
      await server.features.writeOnlineFeatures({
        project,
        featureView: 'pair_only',
        ...userStatsRow([longest]),
      });
      expect((await ingest(userStatsRow([longest]))).rowsIngested).toBe(1n);
      const read = await server.features.getOnlineFeatures({
        project,
        features: ['pair_only:score'],
        entities: { user_id: strings(longest) },
      });
      expect(read.features[0]?.statuses).toHaveLength(1);
    });

    it('numbers the rows of an ingest by their place in the stream', async () => {
      const first = userStatsRow(['u1', 'u2']);
      const second = userStatsRow(['u3', nul]);
      const failure = await failureOf(
        server.features.ingestFeatures([
          { message: { case: 'header', value: { project, featureView: 'pair_only' } } },
          { message: { case: 'rows', value: first } },
          { message: { case: 'rows', value: second } },
          { message: { case: 'end', value: { rowCount: 4n } } },
        ]),
      );
      expect(failure).toEqual({
        code: 'invalid_argument',
        message: `rows chunk 1 (stream rows from 2): rows[3].entities["user_id"]: ${nulProblem}`,
      });
    });

    it('refuses a NUL in string feature values and list elements online and offline alike', async () => {
      await server.registry.applyFeatureView({
        project,
        featureView: {
          name: 'string_values',
          entities: ['user'],
          online: true,
          features: [
            { name: 'name', type: ValueType.STRING },
            { name: 'tags', type: ValueType.STRING_LIST },
          ],
        },
      });
      const rows = (name: string, tags: string[]) => ({
        entities: { user_id: strings('u1') },
        eventTimestamps: [BigInt(nowMicros())],
        features: [
          { name: 'name', values: strings(name) },
          { name: 'tags', values: lists(strings(...tags)) },
        ],
      });
      for (const [values, field] of [
        [rows(nul, ['x']), 'rows[0].features["name"]'],
        [rows('x', ['y', nul]), 'rows[0].features["tags"][1]'],
      ] as const) {
        await expectRefused(
          server.features.writeOnlineFeatures({ project, featureView: 'string_values', ...values }),
          field,
        );
        await expectRefused(ingest(values as never, 'string_values'), field);
      }
      const written = await server.features.writeOnlineFeatures({
        project,
        featureView: 'string_values',
        ...rows('x', ['y']),
      });
      expect(written.rowsWritten).toBe(1);
      expect((await ingest(rows('x', ['y']) as never, 'string_values')).rowsIngested).toBe(1n);
    });
  });
});
