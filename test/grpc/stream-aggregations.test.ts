import type { MessageInitShape } from '@bufbuild/protobuf';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AggregationFunction,
  ApplyOutcome,
  EventTimeUnit,
  FeatureViewSource,
  type StreamAggregationSchema,
  StreamEncoding,
} from '../../gen/fstore/v1/registry_pb.js';
import { FeatureStatus, ValueType } from '../../gen/fstore/v1/values_pb.js';
import { randomName } from '../support/environment.js';
import { applyFixtures, failureOf, int64s, strings } from '../support/fixtures.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

type StreamAggregationInit = MessageInitShape<typeof StreamAggregationSchema>;

const minutes = (count: number) => ({ seconds: BigInt(count * 60) });

/** Payments per (user, merchant): a one-hour window sliding by five minutes. */
const payments = (extra: Record<string, unknown> = {}): StreamAggregationInit =>
  ({
    name: 'payment_stats',
    topic: 'payments.v1',
    encoding: StreamEncoding.JSON,
    keyFields: ['user', 'merchant'],
    entities: ['user', 'merchant'],
    eventTimeField: 'ts',
    eventTimeUnit: EventTimeUnit.EPOCH_MILLIS,
    watermarkBound: { seconds: 5n },
    allowedLateness: minutes(1),
    aggregations: [
      {
        name: 'payments_1h',
        function: AggregationFunction.COUNT,
        windowSize: minutes(60),
        slide: minutes(5),
      },
      {
        name: 'amount_sum_1h',
        function: AggregationFunction.SUM,
        field: 'amount',
        windowSize: minutes(60),
        slide: minutes(5),
      },
      {
        name: 'last_amount',
        function: AggregationFunction.LAST,
        field: 'amount',
        windowSize: minutes(5),
        slide: minutes(5),
      },
    ],
    ttl: { seconds: 7200n },
    online: true,
    owner: 'risk',
    description: 'payment velocity',
    tags: { team: 'risk' },
    ...extra,
  }) as StreamAggregationInit;

