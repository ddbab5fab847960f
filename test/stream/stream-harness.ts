/**
 * What the stream tier's end-to-end tests share: the aggregation they apply, events and their
 * bytes, producing them to a real broker, reading what the sinks stored, and the expected rows
 * from the batch oracle (test/support/window-oracle.ts) over each partition's log.
 */
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { Admin, Kafka } from 'kafkajs';
import { Packr } from 'msgpackr';
import pg from 'pg';
import { expect } from 'vitest';
import {
  AggregationFunction,
  EventTimeUnit,
  type StreamAggregationSchema,
  StreamEncoding,
} from '../../gen/fstore/v1/registry_pb.js';
import type { AggregateValue } from '../../src/domain/aggregations.js';
import { encodeOnlineKey } from '../../src/domain/online-codec.js';
import type { AggregationSpec } from '../../src/domain/window-aggregator.js';
import { type PartitionOracleSpec, partitionOracle } from '../support/window-oracle.js';
import { waitUntil } from './kafka-test-client.js';

const seconds = (count: number) => ({ seconds: BigInt(count) });
const micros = (count: number) => count * 1_000_000;

/** Window 10 s and 20 s, both sliding by 5 s; B = 2 s; allowed lateness 3 s. */
export const testAggregations: AggregationSpec[] = [
  { name: 'events_10s', function: 'count', sizeMicros: micros(10), slideMicros: micros(5) },
  {
    name: 'amount_sum_10s',
    function: 'sum',
    field: 'amount',
    sizeMicros: micros(10),
    slideMicros: micros(5),
  },
  { name: 'events_20s', function: 'count', sizeMicros: micros(20), slideMicros: micros(5) },
  {
    name: 'amount_max_20s',
    function: 'max',
    field: 'amount',
    sizeMicros: micros(20),
    slideMicros: micros(5),
  },
  {
    name: 'amount_mean_20s',
    function: 'mean',
    field: 'amount',
    sizeMicros: micros(20),
    slideMicros: micros(5),
  },
  {
    name: 'amount_last_20s',
    function: 'last',
    field: 'amount',
    sizeMicros: micros(20),
    slideMicros: micros(5),
  },
  {
    name: 'items_20s',
    function: 'distinct_count',
    field: 'item',
    sizeMicros: micros(20),
    slideMicros: micros(5),
  },
];

export const oracleSpec: PartitionOracleSpec = {
  aggregations: testAggregations,
  boundMicros: micros(2),
  allowedLatenessMicros: micros(3),
  emitFollowingEmptyWindow: true,
};

const protoFunctions = {
  count: AggregationFunction.COUNT,
  sum: AggregationFunction.SUM,
  max: AggregationFunction.MAX,
  mean: AggregationFunction.MEAN,
  last: AggregationFunction.LAST,
  distinct_count: AggregationFunction.DISTINCT_COUNT,
} as Record<string, AggregationFunction>;

/** The definition applied through RegistryService, keyed by (user, merchant). */
export function streamAggregationInit(
  name: string,
  topic: string,
  encoding: 'json' | 'msgpack' = 'json',
): MessageInitShape<typeof StreamAggregationSchema> {
  return {
    name,
    topic,
    encoding: encoding === 'json' ? StreamEncoding.JSON : StreamEncoding.MSGPACK,
    keyFields: ['user', 'merchant'],
    entities: ['user', 'merchant'],
    eventTimeField: 'ts',
    eventTimeUnit: EventTimeUnit.EPOCH_MILLIS,
    watermarkBound: seconds(2),
    allowedLateness: seconds(3),
    emitFollowingEmptyWindow: true,
    aggregations: testAggregations.map((aggregation) => ({
      name: aggregation.name,
      function: protoFunctions[aggregation.function],
      ...(aggregation.field ? { field: aggregation.field } : {}),
      windowSize: { seconds: BigInt(aggregation.sizeMicros / 1_000_000) },
      slide: { seconds: BigInt(aggregation.slideMicros / 1_000_000) },
    })),
    online: true,
  } as MessageInitShape<typeof StreamAggregationSchema>;
}

/** One record: an event, or bytes that are not one (`raw`). */
export interface TestRecord {
  readonly partition: number;
  readonly user: string;
  readonly merchant: number;
  /** Event time, milliseconds. */
  readonly ts: number;
  readonly amount: number | null;
  readonly item: string;
  /** When set, the record's bytes instead of the event (a malformed record). */
  readonly raw?: Buffer;
}

/** A small deterministic PRNG (mulberry32), so a failing run can be repeated. */
export function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** Entities are keyed to partitions, as a producer keying records by entity does. */
export const partitionOf = (user: string, merchant: number, partitions: number) => {
  let hash = merchant;
  for (const char of user) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  return hash % partitions;
};

export const baseMs = Date.UTC(2026, 0, 1);

/**
 * `count` events over `spanMs` of event time from baseMs, on `users` × 3 merchants, arriving with
 * up to `disorderMs` of disorder (some beyond B + lateness, so some are late), a few malformed
 * records, and at the end one far-future event per partition that fires every window before it.
 */
