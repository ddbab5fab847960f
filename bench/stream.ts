/**
 * Stream aggregation benchmark (DESIGN §8 targets: ≥ 200,000 events/s per consumer process;
 * freshness p99 ≤ watermark bound B + 1 s), against the real Kafka, Redis and PostgreSQL of
 * `scripts/servers.sh`:
 *
 *   eval "$(bash scripts/servers.sh env)"
 *   node --import tsx bench/stream.ts [--events 2000000] [--entities 100000] [--partitions 6]
 *     [--rate 20000] [--seconds 60] [--phase both|throughput|freshness]
 *
 * The aggregation: count, sum and max of `amount` per user, each over 1-minute and 5-minute windows
 * sliding by 10 s (3 aggregations × 2 windows), B = 1 s, allowed lateness 1 s, JSON events.
 *
 * - throughput: a backlog of `--events` events (event times spread as if produced live at 200 k/s) is produced first
 *   (bench/stream-producer.ts, its own process), then `fstore stream` runs in THIS process and the
 *   clock runs from its start until every partition is read, written and checkpointed to its end:
 *   events/s per consumer process, with the CPU it used and the state and checkpoint sizes.
 * - freshness: the member runs first; the producer then sends `--rate` events/s with ts = now for
 *   `--seconds`; for every window fired, (time its row was written to Redis − window end) is the
 *   delay until it is servable, reported as p50/p99 against B + 1 s.
 */
import { spawn } from 'node:child_process';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { Kafka, logLevel } from 'kafkajs';
import { pino } from 'pino';
import { createPostgresRegistry } from '../src/adapters/postgres/postgres-registry.js';
import { type StreamRole, startStreamRole } from '../src/app/stream.js';
import { loadConfig } from '../src/config/config.js';
import type { StreamAggregationDefinition } from '../src/domain/stream-aggregation.js';
import { histogramQuantile } from '../src/stream/stream-runner.js';

const { values: flags } = parseArgs({
  options: {
    events: { type: 'string' },
    entities: { type: 'string' },
    partitions: { type: 'string' },
    rate: { type: 'string' },
    seconds: { type: 'string' },
    phase: { type: 'string' },
  },
});
const events = Number(flags.events ?? 2_000_000);
const entities = Number(flags.entities ?? 100_000);
const partitions = Number(flags.partitions ?? 6);
const rate = Number(flags.rate ?? 20_000);
const seconds = Number(flags.seconds ?? 60);
const phase = flags.phase ?? 'both';

const env = (name: string, test: string) => process.env[name] ?? process.env[test];
const postgresUrl = env('FSTORE_POSTGRES_URL', 'FSTORE_TEST_POSTGRES_URL');
const redisUrl = env('FSTORE_REDIS_URL', 'FSTORE_TEST_REDIS_URL');
const brokers = env('FSTORE_KAFKA_BROKERS', 'FSTORE_TEST_KAFKA_BROKERS');
if (!postgresUrl || !redisUrl || !brokers)
  throw new Error(
    'no servers: eval "$(bash scripts/servers.sh env)" first (or set FSTORE_POSTGRES_URL, FSTORE_REDIS_URL, FSTORE_KAFKA_BROKERS)',
  );

const project = 'bench_stream';
const config = loadConfig(
  {},
  {
    postgresUrl,
    postgresSchema: 'fstore_bench_stream',
    redisUrl,
    redisKeyPrefix: 'bench_stream:',
    kafkaBrokers: brokers,
    logLevel: process.env.FSTORE_LOG_LEVEL ?? 'warn',
    streamStatsIntervalMs: 3_600_000,
  },
);
const logger = pino({ level: config.logLevel });
const kafka = new Kafka({ clientId: 'fstore-bench', brokers: brokers.split(','), logLevel: logLevel.ERROR });
const admin = kafka.admin();
await admin.connect();
const registry = await createPostgresRegistry({
  connectionString: postgresUrl,
  schema: config.postgresSchema,
});
await registry.applyEntity(
  project,
  {
    name: 'user',
    joinKeys: [{ name: 'user_id', type: 'int64' }],
    description: '',
  },
  { force: false },
);

const second = 1_000_000;
const boundMicros = second;

async function setUp(label: string) {
  const name = `${label}_${Date.now()}`;
  const topic = `bench.${name}`;
  await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: partitions }] });
  const windows = [60 * second, 300 * second];
  const definition: StreamAggregationDefinition = {
    name,
    topic,
    encoding: 'json',
    keyFields: ['user_id'],
    entities: ['user'],
    eventTimeField: 'ts',
    eventTimeUnit: 'epoch_millis',
    watermarkBoundMicros: boundMicros,
    allowedLatenessMicros: second,
    idleTimeoutMs: 60_000,
    emitFollowingEmptyWindow: false,
    aggregations: windows.flatMap((size) => [
      {
        name: `events_${size / second}s`,
        function: 'count' as const,
        sizeMicros: size,
        slideMicros: 10 * second,
      },
      {
        name: `amount_sum_${size / second}s`,
        function: 'sum' as const,
        field: 'amount',
        sizeMicros: size,
        slideMicros: 10 * second,
      },
      {
        name: `amount_max_${size / second}s`,
        function: 'max' as const,
        field: 'amount',
        sizeMicros: size,
        slideMicros: 10 * second,
      },
    ]),
    ttlMs: 0,
    online: true,
    owner: 'bench',
    description: '',
    tags: {},
  };
  await registry.applyStreamAggregation(project, definition, { force: false });
  return { name, topic };
}

