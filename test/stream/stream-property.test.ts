import fc from 'fast-check';
import type { Admin, Kafka } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AggregationFunction, EventTimeUnit, StreamEncoding } from '../../gen/fstore/v1/registry_pb.js';
import type { AggregationFunction as Fn } from '../../src/domain/aggregations.js';
import { encodeOnlineKey } from '../../src/domain/online-codec.js';
import type { AggregationSpec } from '../../src/domain/window-aggregator.js';
import { randomName, requireEnvironment } from '../support/environment.js';
import { applyFixtures } from '../support/fixtures.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { partitionOracle } from '../support/window-oracle.js';
import { createTestKafka } from './kafka-test-client.js';
import {
  baseMs,
  createTopic,
  type ExpectedOutcome,
  expectRowsEqual,
  partitionOf,
  produceRecords,
  startInProcessMember,
  storedOfflineRows,
  type TestRecord,
  viewIdOf,
  waitForCommittedToEnd,
} from './stream-harness.js';

// The property: random events with bounded disorder, shuffled, fed through the real broker
// to `fstore stream`; every stored window equals the batch oracle over the same events with the
// lateness rule applied in the same arrival order (each partition's log order).

const brokers = requireEnvironment('FSTORE_TEST_KAFKA_BROKERS').split(',');

const protoFunction: Record<Fn, AggregationFunction> = {
  count: AggregationFunction.COUNT,
  sum: AggregationFunction.SUM,
  mean: AggregationFunction.MEAN,
  min: AggregationFunction.MIN,
  max: AggregationFunction.MAX,
  stddev_pop: AggregationFunction.STDDEV_POP,
  stddev_samp: AggregationFunction.STDDEV_SAMP,
  last: AggregationFunction.LAST,
  distinct_count: AggregationFunction.DISTINCT_COUNT,
};

const scenarioArbitrary = fc
  .record({
    slideSeconds: fc.integer({ min: 1, max: 4 }),
    tilesPerWindow: fc.uniqueArray(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 2 }),
    functions: fc.uniqueArray(fc.constantFrom<Fn>(...(Object.keys(protoFunction) as Fn[])), {
      minLength: 1,
      maxLength: 4,
    }),
    boundMs: fc.integer({ min: 0, max: 3_000 }),
    latenessMs: fc.integer({ min: 0, max: 3_000 }),
    emitFollowing: fc.boolean(),
    partitions: fc.integer({ min: 1, max: 3 }),
    // (user, merchant, ms after base, disorder in ms, amount or null)
    events: fc.array(
      fc.tuple(
        fc.integer({ min: 0, max: 4 }),
        fc.integer({ min: 1, max: 2 }),
        fc.integer({ min: 0, max: 30_000 }),
        fc.integer({ min: 0, max: 6_000 }),
        fc.option(fc.integer({ min: -1_000, max: 1_000 }), { nil: null }),
      ),
      { minLength: 1, maxLength: 200 },
    ),
    seed: fc.integer(),
  })
  .map((s) => {
    const aggregations: AggregationSpec[] = [];
    for (const tiles of s.tilesPerWindow)
      for (const fn of s.functions)
        aggregations.push({
          name: `${fn}_${tiles}`,
          function: fn,
          ...(fn === 'count' ? {} : { field: 'amount' }),
          sizeMicros: tiles * s.slideSeconds * 1_000_000,
          slideMicros: s.slideSeconds * 1_000_000,
        });
    // Arrival order: sorted by time, then each event moved back by its disorder (bounded disorder).
    const records: TestRecord[] = s.events
      .map(([user, merchant, at, disorder, amount], index) => ({
        user,
        merchant,
        at,
        arrival: at + disorder,
        amount,
        index,
      }))
      .sort((a, b) => a.arrival - b.arrival || a.index - b.index)
      .map(({ user, merchant, at, amount }) => ({
        partition: partitionOf(`u${user}`, merchant, s.partitions),
        user: `u${user}`,
        merchant,
        ts: baseMs + at,
        amount: amount === null ? null : amount / 8,
        item: `i${amount === null ? 0 : Math.abs(amount) % 5}`,
      }));
    // One far-future event per partition fires every window before it.
    for (let partition = 0; partition < s.partitions; partition++)
      records.push({
        partition,
        user: `flush${partition}`,
        merchant: 0,
        ts: baseMs + 3_600_000,
        amount: null,
        item: '',
      });
    // …after which an event of the start is late whatever the run (every run exercises lateness).
    records.push({ partition: 0, user: 'late0', merchant: 0, ts: baseMs, amount: 1, item: '' });
    return { ...s, aggregations, records };
  });

