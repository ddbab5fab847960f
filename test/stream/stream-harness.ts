/**
 * What the stream tier's end-to-end tests share: the aggregation they apply, events and their
 * bytes, producing them to a real broker, reading what the sinks stored, and the expected rows
 * from the batch oracle (test/support/window-oracle.ts) over each partition's log.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { type Admin, AssignerProtocol, type Kafka } from 'kafkajs';
import { Packr } from 'msgpackr';
import pg from 'pg';
import { pino } from 'pino';
import { expect } from 'vitest';
import {
  AggregationFunction,
  EventTimeUnit,
  type StreamAggregationSchema,
  StreamEncoding,
} from '../../gen/fstore/v1/registry_pb.js';
import { FeatureStatus } from '../../gen/fstore/v1/values_pb.js';
import { type StreamRole, startStreamRole } from '../../src/app/stream.js';
import type { Config } from '../../src/config/config.js';
import type { AggregateValue } from '../../src/domain/aggregations.js';
import { encodeOnlineKey } from '../../src/domain/online-codec.js';
import type { AggregationSpec } from '../../src/domain/window-aggregator.js';
import { int64s, strings } from '../support/fixtures.js';
import type { TestServer } from '../support/serving-harness.js';
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

// ---- Fault tests: `fstore stream` members as child processes, group offsets, online reads ----

/** How a member process ended. */
export interface MemberExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** A `fstore stream` member run as a child process, the way an operator runs one. */
export interface MemberProcess {
  readonly label: string;
  readonly pid: number;
  /** Resolves once the process has exited. */
  readonly exited: Promise<MemberExit>;
  /** Null while it runs. */
  exit(): MemberExit | null;
  /** The last lines it printed (stdout and stderr), for failure messages. */
  output(): string;
  /** Sends `signal` and waits for the exit (SIGKILL after `timeoutMs` if it is still there). */
  stop(signal: 'SIGTERM' | 'SIGKILL', timeoutMs?: number): Promise<MemberExit>;
}

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const liveMembers = new Set<ChildProcess>();
let exitHookInstalled = false;

/**
 * Starts `node --import tsx src/cli/main.ts stream` with `environment` (FSTORE_* settings; none
 * is inherited from this process, so the test says exactly what the member runs with). The
 * member is SIGKILLed when this process exits, whatever happens to the test.
 */