function produce(topic: string, extra: string[]): Promise<{ events: number; seconds: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        'bench/stream-producer.ts',
        '--brokers',
        brokers!,
        '--topic',
        topic,
        '--entities',
        String(entities),
        ...extra,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let output = '';
    child.stdout.on('data', (chunk) => {
      output += chunk;
    });
    child.on('exit', (code) =>
      code === 0 ? resolve(JSON.parse(output)) : reject(new Error(`producer exited with ${code}`)),
    );
  });
}

async function startMember(name: string): Promise<StreamRole> {
  return startStreamRole(
    config,
    {
      project,
      aggregation: name,
      onFatal(error) {
        logger.fatal({ err: error }, 'stream member failed');
        process.exit(1);
      },
    },
    logger,
  );
}

const fixed = (value: number, digits = 1) => value.toFixed(digits);

console.log(
  `# stream bench ${new Date().toISOString()}: ${entities} entities, ${partitions} partitions, 3 aggregations × 2 windows (1 min, 5 min, slide 10 s), B = 1 s; load average ${loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')}`,
);

if (phase === 'both' || phase === 'throughput') {
  const { name, topic } = await setUp('throughput');
  const produced = await produce(topic, ['--events', String(events), '--rate', '0']);
  console.log(
    `backlog: ${produced.events} events produced in ${fixed(produced.seconds)} s (${fixed(produced.events / produced.seconds / 1000)} k/s)`,
  );
  const ends = (await admin.fetchTopicOffsets(topic)).reduce((sum, entry) => sum + BigInt(entry.high), 0n);
  const cpuBefore = process.cpuUsage();
  let peakRss = 0;
  const started = performance.now();
  const member = await startMember(name);
  for (;;) {
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
    const stats = member.runner.stats();
    const checkpointed = await admin.fetchOffsets({ groupId: `fstore.${project}.${name}`, topics: [topic] });
    const committed = checkpointed[0]!.partitions.reduce(
      (sum, entry) => sum + (entry.offset === '-1' ? 0n : BigInt(entry.offset)),
      0n,
    );
    if (committed >= ends && stats.records >= events) break;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const elapsed = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  const stats = member.runner.stats();
  const state = stats.partitions.reduce(
    (sum, p) => ({ keys: sum.keys + p.keys, tiles: sum.tiles + p.tiles }),
    { keys: 0, tiles: 0 },
  );
  await member.stop();
  const perSecond = events / elapsed;
  console.log(
    `throughput: ${events} events in ${fixed(elapsed, 2)} s = ${fixed(perSecond / 1000)} k events/s per consumer process (target ≥ 200 k/s: ${perSecond >= 200_000 ? 'met' : 'NOT met'}, ${fixed((perSecond / 200_000) * 100, 0)} % of it)`,
  );
  console.log(
    `  consumer CPU ${fixed((cpu.user + cpu.system) / 1e6, 1)} s (${fixed((cpu.user + cpu.system) / 1e6 / elapsed, 2)} cores); peak RSS ${fixed(peakRss / 2 ** 20, 0)} MiB; windows fired ${stats.windowsFired}; late ${stats.late}; checkpoints ${stats.checkpoints} (last ${fixed(stats.lastCheckpointMs, 0)} ms, ${fixed(stats.lastCheckpointBytes / 2 ** 20, 1)} MiB); state at the end ${state.keys} keys, ${state.tiles} tiles`,
  );
}

if (phase === 'both' || phase === 'freshness') {
  const { name, topic } = await setUp('freshness');
  const member = await startMember(name);
  await new Promise((resolve) => setTimeout(resolve, 3_000)); // joined and assigned
  const before = member.runner.stats().records;
  const produced = await produce(topic, ['--events', String(rate * seconds), '--rate', String(rate)]);
  await new Promise((resolve) => setTimeout(resolve, 3_000));
  const stats = member.runner.stats();
  await member.stop();
  const delays = stats.windowDelayHistogram;
  const fired = delays.reduce((sum, count) => sum + count, 0);
  const p99 = histogramQuantile(delays, 0.99) ?? Number.NaN;
  const target = boundMicros / 1000 + 1000;
  console.log(
    `freshness: ${stats.records - before} events at ${fixed(produced.events / produced.seconds / 1000)} k/s for ${fixed(produced.seconds)} s; ${fired} windows fired; window end → servable in Redis: p50 ${fixed(histogramQuantile(delays, 0.5) ?? Number.NaN, 0)} ms, p99 ${fixed(p99, 0)} ms, max ${fixed(histogramQuantile(delays, 1) ?? Number.NaN, 0)} ms (target p99 ≤ B + 1 s = ${target} ms: ${p99 <= target ? 'met' : 'NOT met'})`,
  );
}

await admin.disconnect();
await registry.close();