export function generateRecords(options: {
  readonly seed: number;
  readonly count: number;
  readonly partitions: number;
  readonly users?: number;
  readonly spanMs?: number;
  readonly disorderMs?: number;
  readonly malformed?: number;
}): TestRecord[] {
  const next = random(options.seed);
  const users = options.users ?? 12;
  const spanMs = options.spanMs ?? 120_000;
  const disorderMs = options.disorderMs ?? 8_000;
  const records: TestRecord[] = [];
  for (let index = 0; index < options.count; index++) {
    const user = `u${Math.floor(next() * users)}`;
    const merchant = 1 + Math.floor(next() * 3);
    const ts = baseMs + Math.floor((index / options.count) * spanMs - next() * disorderMs);
    records.push({
      partition: partitionOf(user, merchant, options.partitions),
      user,
      merchant,
      ts,
      amount: next() < 0.1 ? null : Math.round(next() * 10_000) / 100,
      item: `i${Math.floor(next() * 6)}`,
    });
  }
  const malformed = options.malformed ?? 0;
  const bad = [
    Buffer.from('{"user": "u1", "merchant": 1, "ts": '), // not JSON
    Buffer.from(JSON.stringify({ merchant: 1, ts: baseMs, amount: 1 })), // no user
    Buffer.from(JSON.stringify({ user: 'u1', merchant: 'one', ts: baseMs })), // merchant not an int64
    Buffer.from(JSON.stringify({ user: 'u1', merchant: 1, ts: 'soon' })), // ts not a number
    Buffer.from(JSON.stringify({ user: 'u1', merchant: 1, ts: baseMs, amount: 'ten' })), // amount not a number
  ];
  for (let index = 0; index < malformed; index++) {
    const at = Math.floor(next() * records.length);
    const partition = Math.floor(next() * options.partitions);
    records.splice(at, 0, {
      partition,
      user: '',
      merchant: 0,
      ts: 0,
      amount: null,
      item: '',
      raw: bad[index % bad.length],
    });
  }
  for (let partition = 0; partition < options.partitions; partition++)
    records.push({
      partition,
      user: `flush${partition}`,
      merchant: 0,
      ts: baseMs + spanMs + 3_600_000,
      amount: null,
      item: 'flush',
    });
  return records;
}

const packr = new Packr({ useRecords: false });

export function recordBytes(record: TestRecord, encoding: 'json' | 'msgpack' = 'json'): Buffer {
  if (record.raw) return record.raw;
  const event = {
    user: record.user,
    merchant: record.merchant,
    ts: record.ts,
    amount: record.amount,
    item: record.item,
  };
  return encoding === 'json' ? Buffer.from(JSON.stringify(event)) : packr.pack(event);
}

export async function createTopic(admin: Admin, topic: string, partitions: number): Promise<void> {
  await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: partitions }] });
}

/** Produces the records in order (each partition's order is its log's order). */
export async function produceRecords(
  kafka: Kafka,
  topic: string,
  records: readonly TestRecord[],
  encoding: 'json' | 'msgpack' = 'json',
): Promise<void> {
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  try {
    for (let start = 0; start < records.length; start += 500)
      await producer.send({
        topic,
        acks: -1,
        messages: records.slice(start, start + 500).map((record) => ({
          partition: record.partition,
          key: `${record.user}|${record.merchant}`,
          value: recordBytes(record, encoding),
        })),
      });
  } finally {
    await producer.disconnect();
  }
}

export interface ExpectedOutcome {
  /** By `${onlineKey}|${end}`. */
  readonly rows: Map<string, { key: string; end: number; values: Record<string, AggregateValue> }>;
  readonly late: number;
  readonly malformed: number;
}

/** The oracle over each partition's log (records in production order). */
export function expectedOutcome(
  records: readonly TestRecord[],
  partitions: number,
  viewId: number,
): ExpectedOutcome {
  const rows: ExpectedOutcome['rows'] = new Map();
  let late = 0;
  let malformed = 0;
  for (let partition = 0; partition < partitions; partition++) {
    const log = [];
    for (const record of records) {
      if (record.partition !== partition) continue;
      if (record.raw) {
        malformed++;
        continue;
      }
      log.push({
        key: encodeOnlineKey(viewId, [record.user, BigInt(record.merchant)]),
        time: record.ts * 1000,
        fields: { amount: record.amount, item: record.item },
      });
    }
    const result = partitionOracle(oracleSpec, log);
    late += result.late.length;
    for (const [id, row] of result.rows) rows.set(id, row);
  }
  return { rows, late, malformed };
}

/** The registry id of a feature view (it names its online keys and offline table). */
export async function viewIdOf(
  postgresUrl: string,
  schema: string,
  project: string,
  name: string,
): Promise<number> {
  const client = new pg.Client({ connectionString: postgresUrl });
  await client.connect();
  try {
    const result = await client.query<{ id: number }>(
      `SELECT id FROM "${schema}".feature_views WHERE project = $1 AND name = $2`,
      [project, name],
    );
    return result.rows[0]!.id;
  } finally {
    await client.end();
  }
}

