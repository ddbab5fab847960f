import type { Admin, Kafka } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FeatureStatus, type Vector } from '../../gen/fstore/v1/values_pb.js';
import type { StreamRole } from '../../src/app/stream.js';
import { randomName, requireEnvironment } from '../support/environment.js';
import { applyFixtures, int64s, strings } from '../support/fixtures.js';
import { historicalRequests, retrieveHistorical } from '../support/historical.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { createTestKafka } from './kafka-test-client.js';
import {
  createTopic,
  expectedOutcome,
  expectRowsEqual,
  generateRecords,
  produceRecords,
  readDeadLetters,
  startInProcessMember,
  storedOfflineRows,
  streamAggregationInit,
  viewIdOf,
  waitForCommittedToEnd,
} from './stream-harness.js';

// `fstore stream` in this process against the real broker, Redis and PostgreSQL: what it stores
// offline and online, and what it dead-letters, against the batch oracle over each partition's log.

/** The values of a scalar Vector. */
const vectorValues = (vector: Vector | undefined) =>
  (vector?.values.value as { values: unknown[] } | undefined)?.values;

const brokers = requireEnvironment('FSTORE_TEST_KAFKA_BROKERS').split(',');
const partitions = 3;

describe('fstore stream', () => {
  let server: TestServer;
  let kafka: Kafka;
  let admin: Admin;
  const project = randomName('p');
  const roles: StreamRole[] = [];

  beforeAll(async () => {
    server = await startTestServer('redis');
    await applyFixtures(server.registry, project);
    kafka = createTestKafka(brokers);
    admin = kafka.admin();
    await admin.connect();
  });
  afterAll(async () => {
    for (const role of roles) await role.stop().catch(() => {});
    await admin?.disconnect();
    await server?.stop();
  });

  async function startRole(aggregation: string, fatal: unknown[] = []) {
    const role = await startInProcessMember(server.config, brokers, {
      project,
      aggregation: aggregation,
      checkpointIntervalMs: 300,
      fatal,
    });
    roles.push(role);
    return role;
  }

  for (const encoding of ['json', 'msgpack'] as const)
    it(`aggregates ${encoding} events into exactly the oracle's windows, offline and online, and dead-letters the rest`, async () => {
      const name = randomName('agg');
      const topic = randomName('events');
      await createTopic(admin, topic, partitions);
      const applied = await server.registry.applyStreamAggregation({
        project,
        streamAggregation: streamAggregationInit(name, topic, encoding),
      });
      expect(applied.featureView?.name).toBe(name);
      const viewId = await viewIdOf(server.config.postgresUrl!, server.config.postgresSchema, project, name);
      const records = generateRecords({
        seed: encoding === 'json' ? 1 : 2,
        count: 1_500,
        partitions,
        malformed: encoding === 'json' ? 5 : 0,
      });
      await produceRecords(kafka, topic, records, encoding);
      const expected = expectedOutcome(records, partitions, viewId);
      expect(expected.late).toBeGreaterThan(0); // the data does exercise lateness

      const fatal: unknown[] = [];
      const role = await startRole(name, fatal);
      await waitForCommittedToEnd(admin, `fstore.${project}.${name}`, topic, 60_000);
      expect(fatal).toEqual([]);

      // Offline: exactly the oracle's rows, each once.
      expectRowsEqual(
        await storedOfflineRows(server.config.postgresUrl!, server.config.postgresSchema, viewId),
        expected.rows,
      );
      const stats = role.runner.stats();
      expect(stats.records).toBe(records.length);
      expect(stats.late).toBe(expected.late);
      expect(stats.malformed + stats.invalid).toBe(expected.malformed);

      // Online: each entity serves its newest closed window.
      const newest = new Map<string, { end: number; values: Record<string, unknown> }>();
      for (const row of expected.rows.values()) {
        const current = newest.get(row.key);
        if (!current || row.end > current.end) newest.set(row.key, row);
      }
      const entities = [...newest.keys()].map((key) => key.slice(key.indexOf(':') + 1).split('|'));
      const response = await server.features.getOnlineFeatures({
        project,
        features: [`${name}:events_20s`, `${name}:amount_max_20s`],
        entities: {
          user_id: strings(...entities.map(([user]) => user!)),
          merchant_id: int64s(...entities.map(([, merchant]) => BigInt(merchant!))),
        },
      });
      const [events, maxAmount] = response.features;
      const expectedRows = [...newest.values()];
      expect(events!.statuses.every((status) => status === FeatureStatus.PRESENT)).toBe(true);
      expect(vectorValues(events!.values)).toEqual(
        expectedRows.map((row) => BigInt(row.values.events_20s as number)),
      );
      expect(vectorValues(maxAmount!.values)).toEqual(
        expectedRows.map((row) => row.values.amount_max_20s ?? 0),
      );
      expect(events!.eventTimestamps).toEqual(expectedRows.map((row) => BigInt(row.end)));

      // Historical retrieval of the aggregate is point in time: at a window's end, that window's
      // row; one microsecond before, the entity's previous row (or nothing yet).
      const sample = [...expected.rows.values()].filter((_, index) => index % 7 === 0).slice(0, 200);
      const previousRow = (row: (typeof sample)[number]) => {
        let best: (typeof sample)[number] | undefined;
        for (const other of expected.rows.values())
          if (other.key === row.key && other.end < row.end && (!best || other.end > best.end)) best = other;
        return best;
      };
      const labels = sample.flatMap((row) => [
        { row, at: row.end, expect: row as (typeof sample)[number] | undefined },
        { row, at: row.end - 1, expect: previousRow(row) },
      ]);
      const parts = labels.map(({ row }) => row.key.slice(row.key.indexOf(':') + 1).split('|'));
      const history = await retrieveHistorical(
        server.features,
        historicalRequests({ project, features: [`${name}:events_20s`] }, [
          {
            entities: {
              user_id: strings(...parts.map(([user]) => user!)),
              merchant_id: int64s(...parts.map(([, merchant]) => BigInt(merchant!))),
            },
            timestamps: labels.map(({ at }) => BigInt(at)),
          },
        ]),
      );
      const column = history.features[`${name}:events_20s`]!;
      expect(column.eventTimes).toEqual(labels.map((label) => BigInt(label.expect?.end ?? 0)));
      expect(column.statuses).toEqual(
        labels.map((label) => (label.expect ? FeatureStatus.PRESENT : FeatureStatus.NOT_FOUND)),
      );
      labels.forEach((label, index) => {
        if (label.expect) expect(column.values[index]).toBe(BigInt(label.expect.values.events_20s as number));
      });

      // Dead letters: every malformed and late record, with its reason.
      const letters = await readDeadLetters(kafka, `${topic}.dlq`);
      const reasons = letters.reduce<Record<string, number>>((counts, letter) => {
        counts[letter.reason] = (counts[letter.reason] ?? 0) + 1;
        return counts;
      }, {});
      expect(reasons.late).toBe(expected.late);
      expect((reasons.malformed ?? 0) + (reasons.invalid ?? 0)).toBe(expected.malformed);
      if (encoding === 'json')
        expect(
          letters
            .filter((letter) => letter.reason !== 'late')
            .map((letter) => letter.problem)
            .sort(),
        ).toEqual(
          expect.arrayContaining([
            expect.stringMatching(/^not json/),
            'key field user: missing',
            expect.stringMatching(/^key field merchant: an int64 is required/),
            expect.stringMatching(/^event time field ts: a number \(epoch_millis\) is required, got string/),
            expect.stringMatching(/^field amount: a number is required/),
          ]),
        );

      // A restarted member resumes from the checkpoint: nothing is read or written again.
      await role.stop();
      const again = await startRole(name, fatal);
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      expect(again.runner.stats().records).toBe(0);
      expectRowsEqual(
        await storedOfflineRows(server.config.postgresUrl!, server.config.postgresSchema, viewId),
        expected.rows,
      );
      await again.stop();
    }, 120_000);
});
