/**
 * The Kafka adapter of the event source port, on kafkajs: one consumer-group member of one topic
 * (offsets committed only when the stream tier says so, never automatically), a producer for the
 * dead-letter topic and an admin client for log start offsets. The only module that imports
 * kafkajs.
 */
import {
  type Admin,
  type Consumer,
  Kafka,
  type LogEntry,
  logLevel,
  Partitioners,
  type Producer,
} from 'kafkajs';
import type { Logger } from 'pino';
import { FStoreError } from '../../domain/errors.js';
import type { DeadLetter, EventSource, EventSourceHandlers } from '../../ports/event-source.js';

export interface KafkaEventSourceOptions {
  readonly brokers: readonly string[];
  readonly clientId: string;
  readonly groupId: string;
  readonly topic: string;
  readonly deadLetterTopic: string;
  /** Partitions processed at once by this member. */
  readonly partitionsConsumedConcurrently: number;
  /** Fetch size per partition, bytes: bounds what one batch holds. */
  readonly maxBytesPerPartition: number;
  readonly sessionTimeoutMs: number;
  readonly logger: Logger;
}

const kafkaLevels: Record<number, 'error' | 'warn' | 'info' | 'debug'> = {
  [logLevel.ERROR]: 'error',
  [logLevel.WARN]: 'warn',
  [logLevel.INFO]: 'info',
  [logLevel.DEBUG]: 'debug',
};

