/**
 * The event source port of the stream tier (DESIGN §2): one topic read by a consumer-group member,
 * partition by partition, with the operations the stream tier uses and nothing else.
 * `src/adapters/kafka/` implements it with kafkajs.
 */

export interface SourceRecord {
  /** Kafka offsets are 64-bit: decimal strings. */
  readonly offset: string;
  readonly value: Uint8Array | null;
  /** The record's timestamp (producer's create time), milliseconds since the epoch, as text. */
  readonly timestamp: string;
}

export interface SourceBatch {
  readonly partition: number;
  /** In offset order; never empty. */
  readonly records: readonly SourceRecord[];
  /** The partition's log end offset when fetched (for the lag). */
  readonly highWatermark: string;
}

export interface BatchControl {
  /** True once the batch is outdated by a rebalance or a seek: process nothing more of it. */
  isStale(): boolean;
  /** Keeps the group membership alive during long sink retries. */
  heartbeat(): Promise<void>;
  /** Marks records up to `offset` as processed (they are not fetched again by this member). */
  resolveOffset(offset: string): void;
}

export interface DeadLetter {
  readonly partition: number;
  readonly offset: string;
  readonly value: Uint8Array | null;
  /** `malformed`, `invalid` or `late`. */
  readonly reason: string;
  readonly problem: string;
}

export interface EventSourceHandlers {
  /** The member's whole assignment after each rebalance (partitions of the topic). */
  onAssignment(partitions: readonly number[]): void;
  onBatch(batch: SourceBatch, control: BatchControl): Promise<void>;
  /** A crash of the consumer the source could not recover from; the role should exit. */
  onCrash(error: unknown): void;
}

export interface EventSource {
  readonly topic: string;
  /** Joins the group and delivers batches until `stop`. */
  start(handlers: EventSourceHandlers): Promise<void>;
  /** The next fetch of `partition` starts at `offset`. */
  seek(partition: number, offset: string): void;
  pause(partition: number): void;
  resume(partition: number): void;
  /** The group's committed position of `partition` becomes `nextOffset` (for lag and tooling). */
  commit(partition: number, nextOffset: string): Promise<void>;
  /** The first offset still in the log of each partition. */
  earliestOffsets(): Promise<Map<number, string>>;
  /** Writes records to the dead-letter topic with their reason; resolves once acknowledged. */
  publishDeadLetters(letters: readonly DeadLetter[]): Promise<void>;
  stop(): Promise<void>;
}
