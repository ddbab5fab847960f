import type { Admin, Consumer, Kafka, Producer } from 'kafkajs';
import { Partitioners } from 'kafkajs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomName, requireEnvironment } from '../support/environment.js';
import {
  consumeMessages,
  createTestKafka,
  nextOffsets,
  type ReceivedMessage,
  waitUntil,
} from './kafka-test-client.js';

/**
 * The real Kafka broker that scripts/servers.sh starts (KRaft, single node; DESIGN.md §7), used
 * through kafkajs the way the stream tier will: keyed messages over 3 partitions, a consumer
 * group that commits its offsets by hand, and consumers that come and go. Every test has its own
 * topic and group.
 */

const partitions = 3;
const keys = Array.from({ length: 10 }, (_, index) => `entity-${index}`);
const consumeTimeoutMs = 30_000;

let kafka: Kafka;
let admin: Admin;
let producer: Producer;
const topics: string[] = [];
const groups: string[] = [];
const consumers = new Set<Consumer>();

beforeAll(async () => {
  kafka = createTestKafka(requireEnvironment('FSTORE_TEST_KAFKA_BROKERS').split(','));
  admin = kafka.admin();
  await admin.connect();
  producer = kafka.producer({
    createPartitioner: Partitioners.DefaultPartitioner,
    allowAutoTopicCreation: false,
  });
  await producer.connect();
});

afterEach(async () => {
  await Promise.all([...consumers].map((consumer) => consumer.disconnect()));
  consumers.clear();
});

afterAll(async () => {
  await producer?.disconnect();
  if (admin) {
    if (groups.length > 0) await admin.deleteGroups(groups).catch(() => undefined);
    if (topics.length > 0) await admin.deleteTopics({ topics, timeout: 10_000 }).catch(() => undefined);
    await admin.disconnect();
  }
});

async function createTopic(): Promise<string> {
  const topic = randomName('fstore_broker_test');
  topics.push(topic);
  const created = await admin.createTopics({
    topics: [{ topic, numPartitions: partitions, replicationFactor: 1 }],
    waitForLeaders: true,
    timeout: 10_000,
  });
  expect(created).toBe(true);
  return topic;
}

function newGroup(): string {
  const group = randomName('fstore_broker_group');
  groups.push(group);
  return group;
}

function newConsumer(groupId: string): Consumer {
  // One-second heartbeats: a rebalance (a member joining or leaving) settles in about that long.
  // Fetches wait at most 500 ms for data (default 5 s): disconnect waits for the fetch in flight.
  const consumer = kafka.consumer({
    groupId,
    sessionTimeout: 10_000,
    heartbeatInterval: 1_000,
    maxWaitTimeInMs: 500,
  });
  consumers.add(consumer);
  return consumer;
}

/** Three messages per key, values `<batch>:<key>:<sequence>`, all acknowledged by the broker. */
async function produceBatch(topic: string, batch: string): Promise<string[]> {
  const messages = [0, 1, 2].flatMap((sequence) =>
    keys.map((key) => ({ key, value: `${batch}:${key}:${sequence}` })),
  );
  await producer.send({ topic, acks: -1, messages });
  return messages.map((message) => message.value);
}

/** Every key stays on one partition, and its messages arrive in the order they were sent. */
function expectKeyedOrder(received: ReceivedMessage[]): void {
  const partitionOfKey = new Map<string, number>();
  const lastSequence = new Map<string, number>();
  for (const { key, value, partition } of received) {
    expect(partitionOfKey.get(key) ?? partition).toBe(partition);
    partitionOfKey.set(key, partition);
    const sequence = Number(value.split(':')[2]);
    expect(sequence).toBeGreaterThan(lastSequence.get(key) ?? -1);
    lastSequence.set(key, sequence);
  }
}

const sorted = (values: string[]): string[] => [...values].sort();
const valuesOf = (received: ReceivedMessage[]): string[] => sorted(received.map((message) => message.value));

