import { existsSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import type { Admin, Kafka } from 'kafkajs';
import { Partitioners } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomName } from '../support/environment.js';
import { startThrowawayKafka, type ThrowawayKafka } from '../support/throwaway-kafka.js';
import { consumeMessages, createTestKafka, nextOffsets } from './kafka-test-client.js';

/**
 * The private broker that fault tests of the stream tier stop and kill
 * (test/support/throwaway-kafka.ts): it keeps its data dir across restarts, so a topic, its
 * messages and a group's committed offsets are all still there afterwards. The test clients are
 * made anew after every restart, so what is checked is the broker's state, not a client's cache.
 */

// A start takes about 5 s here, a restart after a kill about 7 s; the rest is head room for a
// loaded 2-core machine.
const brokerTimeoutMs = 120_000;
const consumeTimeoutMs = 30_000;
const partitions = 3;
const keys = Array.from({ length: 10 }, (_, index) => `entity-${index}`);
const topic = randomName('fstore_throwaway_test');
const groupId = randomName('fstore_throwaway_group');

let broker: ThrowawayKafka;
let kafka: Kafka;
/** Every message acknowledged by the broker so far. */
const produced: string[] = [];

beforeAll(async () => {
  broker = await startThrowawayKafka();
  kafka = createTestKafka(broker.brokers);
  await withAdmin(async (admin) => {
    const created = await admin.createTopics({
      topics: [{ topic, numPartitions: partitions, replicationFactor: 1 }],
      waitForLeaders: true,
      timeout: 10_000,
    });
    expect(created).toBe(true);
  });
  const batch = await produce('a');
  expect(await consumeAndCommit()).toEqual(sorted(batch));
}, brokerTimeoutMs);

afterAll(async () => {
  await broker?.destroy();
}, brokerTimeoutMs);

async function withAdmin<T>(use: (admin: Admin) => Promise<T>): Promise<T> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    return await use(admin);
  } finally {
    await admin.disconnect();
  }
}

/** Three messages per key, all acknowledged by the broker (acks: all). */
async function produce(batch: string): Promise<string[]> {
  const messages = [0, 1, 2].flatMap((sequence) =>
    keys.map((key) => ({ key, value: `${batch}:${key}:${sequence}` })),
  );
  const producer = kafka.producer({
    createPartitioner: Partitioners.DefaultPartitioner,
    allowAutoTopicCreation: false,
  });
  await producer.connect();
  try {
    await producer.send({ topic, acks: -1, messages });
  } finally {
    await producer.disconnect();
  }
  const values = messages.map((message) => message.value);
  produced.push(...values);
  return values;
}

/**
 * Reads `group`'s messages (from its committed offsets, or from the beginning without any)
 * until `count` have arrived, commits after them and leaves. Returns their values, sorted.
 */
async function consumeAndCommit(group = groupId, count = produced.length): Promise<string[]> {
  // Fetches wait at most 500 ms for data (default 5 s): disconnect waits for the fetch in flight.
  const consumer = kafka.consumer({
    groupId: group,
    sessionTimeout: 10_000,
    heartbeatInterval: 1_000,
    maxWaitTimeInMs: 500,
  });
  await consumer.connect();
  try {
    const received = await consumeMessages(consumer, topic, count, consumeTimeoutMs);
    await consumer.commitOffsets(nextOffsets(topic, received));
    return sorted(received.map((message) => message.value));
  } finally {
    await consumer.disconnect();
  }
}

async function committedOffsets(): Promise<{ partition: number; offset: string }[]> {
  const [committed] = await withAdmin((admin) => admin.fetchOffsets({ groupId, topics: [topic] }));
  return (committed?.partitions ?? [])
    .map(({ partition, offset }) => ({ partition, offset }))
    .sort((a, b) => a.partition - b.partition);
}

async function partitionEnds(): Promise<{ partition: number; offset: string }[]> {
  const ends = await withAdmin((admin) => admin.fetchTopicOffsets(topic));
  return ends
    .map(({ partition, high }) => ({ partition, offset: high }))
    .sort((a, b) => a.partition - b.partition);
}

/** The topic holds every message produced, and the group's committed offsets are its ends. */
async function expectEverythingKept(): Promise<void> {
  const ends = await partitionEnds();
  expect(ends.reduce((total, { offset }) => total + Number(offset), 0)).toBe(produced.length);
  expect(await committedOffsets()).toEqual(ends);
  // A new group reads the topic from the beginning.
  expect(await consumeAndCommit(randomName('fstore_throwaway_reader'))).toEqual(sorted(produced));
}

/** Whether something accepts connections on the port. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.setTimeout(2_000, () => socket.destroy(new Error('connect timed out')));
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Whether a server could listen on the port now. */
function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

const sorted = (values: string[]): string[] => [...values].sort();

describe('a throwaway Kafka broker', () => {
  it('listens on a private pair of ports from 19300-19399', async () => {
    expect(broker.port).toBeGreaterThanOrEqual(19_300);
    expect(broker.controllerPort).toBe(broker.port + 1);
    expect(broker.controllerPort).toBeLessThanOrEqual(19_399);
    expect(broker.brokers).toEqual([`127.0.0.1:${broker.port}`]);
    expect(await listening(broker.port)).toBe(true);
    expect(await listening(broker.controllerPort)).toBe(true);
  });

  it(
    'keeps the topic, its messages and the committed offsets across stop() and start()',
    async () => {
      await broker.stop();
      expect(await listening(broker.port)).toBe(false);
      expect(await listening(broker.controllerPort)).toBe(false);
      await broker.start();
      await expectEverythingKept();
    },
    brokerTimeoutMs,
  );

  it(
    'keeps them across kill() and start(), up to the last acknowledged message and commit',
    async () => {
      const batch = await produce('b');
      // The group resumes after its committed offsets: only the new batch arrives.
      expect(await consumeAndCommit(groupId, batch.length)).toEqual(sorted(batch));
      await broker.kill();
      expect(await listening(broker.port)).toBe(false);
      expect(await listening(broker.controllerPort)).toBe(false);
      await broker.start();
      await expectEverythingKept();
    },
    brokerTimeoutMs,
  );

  it(
    'destroy() removes its run dir and frees its ports',
    async () => {
      expect(existsSync(broker.runDir)).toBe(true);
      await broker.destroy();
      expect(existsSync(broker.runDir)).toBe(false);
      expect(await bindable(broker.port)).toBe(true);
      expect(await bindable(broker.controllerPort)).toBe(true);
      await expect(broker.start()).rejects.toThrow(/destroyed/);
    },
    brokerTimeoutMs,
  );
});
