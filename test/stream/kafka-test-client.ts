import { setTimeout as sleep } from 'node:timers/promises';
import { type Consumer, Kafka, logLevel } from 'kafkajs';
import { randomName } from '../support/environment.js';

/**
 * kafkajs clients for tests against a real broker: silent (a test reports what went wrong
 * itself; kafkajs logs every dropped connection and rebalance at ERROR) and with short, bounded
 * retries so a broken broker fails the test instead of hanging it.
 */
export function createTestKafka(brokers: string[]): Kafka {
  return new Kafka({
    clientId: randomName('fstore_test'),
    brokers,
    logLevel: logLevel.NOTHING,
    connectionTimeout: 3_000,
    requestTimeout: 10_000,
    retry: { retries: 5, initialRetryTime: 100, maxRetryTime: 2_000 },
  });
}

/** Polls `condition` every 50 ms until it holds; throws naming `what` after `timeoutMs`. */
export async function waitUntil(
  condition: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

export interface ReceivedMessage {
  partition: number;
  offset: string;
  key: string;
  value: string;
}

/**
 * Subscribes `consumer` (connected, not running) to `topic` and runs it without auto-commit,
 * collecting every message it is handed until `count` have arrived. `fromBeginning` only applies
 * where the group has no committed offset. The consumer keeps running: the caller commits and
 * disconnects.
 */
export async function consumeMessages(
  consumer: Consumer,
  topic: string,
  count: number,
  timeoutMs: number,
): Promise<ReceivedMessage[]> {
  const received: ReceivedMessage[] = [];
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      received.push({
        partition,
        offset: message.offset,
        key: message.key?.toString() ?? '',
        value: message.value?.toString() ?? '',
      });
    },
  });
  await waitUntil(() => received.length >= count, timeoutMs, `${count} messages from ${topic}`);
  return received;
}

/** The next offset to read in each partition after `messages`, as a commit wants it. */
export function nextOffsets(
  topic: string,
  messages: ReceivedMessage[],
): { topic: string; partition: number; offset: string }[] {
  const next = new Map<number, bigint>();
  for (const { partition, offset } of messages) {
    const after = BigInt(offset) + 1n;
    if (after > (next.get(partition) ?? 0n)) next.set(partition, after);
  }
  return [...next].map(([partition, offset]) => ({ topic, partition, offset: offset.toString() }));
}