describe('the test Kafka broker through kafkajs', () => {
  it('creates a topic with 3 partitions and stores keyed messages across them', async () => {
    const topic = await createTopic();
    const [metadata] = (await admin.fetchTopicMetadata({ topics: [topic] })).topics;
    expect(metadata?.partitions.map((partition) => partition.partitionId).sort()).toEqual([0, 1, 2]);
    for (const partition of metadata?.partitions ?? []) expect(partition.leader).toBeGreaterThanOrEqual(0);

    await produceBatch(topic, 'a');
    const offsets = await admin.fetchTopicOffsets(topic);
    expect(offsets).toHaveLength(partitions);
    expect(offsets.reduce((total, partition) => total + Number(partition.high), 0)).toBe(3 * keys.length);
    // Ten keys hash to more than one partition (murmur2, as the Java client does).
    expect(offsets.filter((partition) => Number(partition.high) > 0).length).toBeGreaterThan(1);
  });

  it('a second consumer in the group resumes after the offsets the first one committed', async () => {
    const topic = await createTopic();
    const groupId = newGroup();
    const batchA = await produceBatch(topic, 'a');

    const first = newConsumer(groupId);
    await first.connect();
    const receivedA = await consumeMessages(first, topic, batchA.length, consumeTimeoutMs);
    expect(valuesOf(receivedA)).toEqual(sorted(batchA));
    expectKeyedOrder(receivedA);
    await first.commitOffsets(nextOffsets(topic, receivedA));
    await first.disconnect();
    consumers.delete(first);

    // The committed offsets are the ends of the partitions.
    const [committed] = await admin.fetchOffsets({ groupId, topics: [topic] });
    const ends = await admin.fetchTopicOffsets(topic);
    expect(
      committed?.partitions
        .map(({ partition, offset }) => ({ partition, offset }))
        .sort((a, b) => a.partition - b.partition),
    ).toEqual(
      ends
        .map(({ partition, high }) => ({ partition, offset: high }))
        .sort((a, b) => a.partition - b.partition),
    );

    const batchB = await produceBatch(topic, 'b');
    const second = newConsumer(groupId);
    await second.connect();
    // Subscribed fromBeginning, but the group's committed offsets win: only batch b arrives.
    const receivedB = await consumeMessages(second, topic, batchB.length, consumeTimeoutMs);
    expect(valuesOf(receivedB)).toEqual(sorted(batchB));
    expectKeyedOrder(receivedB);
  }, 90_000);

  it('a consumer that restarts picks up where its group left off, and the broker serves on', async () => {
    const topic = await createTopic();
    const groupId = newGroup();
    const batchA = await produceBatch(topic, 'a');

    const consumer = newConsumer(groupId);
    await consumer.connect();
    const receivedA = await consumeMessages(consumer, topic, batchA.length, consumeTimeoutMs);
    expect(valuesOf(receivedA)).toEqual(sorted(batchA));
    await consumer.commitOffsets(nextOffsets(topic, receivedA));
    await consumer.disconnect();

    // While it is away the group is empty but keeps its offsets, and the broker takes writes.
    await waitUntil(
      async () => (await admin.describeGroups([groupId])).groups[0]?.state === 'Empty',
      10_000,
      `group ${groupId} to be empty`,
    );
    const batchB = await produceBatch(topic, 'b');

    await consumer.connect();
    const receivedB = await consumeMessages(consumer, topic, batchB.length, consumeTimeoutMs);
    expect(valuesOf(receivedB)).toEqual(sorted(batchB));
    expectKeyedOrder(receivedB);
    await consumer.commitOffsets(nextOffsets(topic, receivedB));

    const [committed] = await admin.fetchOffsets({ groupId, topics: [topic] });
    const total = committed?.partitions.reduce((sum, { offset }) => sum + Number(offset), 0);
    expect(total).toBe(batchA.length + batchB.length);
  }, 90_000);
});