export function createKafkaEventSource(options: KafkaEventSourceOptions): EventSource {
  const { topic, logger } = options;
  const kafka = new Kafka({
    clientId: options.clientId,
    brokers: [...options.brokers],
    connectionTimeout: 5_000,
    requestTimeout: 30_000,
    // kafkajs retries a failed request with backoff up to this; the consumer then restarts itself.
    retry: { retries: 8, initialRetryTime: 200, maxRetryTime: 5_000 },
    logLevel: logLevel.WARN,
    logCreator:
      () =>
      ({ level, log }: LogEntry) => {
        const { message, ...extra } = log;
        logger[kafkaLevels[level] ?? 'info']({ kafka: extra }, `kafkajs: ${message}`);
      },
  });
  const consumer: Consumer = kafka.consumer({
    groupId: options.groupId,
    sessionTimeout: options.sessionTimeoutMs,
    heartbeatInterval: Math.max(100, Math.floor(options.sessionTimeoutMs / 10)),
    maxBytesPerPartition: options.maxBytesPerPartition,
    maxWaitTimeInMs: 100,
    // Every restart after a crash re-reads from the stream tier's checkpoint, not from a guess.
    retry: { retries: 8, initialRetryTime: 200, maxRetryTime: 5_000 },
  });
  // Dead letters are at least once (a restart re-publishes those after the last checkpoint; their
  // key is the source position): no idempotent producer, one request in flight keeps their order.
  const producer: Producer = kafka.producer({
    maxInFlightRequests: 1,
    createPartitioner: Partitioners.DefaultPartitioner,
  });
  const admin: Admin = kafka.admin();
  /** consumer.run() went through: the consumer is in the group and must leave it on stop. */
  let started = false;
  /** stop() was called: a start in progress gives up at its next step. */
  let stopRequested = false;
  let starting: Promise<void> | undefined;
  const stoppedWhileStarting = () =>
    new FStoreError('cancelled', `the consumer of ${topic} was stopped while it started`);
  /** Throws once stop() was called (between the steps of a start). */
  const checkStop = () => {
    if (stopRequested) throw stoppedWhileStarting();
  };

  async function startConsumer(handlers: EventSourceHandlers) {
    try {
      checkStop();
      await Promise.all([consumer.connect(), producer.connect(), admin.connect()]);
      checkStop();
      const topics = await admin.listTopics();
      if (!topics.includes(topic))
        throw new FStoreError('failed_precondition', `Kafka topic ${topic} does not exist`);
      if (!topics.includes(options.deadLetterTopic)) {
        const metadata = await admin.fetchTopicMetadata({ topics: [topic] });
        // Partitioned like the source; a concurrent member creating it too is fine.
        await admin.createTopics({
          waitForLeaders: true,
          topics: [
            { topic: options.deadLetterTopic, numPartitions: metadata.topics[0]?.partitions.length ?? 1 },
          ],
        });
        logger.info({ topic: options.deadLetterTopic }, 'dead-letter topic created');
      }
      checkStop();
      consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
        const assignment = payload.memberAssignment[topic] ?? [];
        handlers.onAssignment([...assignment].sort((a, b) => a - b));
      });
      consumer.on(consumer.events.CRASH, ({ payload }) => {
        if (!payload.restart) handlers.onCrash(payload.error);
      });
      await consumer.subscribe({ topics: [topic], fromBeginning: true });
      checkStop();
      // From here the join is waited for, never cut short: kafkajs's consumer.stop() during a
      // join does nothing, and the join would then go on fetching without a stop to come. stop()
      // waits for this start to settle and then makes the consumer leave the group.
      await consumer.run({
        autoCommit: false,
        eachBatchAutoResolve: false,
        partitionsConsumedConcurrently: options.partitionsConsumedConcurrently,
        eachBatch: async ({ batch, isStale, heartbeat, resolveOffset }) => {
          if (batch.messages.length === 0) return;
          await handlers.onBatch(
            {
              partition: batch.partition,
              highWatermark: batch.highWatermark,
              // kafkajs messages have the record shape: handed over as they are, not copied.
              records: batch.messages,
            },
            { isStale, heartbeat, resolveOffset },
          );
        },
      });
      started = true;
    } catch (error) {
      await Promise.allSettled([consumer.disconnect(), producer.disconnect(), admin.disconnect()]);
      if (error instanceof FStoreError) throw error;
      if (stopRequested) throw stoppedWhileStarting();
      throw new FStoreError(
        'unavailable',
        `Kafka (${options.brokers.join(',')}): ${(error as Error).message}`,
        {
          cause: error,
        },
      );
    }
  }

  return {
    topic,

    start(handlers: EventSourceHandlers) {
      starting = startConsumer(handlers);
      return starting;
    },

    seek(partition, offset) {
      consumer.seek({ topic, partition, offset });
    },
    pause(partition) {
      consumer.pause([{ topic, partitions: [partition] }]);
    },
    resume(partition) {
      consumer.resume([{ topic, partitions: [partition] }]);
    },

    async commit(partition, nextOffset) {
      await consumer.commitOffsets([{ topic, partition, offset: nextOffset }]);
    },

    async earliestOffsets() {
      const offsets = await admin.fetchTopicOffsets(topic);
      return new Map(offsets.map((entry) => [entry.partition, entry.low]));
    },

    async publishDeadLetters(letters: readonly DeadLetter[]) {
      if (letters.length === 0) return;
      await producer.send({
        topic: options.deadLetterTopic,
        acks: -1,
        messages: letters.map((letter) => ({
          // The source position: a consumer of the dead letters can drop the repeats a restart makes.
          key: `${topic}/${letter.partition}/${letter.offset}`,
          value:
            letter.value === null
              ? null
              : Buffer.from(letter.value.buffer, letter.value.byteOffset, letter.value.byteLength),
          headers: {
            'fstore.source.topic': topic,
            'fstore.source.partition': String(letter.partition),
            'fstore.source.offset': letter.offset,
            'fstore.reason': letter.reason,
            'fstore.problem': letter.problem,
          },
        })),
      });
    },

    async stop() {
      stopRequested = true;
      // A start in progress gives up at its next step (or, joining, is waited for): settled first.
      await starting?.catch(() => {});
      if (started) await consumer.stop().catch(() => {});
      await Promise.allSettled([consumer.disconnect(), producer.disconnect(), admin.disconnect()]);
    },
  };
}