describe('fstore stream through the real broker, as a property', () => {
  let server: TestServer;
  let kafka: Kafka;
  let admin: Admin;
  const project = randomName('p');

  beforeAll(async () => {
    server = await startTestServer('redis');
    await applyFixtures(server.registry, project);
    kafka = createTestKafka(brokers);
    admin = kafka.admin();
    await admin.connect();
  });
  afterAll(async () => {
    await admin?.disconnect();
    await server?.stop();
  });

  it('stores, for random events with bounded disorder, exactly the windows the batch oracle gives', async () => {
    let lateSeen = 0;
    await fc.assert(
      fc.asyncProperty(scenarioArbitrary, async (scenario) => {
        const name = randomName('prop');
        const topic = randomName('events');
        await createTopic(admin, topic, scenario.partitions);
        await server.registry.applyStreamAggregation({
          project,
          streamAggregation: {
            name,
            topic,
            encoding: StreamEncoding.JSON,
            keyFields: ['user', 'merchant'],
            entities: ['user', 'merchant'],
            eventTimeField: 'ts',
            eventTimeUnit: EventTimeUnit.EPOCH_MILLIS,
            watermarkBound: {
              seconds: BigInt(Math.floor(scenario.boundMs / 1000)),
              nanos: (scenario.boundMs % 1000) * 1_000_000,
            },
            allowedLateness: {
              seconds: BigInt(Math.floor(scenario.latenessMs / 1000)),
              nanos: (scenario.latenessMs % 1000) * 1_000_000,
            },
            emitFollowingEmptyWindow: scenario.emitFollowing,
            aggregations: scenario.aggregations.map((a) => ({
              name: a.name,
              function: protoFunction[a.function],
              ...(a.field ? { field: a.field } : {}),
              windowSize: { seconds: BigInt(a.sizeMicros / 1_000_000) },
              slide: { seconds: BigInt(a.slideMicros / 1_000_000) },
            })),
            online: true,
          },
        });
        const viewId = await viewIdOf(
          server.config.postgresUrl!,
          server.config.postgresSchema,
          project,
          name,
        );
        await produceRecords(kafka, topic, scenario.records);

        const rows: ExpectedOutcome['rows'] = new Map();
        let late = 0;
        for (let partition = 0; partition < scenario.partitions; partition++) {
          const log = scenario.records
            .filter((record) => record.partition === partition)
            .map((record) => ({
              key: encodeOnlineKey(viewId, [record.user, BigInt(record.merchant)]),
              time: record.ts * 1000,
              fields: { amount: record.amount },
            }));
          const result = partitionOracle(
            {
              aggregations: scenario.aggregations,
              boundMicros: scenario.boundMs * 1000,
              allowedLatenessMicros: scenario.latenessMs * 1000,
              emitFollowingEmptyWindow: scenario.emitFollowing,
            },
            log,
          );
          late += result.late.length;
          for (const [id, row] of result.rows) rows.set(id, row);
        }
        lateSeen += late;

        const fatal: unknown[] = [];
        const role = await startInProcessMember(server.config, brokers, {
          project,
          aggregation: name,
          checkpointIntervalMs: 100,
          fatal,
        });
        try {
          await waitForCommittedToEnd(admin, `fstore.${project}.${name}`, topic, 60_000);
          expect(fatal).toEqual([]);
          expect(role.runner.stats().late).toBe(late);
          expectRowsEqual(
            await storedOfflineRows(server.config.postgresUrl!, server.config.postgresSchema, viewId),
            rows,
          );
        } finally {
          await role.stop();
        }
      }),
      { numRuns: 15, endOnFailure: true },
    );
    // The runs do exercise lateness.
    expect(lateSeen).toBeGreaterThan(0);
  }, 300_000);
});