describe('RegistryService stream aggregations', () => {
  let server: TestServer;
  const project = randomName('p');

  beforeAll(async () => {
    server = await startTestServer('redis');
    await applyFixtures(server.registry, project);
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('applies, gets, lists and deletes a definition with the view it produces', async () => {
    const created = await server.registry.applyStreamAggregation({
      project,
      streamAggregation: payments(),
    });
    expect(created.outcome).toBe(ApplyOutcome.CREATED);
    expect(created.featureView).toMatchObject({
      name: 'payment_stats',
      entities: ['user', 'merchant'],
      source: FeatureViewSource.STREAM,
      online: true,
      version: 1,
      ttl: { seconds: 7200n, nanos: 0 },
      owner: 'risk',
      features: [
        { name: 'payments_1h', type: ValueType.INT64 },
        { name: 'amount_sum_1h', type: ValueType.DOUBLE },
        { name: 'last_amount', type: ValueType.DOUBLE },
      ],
    });

    const stored = (await server.registry.getStreamAggregation({ project, name: 'payment_stats' }))
      .streamAggregation;
    expect(stored).toMatchObject({
      name: 'payment_stats',
      topic: 'payments.v1',
      encoding: StreamEncoding.JSON,
      keyFields: ['user', 'merchant'],
      entities: ['user', 'merchant'],
      eventTimeField: 'ts',
      eventTimeUnit: EventTimeUnit.EPOCH_MILLIS,
      watermarkBound: { seconds: 5n, nanos: 0 },
      allowedLateness: { seconds: 60n, nanos: 0 },
      // Unset: the default, one minute.
      idleTimeout: { seconds: 60n, nanos: 0 },
      emitFollowingEmptyWindow: false,
      online: true,
      tags: { team: 'risk' },
    });
    expect(
      stored?.aggregations.map((item) => [
        item.name,
        item.function,
        item.field,
        item.windowSize?.seconds,
        item.slide?.seconds,
      ]),
    ).toEqual([
      ['payments_1h', AggregationFunction.COUNT, '', 3600n, 300n],
      ['amount_sum_1h', AggregationFunction.SUM, 'amount', 3600n, 300n],
      ['last_amount', AggregationFunction.LAST, 'amount', 300n, 300n],
    ]);
    expect(stored?.updatedAt).toBeDefined();
    const listed = await server.registry.listStreamAggregations({ project });
    expect(listed.streamAggregations.map((item) => item.name)).toEqual(['payment_stats']);

    // The produced view is an ordinary view: listed and served (it exists, nothing written yet).
    const views = await server.registry.listFeatureViews({ project });
    expect(views.featureViews.map((view) => view.name)).toContain('payment_stats');
    const served = await server.features.getOnlineFeatures({
      project,
      features: ['payment_stats:payments_1h', 'payment_stats:amount_sum_1h'],
      entities: { user_id: strings('u1'), merchant_id: int64s(7) },
    });
    expect(served.features.map((feature) => feature.statuses)).toEqual([
      [FeatureStatus.NOT_FOUND],
      [FeatureStatus.NOT_FOUND],
    ]);

    // The view changes and goes only with its aggregation.
    expect(
      await failureOf(server.registry.deleteFeatureView({ project, name: 'payment_stats' })),
    ).toMatchObject({ code: 'failed_precondition', message: expect.stringContaining('stream aggregation') });
    expect(
      await failureOf(
        server.registry.applyFeatureView({
          project,
          featureView: {
            name: 'payment_stats',
            entities: ['user'],
            features: [{ name: 'x', type: ValueType.DOUBLE }],
          },
          force: true,
        }),
      ),
    ).toMatchObject({ code: 'failed_precondition', message: expect.stringContaining('stream aggregation') });

    // While a feature set uses the view, deleting is refused and nothing is deleted.
    await server.registry.applyFeatureSet({
      project,
      featureSet: { name: 'fraud_model', features: ['payment_stats:payments_1h'] },
    });
    expect(
      await failureOf(server.registry.deleteStreamAggregation({ project, name: 'payment_stats' })),
    ).toMatchObject({ code: 'failed_precondition', message: expect.stringContaining('fraud_model') });
    expect(
      (await server.registry.getStreamAggregation({ project, name: 'payment_stats' })).streamAggregation,
    ).toBeDefined();
    await server.registry.deleteFeatureSet({ project, name: 'fraud_model' });

    await server.registry.deleteStreamAggregation({ project, name: 'payment_stats' });
    expect(
      await failureOf(server.registry.getStreamAggregation({ project, name: 'payment_stats' })),
    ).toMatchObject({ code: 'not_found' });
    expect(await failureOf(server.registry.getFeatureView({ project, name: 'payment_stats' }))).toMatchObject(
      { code: 'not_found' },
    );
    expect((await server.registry.listStreamAggregations({ project })).streamAggregations).toEqual([]);
    expect(
      await failureOf(server.registry.deleteStreamAggregation({ project, name: 'payment_stats' })),
    ).toMatchObject({ code: 'not_found' });
  });

  it('versions the produced view: unchanged, compatible change, incompatible change needs force', async () => {
    const name = 'velocity';
    const first = await server.registry.applyStreamAggregation({
      project,
      streamAggregation: payments({ name }),
    });
    expect(first).toMatchObject({ outcome: ApplyOutcome.CREATED, featureView: { version: 1 } });
    const again = await server.registry.applyStreamAggregation({
      project,
      streamAggregation: payments({ name }),
    });
    expect(again).toMatchObject({ outcome: ApplyOutcome.UNCHANGED, featureView: { version: 1 } });
    expect(again.streamAggregation?.updatedAt).toEqual(first.streamAggregation?.updatedAt);

    // A definition-only change (the topic) updates the definition, not the view.
    const moved = await server.registry.applyStreamAggregation({
      project,
      streamAggregation: payments({ name, topic: 'payments.v2' }),
    });
    expect(moved).toMatchObject({
      outcome: ApplyOutcome.UPDATED,
      featureView: { version: 1 },
      streamAggregation: { topic: 'payments.v2' },
    });

    const baseAggregations = payments().aggregations ?? [];
    const added = payments({
      name,
      topic: 'payments.v2',
      aggregations: [
        ...baseAggregations,
        {
          name: 'distinct_cards_1h',
          function: AggregationFunction.DISTINCT_COUNT,
          field: 'card',
          windowSize: minutes(60),
          slide: minutes(5),
        },
      ],
    });
    const v2 = await server.registry.applyStreamAggregation({ project, streamAggregation: added });
    expect(v2).toMatchObject({ outcome: ApplyOutcome.UPDATED, featureView: { version: 2 } });
    expect(v2.featureView?.features.at(-1)).toMatchObject({
      name: 'distinct_cards_1h',
      type: ValueType.INT64,
    });

    // Removing an aggregation removes a feature: incompatible, refused without force.
    const removed = payments({ name, topic: 'payments.v2', aggregations: added.aggregations?.slice(1) });
    const refused = await failureOf(
      server.registry.applyStreamAggregation({ project, streamAggregation: removed }),
    );
    expect(refused).toMatchObject({
      code: 'failed_precondition',
      message: expect.stringContaining('"payments_1h" is removed'),
    });
    const stillAdded = await server.registry.getStreamAggregation({ project, name });
    expect(stillAdded.streamAggregation?.aggregations).toHaveLength(4);
    const forced = await server.registry.applyStreamAggregation({
      project,
      streamAggregation: removed,
      force: true,
    });
    expect(forced).toMatchObject({ outcome: ApplyOutcome.UPDATED, featureView: { version: 3 } });
    const history = await server.registry.listFeatureViewVersions({ project, name });
    expect(history.versions.map((version) => version.features.length)).toEqual([3, 4, 3]);
  });

  it('refuses a name held by a view no stream aggregation produces', async () => {
    expect(
      await failureOf(
        server.registry.applyStreamAggregation({
          project,
          streamAggregation: payments({ name: 'pair_stats' }),
        }),
      ),
    ).toMatchObject({
      code: 'failed_precondition',
      message: expect.stringContaining('stream_aggregation.name'),
    });
  });

  it('refuses invalid definitions naming the field', async () => {
    const refused = (extra: Record<string, unknown>) =>
      failureOf(
        server.registry.applyStreamAggregation({
          project,
          streamAggregation: payments({ name: 'bad', ...extra }),
        }),
      );
    const window = { windowSize: minutes(60), slide: minutes(5) };
    const cases: [Record<string, unknown>, string, string][] = [
      [{ topic: '' }, 'invalid_argument', 'stream_aggregation.topic'],
      [{ encoding: StreamEncoding.UNSPECIFIED }, 'invalid_argument', 'stream_aggregation.encoding'],
      [{ eventTimeField: '' }, 'invalid_argument', 'stream_aggregation.event_time_field'],
      [
        { eventTimeUnit: EventTimeUnit.UNSPECIFIED },
        'invalid_argument',
        'stream_aggregation.event_time_unit',
      ],
      [{ keyFields: ['user'] }, 'invalid_argument', 'stream_aggregation.key_fields'],
      [{ keyFields: ['user', 'user'] }, 'invalid_argument', 'stream_aggregation.key_fields[1]'],
      [{ entities: ['user', 'ghost'] }, 'not_found', 'stream_aggregation.entities[1]'],
      [{ watermarkBound: { seconds: -1n } }, 'invalid_argument', 'stream_aggregation.watermark_bound'],
      [
        { allowedLateness: { seconds: 0n, nanos: 1 } },
        'invalid_argument',
        'stream_aggregation.allowed_lateness',
      ],
      [{ idleTimeout: { seconds: 0n } }, 'invalid_argument', 'stream_aggregation.idle_timeout'],
      [{ ttl: { seconds: 0n, nanos: 1000 } }, 'invalid_argument', 'stream_aggregation.ttl'],
      [{ aggregations: [] }, 'invalid_argument', 'stream_aggregation.aggregations'],
      [
        {
          aggregations: [
            { name: 'n', function: AggregationFunction.COUNT, windowSize: minutes(60), slide: minutes(7) },
          ],
        },
        'invalid_argument',
        'stream_aggregation.aggregations[0].slide',
      ],
      [
        {
          aggregations: [
            {
              name: 'n',
              function: AggregationFunction.COUNT,
              windowSize: { seconds: 0n },
              slide: minutes(5),
            },
          ],
        },
        'invalid_argument',
        'stream_aggregation.aggregations[0].window_size',
      ],
      [
        { aggregations: [{ name: 'n', function: AggregationFunction.COUNT, ...window, slide: undefined }] },
        'invalid_argument',
        'stream_aggregation.aggregations[0].slide',
      ],
      [
        {
          aggregations: [
            { name: 'n', function: AggregationFunction.COUNT, ...window },
            { name: 'n', function: AggregationFunction.MAX, field: 'amount', ...window },
          ],
        },
        'invalid_argument',
        'stream_aggregation.aggregations[1].name',
      ],
      [
        {
          aggregations: [
            { name: 'n', function: AggregationFunction.COUNT, ...window },
            { name: 'm', function: AggregationFunction.COUNT, windowSize: minutes(60), slide: minutes(10) },
          ],
        },
        'invalid_argument',
        'stream_aggregation.aggregations[1].slide',
      ],
      [
        { aggregations: [{ name: '1bad', function: AggregationFunction.COUNT, ...window }] },
        'invalid_argument',
        'stream_aggregation.aggregations[0].name',
      ],
      [
        { aggregations: [{ name: 'm', function: AggregationFunction.MEAN, ...window }] },
        'invalid_argument',
        'stream_aggregation.aggregations[0].field',
      ],
      [
        {
          aggregations: [
            { name: 'm', function: AggregationFunction.UNSPECIFIED, field: 'amount', ...window },
          ],
        },
        'invalid_argument',
        'stream_aggregation.aggregations[0].function',
      ],
      [
        { aggregations: [{ name: 'm', function: 42 as AggregationFunction, field: 'amount', ...window }] },
        'invalid_argument',
        'stream_aggregation.aggregations[0].function',
      ],
      [{ name: 'bad-name' }, 'invalid_argument', 'stream_aggregation.name'],
    ];
    for (const [extra, code, path] of cases) {
      const failure = await refused(extra);
      expect({ case: extra, ...failure }).toMatchObject({
        code,
        message: expect.stringContaining(`${path}:`),
      });
    }
    // Nothing of a refused definition was stored.
    expect(await failureOf(server.registry.getStreamAggregation({ project, name: 'bad' }))).toMatchObject({
      code: 'not_found',
    });
    expect(await failureOf(server.registry.getFeatureView({ project, name: 'bad' }))).toMatchObject({
      code: 'not_found',
    });

    // A field given to COUNT is allowed: it counts non-null values.
    const counted = await server.registry.applyStreamAggregation({
      project,
      streamAggregation: payments({
        name: 'counted',
        aggregations: [{ name: 'amounts', function: AggregationFunction.COUNT, field: 'amount', ...window }],
      }),
    });
    expect(counted).toMatchObject({
      outcome: ApplyOutcome.CREATED,
      streamAggregation: { aggregations: [{ field: 'amount' }] },
    });
  });
});
