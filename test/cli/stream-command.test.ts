import type { Admin, Kafka } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliMember, errorLevel, message, spawnCliMember } from '../stream/cli-member.js';
import { createTestKafka, waitUntil } from '../stream/kafka-test-client.js';
import { deleteOfflineRows, offlineRowCount, storedCheckpoints } from '../stream/stream-db.js';
import {
  committedOffsets,
  createTopic,
  expectedOutcome,
  expectRowsEqual,
  generateRecords,
  produceRecords,
  storedOfflineRows,
  streamAggregationInit,
  viewIdOf,
  waitForCommittedToEnd,
} from '../stream/stream-harness.js';
import { randomName, requireEnvironment } from '../support/environment.js';
import { applyFixtures } from '../support/fixtures.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

// `fstore stream` as an operator runs it (node bin/fstore.js stream …): the `--reset` option, and
// a member stopped by SIGTERM at any moment of its start. Each test waits on what the member logs
// (pino JSON lines) and on what it stores, never on a fixed delay.

const brokers = requireEnvironment('FSTORE_TEST_KAFKA_BROKERS').split(',');
const partitions = 3;
// A member starts in 1-5 s here (tsx compiles the sources); the rest is head room for a loaded machine.
const startTimeoutMs = 30_000;

describe('fstore stream (the command)', () => {
  let server: TestServer;
  let kafka: Kafka;
  let admin: Admin;
  const project = randomName('p');
  const members: CliMember[] = [];

  beforeAll(async () => {
    server = await startTestServer('redis');
    await applyFixtures(server.registry, project);
    kafka = createTestKafka(brokers);
    admin = kafka.admin();
    await admin.connect();
  });
  afterAll(async () => {
    await Promise.all(members.map((member) => member.stop('SIGKILL')));
    await admin?.disconnect();
    await server?.stop();
  });

  const postgresUrl = () => server.config.postgresUrl!;
  const schema = () => server.config.postgresSchema;

  /** A stream aggregation on a topic of its own (no dead-letter topic yet), its records produced. */
  async function prepareAggregation(seed: number) {
    const name = randomName('agg');
    const topic = randomName('events');
    await createTopic(admin, topic, partitions);
    await server.registry.applyStreamAggregation({
      project,
      streamAggregation: streamAggregationInit(name, topic),
    });
    const viewId = await viewIdOf(postgresUrl(), schema(), project, name);
    const records = generateRecords({ seed, count: 900, partitions, malformed: 3 });
    await produceRecords(kafka, topic, records);
    const expected = expectedOutcome(records, partitions, viewId);
    return { name, topic, viewId, groupId: `fstore.${project}.${name}`, expected };
  }

  function startMember(aggregation: string, extraArgs: readonly string[] = []): CliMember {
    const member = spawnCliMember(['--project', project, '--aggregation', aggregation, ...extraArgs], {
      FSTORE_POSTGRES_URL: postgresUrl(),
      FSTORE_POSTGRES_SCHEMA: schema(),
      FSTORE_REDIS_URL: server.config.redisUrl!,
      FSTORE_REDIS_KEY_PREFIX: server.config.redisKeyPrefix,
      FSTORE_KAFKA_BROKERS: brokers.join(','),
      FSTORE_STREAM_CHECKPOINT_INTERVAL_MS: '200',
      FSTORE_LOG_LEVEL: 'info',
    });
    members.push(member);
    return member;
  }

  const errorsOf = (member: CliMember) =>
    member.lines().filter((line) => typeof line.level === 'number' && line.level >= errorLevel);

  it('--reset deletes the checkpoints and recomputes every partition from the start of its log', async () => {
    const { name, topic, viewId, groupId, expected } = await prepareAggregation(11);
    const first = startMember(name);
    await waitForCommittedToEnd(admin, groupId, topic, 60_000);
    expect(await first.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    const before = await storedCheckpoints(postgresUrl(), schema(), project, name);
    expect([...before.keys()].sort()).toEqual([0, 1, 2]);
    // What the recompute has to write again (as after a definition change, whose old rows are wrong).
    expect(await deleteOfflineRows(postgresUrl(), schema(), viewId)).toBe(expected.rows.size);

    const reset = startMember(name, ['--reset']);
    await reset.waitForLine(message('checkpoints deleted'), startTimeoutMs, 'the checkpoints to be deleted');
    // No record arrives: the whole log is read again at once, every window written again.
    await waitUntil(
      async () => (await offlineRowCount(postgresUrl(), schema(), viewId)) >= expected.rows.size,
      60_000,
      `the ${expected.rows.size} window rows to be written again`,
    );
    expectRowsEqual(await storedOfflineRows(postgresUrl(), schema(), viewId), expected.rows);
    expect(await reset.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    expect(errorsOf(reset)).toEqual([]);
    // Its final checkpoints are new ones (the reset's), at the end of each partition.
    const after = await storedCheckpoints(postgresUrl(), schema(), project, name);
    const ends = new Map(
      (await admin.fetchTopicOffsets(topic)).map((entry) => [entry.partition, BigInt(entry.high)]),
    );
    expect(new Map([...after].map(([partition, { nextOffset }]) => [partition, nextOffset]))).toEqual(ends);
  }, 150_000);

  // The moments of a start a member can be told to stop at, each seen in what it logs, in order:
  // before anything is opened, right after the reset deleted the checkpoints, after the Kafka
  // clients connected (the dead-letter topic is created), and once the member joined its group.
  const moments = [
    { label: 'as it begins', line: 'stream member starting', args: [] as string[], nothingWritten: true },
    {
      label: 'right after --reset deleted the checkpoints',
      line: 'checkpoints deleted',
      args: ['--reset'],
      nothingWritten: true,
    },
    {
      label: 'after it created the dead-letter topic',
      line: 'dead-letter topic created',
      args: [],
      nothingWritten: true,
    },
    // Batches may already be processed here: whatever it wrote, it stops cleanly.
    { label: 'as it joins the group', line: 'assignment', args: [], nothingWritten: false },
  ];
  for (const moment of moments)
    it(`a member stopped by SIGTERM ${moment.label} stops cleanly: exit 0, no error, nothing half-written`, async () => {
      const { name, topic, viewId, groupId } = await prepareAggregation(12);
      const member = startMember(name, moment.args);
      await member.waitForLine(message(moment.line), startTimeoutMs, `"${moment.line}"`);
      expect(await member.stop('SIGTERM')).toEqual({ code: 0, signal: null });
      expect(errorsOf(member)).toEqual([]);
      expect(member.lines().some(message('shutting down'))).toBe(true);

      const checkpoints = await storedCheckpoints(postgresUrl(), schema(), project, name);
      const committed = await committedOffsets(admin, groupId, topic);
      if (moment.nothingWritten) {
        // Stopped before it joined: no checkpoint, no window row, no committed offset.
        expect(checkpoints.size).toBe(0);
        expect(await offlineRowCount(postgresUrl(), schema(), viewId)).toBe(0);
        expect(sumOf(committed)).toBe(0n);
      }
      // A committed offset is never past its partition's checkpoint (stored first, then committed).
      else
        for (const [partition, offset] of committed)
          if (offset > 0n)
            expect(checkpoints.get(partition)?.nextOffset ?? -1n).toBeGreaterThanOrEqual(offset);
    }, 60_000);
});

const sumOf = (offsets: Map<number, bigint>) =>
  [...offsets.values()].reduce((sum, offset) => sum + offset, 0n);