/** Every row the offline store holds for the view, by `${onlineKey}|${end}`. */
export async function storedOfflineRows(
  postgresUrl: string,
  schema: string,
  viewId: number,
): Promise<Map<string, Record<string, AggregateValue>>> {
  const client = new pg.Client({ connectionString: postgresUrl });
  await client.connect();
  try {
    const columns = await client.query<{ role: string; name: string; column_name: string }>(
      `SELECT role, name, column_name FROM "${schema}".offline_columns
       WHERE view_id = $1 AND version = (SELECT max(version) FROM "${schema}".offline_columns WHERE view_id = $1)`,
      [viewId],
    );
    const features = columns.rows.filter((column) => column.role === 'feature');
    const column = (name: string) =>
      columns.rows.find((c) => c.role === 'key' && c.name === name)!.column_name;
    const result = await client.query(
      `SELECT "${column('user_id')}"::text AS user_id, "${column('merchant_id')}"::text AS merchant_id,
         ((EXTRACT(EPOCH FROM event_time) * 1000000)::bigint)::text AS end_time,
         ${features.map((f) => `"${f.column_name}" AS "${f.name}"`).join(', ')}
       FROM "${schema}".offline_view_${viewId}`,
    );
    const rows = new Map<string, Record<string, AggregateValue>>();
    for (const row of result.rows) {
      const key = encodeOnlineKey(viewId, [row.user_id, BigInt(row.merchant_id)]);
      const values: Record<string, AggregateValue> = {};
      for (const feature of features) {
        const value = row[feature.name];
        values[feature.name] = value === null ? null : Number(value);
      }
      const id = `${key}|${row.end_time}`;
      expect(rows.has(id), `row ${id} is stored twice`).toBe(false);
      rows.set(id, values);
    }
    return rows;
  } finally {
    await client.end();
  }
}

/** Asserts the stored rows are exactly the expected ones (sums and means to 1e-9 relative). */
export function expectRowsEqual(
  stored: Map<string, Record<string, AggregateValue>>,
  expected: ExpectedOutcome['rows'],
): void {
  const missing = [...expected.keys()].filter((id) => !stored.has(id));
  const extra = [...stored.keys()].filter((id) => !expected.has(id));
  expect({ missing: missing.slice(0, 5), extra: extra.slice(0, 5) }).toEqual({ missing: [], extra: [] });
  for (const [id, { values }] of expected) {
    const actual = stored.get(id)!;
    for (const [name, value] of Object.entries(values)) {
      const got = actual[name] ?? null;
      if (typeof value === 'number' && typeof got === 'number' && !Number.isInteger(value))
        expect(Math.abs(got - value), `${id} ${name}: ${got} vs ${value}`).toBeLessThanOrEqual(
          1e-9 * (1 + Math.abs(value)),
        );
      else expect(got, `${id} ${name}`).toEqual(typeof value === 'bigint' ? Number(value) : value);
    }
  }
}

/** Waits until the group's committed offsets reach the end of every partition of the topic. */
export async function waitForCommittedToEnd(
  admin: Admin,
  groupId: string,
  topic: string,
  timeoutMs: number,
): Promise<void> {
  const ends = new Map((await admin.fetchTopicOffsets(topic)).map((entry) => [entry.partition, entry.high]));
  await waitUntil(
    async () => {
      const [committed] = await admin.fetchOffsets({ groupId, topics: [topic] });
      return (
        (committed?.partitions ?? []).every(
          (entry) =>
            entry.offset !== '-1' && BigInt(entry.offset) >= BigInt(ends.get(entry.partition) ?? '0'),
        ) && (committed?.partitions.length ?? 0) === ends.size
      );
    },
    timeoutMs,
    `group ${groupId} to commit the end of ${topic}`,
  );
}

/** Every record of the dead-letter topic: reason and source position (repeats after a restart included). */
export async function readDeadLetters(kafka: Kafka, topic: string, timeoutMs = 20_000) {
  const admin = kafka.admin();
  await admin.connect();
  const total = (await admin.fetchTopicOffsets(topic)).reduce(
    (sum, entry) => sum + Number(entry.high) - Number(entry.low),
    0,
  );
  await admin.disconnect();
  const letters: { reason: string; problem: string; position: string }[] = [];
  if (total === 0) return letters;
  const consumer = kafka.consumer({ groupId: `dlq-reader-${Math.random().toString(36).slice(2)}` });
  await consumer.connect();
  try {
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ message }) => {
        letters.push({
          reason: String(message.headers?.['fstore.reason']),
          problem: String(message.headers?.['fstore.problem']),
          position: String(message.key),
        });
      },
    });
    await waitUntil(() => letters.length >= total, timeoutMs, `${total} dead letters`);
  } finally {
    await consumer.disconnect();
  }
  return letters;
}