export function spawnStreamMember(options: {
  readonly label: string;
  readonly project: string;
  readonly aggregation: string;
  readonly environment: Readonly<Record<string, string>>;
}): MemberProcess {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const child of liveMembers) child.kill('SIGKILL');
    });
  }
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith('FSTORE_')),
  );
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      'src/cli/main.ts',
      'stream',
      '--project',
      options.project,
      '--aggregation',
      options.aggregation,
    ],
    {
      cwd: repoRoot,
      env: { ...inherited, FSTORE_METRICS_PORT: '0', ...options.environment },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  liveMembers.add(child);
  const lines: string[] = [];
  const keep = (chunk: Buffer) => {
    lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
    if (lines.length > 200) lines.splice(0, lines.length - 200);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let ended: MemberExit | null = null;
  const exited = new Promise<MemberExit>((resolve) => {
    child.once('exit', (code, signal) => {
      liveMembers.delete(child);
      ended = { code, signal };
      resolve(ended);
    });
    child.once('error', (error) => {
      liveMembers.delete(child);
      lines.push(`spawn failed: ${error.message}`);
      ended = { code: -1, signal: null };
      resolve(ended);
    });
  });
  const member: MemberProcess = {
    label: options.label,
    pid: child.pid ?? -1,
    exited,
    exit: () => ended,
    output: () => lines.slice(-40).join('\n'),
    async stop(signal, timeoutMs = 30_000) {
      if (ended) return ended;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
  return member;
}

/** Throws, with its output, when one of `members` has exited. */
export function assertMembersRunning(members: readonly MemberProcess[]): void {
  for (const member of members) {
    const ended = member.exit();
    if (ended)
      throw new Error(
        `stream member ${member.label} (pid ${member.pid}) exited unexpectedly (code ${ended.code}, signal ${ended.signal})\n${member.output()}`,
      );
  }
}

/** The group's committed offset per partition of `topic` (0 where none is committed yet). */
export async function committedOffsets(
  admin: Admin,
  groupId: string,
  topic: string,
): Promise<Map<number, bigint>> {
  const [committed] = await admin.fetchOffsets({ groupId, topics: [topic] });
  return new Map(
    (committed?.partitions ?? []).map((entry) => [
      entry.partition,
      entry.offset === '-1' ? 0n : BigInt(entry.offset),
    ]),
  );
}

/** The log end offset of each partition of `topic`. */
export async function endOffsets(admin: Admin, topic: string): Promise<Map<number, bigint>> {
  return new Map(
    (await admin.fetchTopicOffsets(topic)).map((entry) => [entry.partition, BigInt(entry.high)]),
  );
}

export const sumOffsets = (offsets: Map<number, bigint>): bigint =>
  [...offsets.values()].reduce((sum, offset) => sum + offset, 0n);

/** The partitions of `topic` each member of the group holds now (empty while it rebalances). */
export async function groupAssignments(admin: Admin, groupId: string, topic: string) {
  const { groups } = await admin.describeGroups([groupId]);
  const group = groups[0];
  if (group?.state !== 'Stable') return [];
  return group.members.map((member) => ({
    clientId: member.clientId,
    partitions:
      member.memberAssignment.length === 0
        ? []
        : (AssignerProtocol.MemberAssignment.decode(member.memberAssignment)?.assignment[topic] ?? []),
  }));
}

/** Produces `records` in slices of `slice`, in order, calling `between` after each slice. */
export async function produceInSlices(
  kafka: Kafka,
  topic: string,
  records: readonly TestRecord[],
  slice: number,
  between: () => Promise<void> = async () => {},
): Promise<void> {
  for (let start = 0; start < records.length; start += slice) {
    await produceRecords(kafka, topic, records.slice(start, start + slice));
    await between();
  }
}

/**
 * Asserts that GetOnlineFeatures serves, for up to `sample` entities, the newest window row the
 * oracle has for each (its values and window end).
 */
export async function expectOnlineNewest(
  features: TestServer['features'],
  project: string,
  view: string,
  expected: ExpectedOutcome['rows'],
  sample = 60,
): Promise<void> {
  const newest = new Map<string, { end: number; values: Record<string, AggregateValue> }>();
  for (const row of expected.values()) {
    const current = newest.get(row.key);
    if (!current || row.end > current.end) newest.set(row.key, row);
  }
  const chosen = [...newest.entries()].slice(0, sample);
  const entities = chosen.map(([key]) => key.slice(key.indexOf(':') + 1).split('|'));
  const response = await features.getOnlineFeatures({
    project,
    features: [`${view}:events_20s`, `${view}:amount_max_20s`, `${view}:amount_sum_10s`],
    entities: {
      user_id: strings(...entities.map(([user]) => user!)),
      merchant_id: int64s(...entities.map(([, merchant]) => BigInt(merchant!))),
    },
  });
  const values = (index: number) =>
    (response.features[index]?.values?.values.value as { values: unknown[] } | undefined)?.values;
  const [events] = response.features;
  const rows = chosen.map(([, row]) => row);
  expect(events!.statuses.every((status) => status === FeatureStatus.PRESENT)).toBe(true);
  expect(events!.eventTimestamps).toEqual(rows.map((row) => BigInt(row.end)));
  expect(values(0)).toEqual(rows.map((row) => BigInt(row.values.events_20s as number)));
  expect(values(1)).toEqual(rows.map((row) => row.values.amount_max_20s ?? 0));
  const sums = values(2) as number[];
  rows.forEach((row, index) => {
    const want = (row.values.amount_sum_10s as number | null) ?? 0;
    expect(Math.abs(sums[index]! - want), `amount_sum_10s of ${chosen[index]![0]}`).toBeLessThanOrEqual(
      1e-9 * (1 + Math.abs(want)),
    );
  });
}

/** `fstore stream` in this process on a test server's stores and `brokers`; fatal errors are collected. */
export function startInProcessMember(
  config: Config,
  brokers: readonly string[],
  options: { project: string; aggregation: string; checkpointIntervalMs: number; fatal: unknown[] },
): Promise<StreamRole> {
  return startStreamRole(
    {
      ...config,
      kafkaBrokers: brokers.join(','),
      streamCheckpointIntervalMs: options.checkpointIntervalMs,
      streamStatsIntervalMs: 60_000,
    },
    {
      project: options.project,
      aggregation: options.aggregation,
      onFatal: (error) => options.fatal.push(error),
    },
    pino({ level: process.env.FSTORE_TEST_LOG_LEVEL ?? 'silent' }),
  );
}
