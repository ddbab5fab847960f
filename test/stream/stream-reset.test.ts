import type { Admin, Kafka } from 'kafkajs';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type StreamRole, startStreamRole } from '../../src/app/stream.js';
import { randomName, requireEnvironment } from '../support/environment.js';
import { applyFixtures } from '../support/fixtures.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { createTestKafka, waitUntil } from './kafka-test-client.js';
import { deleteOfflineRows, offlineRowCount, storedCheckpoints } from './stream-db.js';
import {
  createTopic,
  endOffsets,
  expectedOutcome,
  expectRowsEqual,
  generateRecords,
  groupAssignments,
  produceRecords,
  storedOfflineRows,
  streamAggregationInit,
  viewIdOf,
  waitForCommittedToEnd,
} from './stream-harness.js';

// `fstore stream --reset` (startStreamRole with reset) in this process against the real broker:
// the checkpoints are deleted and every partition is computed again from the start of its log AT
// ONCE — not when a new record happens to arrive on it — by one member or by several.

const brokers = requireEnvironment('FSTORE_TEST_KAFKA_BROKERS').split(',');
const partitions = 4;

describe('fstore stream --reset', () => {
  let server: TestServer;
  let kafka: Kafka;
  let admin: Admin;
  const project = randomName('p');
  const roles: StreamRole[] = [];
  const fatal: unknown[] = [];

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

  const postgresUrl = () => server.config.postgresUrl!;
  const schema = () => server.config.postgresSchema;

  async function startMember(aggregation: string, reset: boolean): Promise<StreamRole> {
    const role = await startStreamRole(
      {
        ...server.config,
        kafkaBrokers: brokers.join(','),
        streamCheckpointIntervalMs: 200,
        streamStatsIntervalMs: 60_000,
        streamSessionTimeoutMs: 6_000,
        metrics: 'off',
      },
      { project, aggregation, reset, onFatal: (error) => fatal.push(error) },
      pino({ level: process.env.FSTORE_TEST_LOG_LEVEL ?? 'silent' }),
    );
    roles.push(role);
    return role;
  }

  /** An aggregation whose records were all computed and checkpointed by a member still running. */
  async function computedAggregation(seed: number) {
    const name = randomName('agg');
    const topic = randomName('events');
    await createTopic(admin, topic, partitions);
    await server.registry.applyStreamAggregation({
      project,
      streamAggregation: streamAggregationInit(name, topic),
    });
    const viewId = await viewIdOf(postgresUrl(), schema(), project, name);
    const records = generateRecords({ seed, count: 1_200, partitions, malformed: 2 });
    await produceRecords(kafka, topic, records);
    const expected = expectedOutcome(records, partitions, viewId);
    const groupId = `fstore.${project}.${name}`;
    const first = await startMember(name, false);
    await waitForCommittedToEnd(admin, groupId, topic, 60_000);
    await waitUntil(
      async () => (await storedCheckpoints(postgresUrl(), schema(), project, name)).size === partitions,
      30_000,
      'a checkpoint of every partition',
    );
    return { name, topic, viewId, groupId, expected, first, recordCount: records.length };
  }

  /** Every partition has a checkpoint at the end of its log again. */
  async function checkpointedToEnd(name: string, topic: string): Promise<boolean> {
    const [checkpoints, ends] = await Promise.all([
      storedCheckpoints(postgresUrl(), schema(), project, name),
      endOffsets(admin, topic),
    ]);
    return [...ends].every(([partition, end]) => checkpoints.get(partition)?.nextOffset === end);
  }

  it('recomputes every partition from the start of its log at once, with no new record', async () => {
    const { name, topic, viewId, expected, first, recordCount } = await computedAggregation(21);
    await first.stop();
    expect(await deleteOfflineRows(postgresUrl(), schema(), viewId)).toBe(expected.rows.size);

    const reset = await startMember(name, true);
    expect(await storedCheckpoints(postgresUrl(), schema(), project, name)).toEqual(new Map());
    // Nothing is produced from here on: the recompute must not wait for a record per partition.
    await waitUntil(
      async () => (await offlineRowCount(postgresUrl(), schema(), viewId)) >= expected.rows.size,
      30_000,
      `the ${expected.rows.size} window rows to be written again`,
    );
    expectRowsEqual(await storedOfflineRows(postgresUrl(), schema(), viewId), expected.rows);
    await waitUntil(
      () => checkpointedToEnd(name, topic),
      30_000,
      'new checkpoints at the end of every partition',
    );
    // It read the whole log again, each record once.
    expect(reset.runner.stats().records).toBe(recordCount);
    expect(fatal).toEqual([]);
    await reset.stop();
  }, 120_000);

  it('a member joining with --reset makes the members already running recompute their partitions too', async () => {
    const { name, topic, viewId, groupId, expected, first } = await computedAggregation(22);
    expect(await deleteOfflineRows(postgresUrl(), schema(), viewId)).toBe(expected.rows.size);

    // `first` is caught up and idle; the member started with --reset deletes the checkpoints of
    // every partition, the first member's included, and joins: the group rebalances.
    const reset = await startMember(name, true);
    await waitUntil(
      async () => {
        const assignments = await groupAssignments(admin, groupId, topic);
        return assignments.length === 2 && assignments.every((member) => member.partitions.length > 0);
      },
      30_000,
      'both members to hold partitions',
    );
    await waitUntil(
      async () => (await offlineRowCount(postgresUrl(), schema(), viewId)) >= expected.rows.size,
      30_000,
      `the ${expected.rows.size} window rows to be written again`,
    );
    expectRowsEqual(await storedOfflineRows(postgresUrl(), schema(), viewId), expected.rows);
    await waitUntil(
      () => checkpointedToEnd(name, topic),
      30_000,
      'new checkpoints at the end of every partition',
    );
    expect(first.runner.assigned.length + reset.runner.assigned.length).toBe(partitions);
    expect(fatal).toEqual([]);
    await Promise.all([first.stop(), reset.stop()]);
  }, 120_000);
});
