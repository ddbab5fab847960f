/**
 * The raw limit of an online lookup on this machine (DESIGN §8 "serving overhead"): what a client
 * that talks to Redis directly achieves on the very keys FStore serves — one MGET of the batch's
 * keys, then a msgpack decode of every value with FStore's own codec (`decodeOnlineRow`) and a
 * read of each requested feature (`decodeStoredValue`). No gRPC, no protobuf, no registry, no status computation.
 *
 *   node --import tsx bench/raw-baseline.ts --batch 100 --features 50 --concurrency 32 --processes 2
 *
 * Flags (or environment):
 *   --redis-url     (REDIS_URL)           the server's Redis, with its db index (default redis://127.0.0.1:6391/1)
 *   --key-prefix    (FSTORE_REDIS_KEY_PREFIX) the server's key prefix           (default bench:)
 *   --postgres-url  (FSTORE_POSTGRES_URL)  registry database, to read the view id (default postgres://postgres@127.0.0.1:5439/fstore_test)
 *   --schema        (FSTORE_POSTGRES_SCHEMA) registry schema                     (default fstore_bench)
 *   --view-id       skip the registry query and use this view id
 *   --project       (PROJECT)  default bench;  --view  default bench<features>
 *   --batch         keys per lookup (default 1);  --features  features read per row (default 10)
 *   --id-min/--id-max  entity ids u<id-min>..u<id-max - 1> (default 0/100000), all must be seeded
 *   --concurrency   lookups in flight in total, split over the processes (default 32: k6's VUs)
 *   --processes     Node processes, one Redis connection each, like `fstore serve --processes` (default 2)
 *   --duration      seconds measured, after --warmup seconds (default 10, warm-up 2)
 *   --json          write the result as JSON to this file too
 *
 * Prints one JSON line: lookups/s, values/s, latency p50/p95/p99 (ms), errors.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { FeatureDefinition } from '../src/domain/model.js';
import { decodeOnlineRow, decodeStoredValue, encodeOnlineKey } from '../src/domain/online-codec.js';

const { values: flags } = parseArgs({
  options: {
    'redis-url': { type: 'string' },
    'key-prefix': { type: 'string' },
    'postgres-url': { type: 'string' },
    schema: { type: 'string' },
    'view-id': { type: 'string' },
    project: { type: 'string' },
    view: { type: 'string' },
    batch: { type: 'string' },
    features: { type: 'string' },
    'id-min': { type: 'string' },
    'id-max': { type: 'string' },
    concurrency: { type: 'string' },
    processes: { type: 'string' },
    duration: { type: 'string' },
    warmup: { type: 'string' },
    json: { type: 'string' },
  },
});

function int(name: string, text: string | undefined, fallback: number, min = 1): number {
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < min)
    throw new Error(`--${name} must be an integer ≥ ${min}, got '${text}'`);
  return value;
}

interface Settings {
  redisUrl: string;
  keyPrefix: string;
  viewId: number;
  batch: number;
  features: number;
  idMin: number;
  idMax: number;
  concurrency: number;
  durationS: number;
  warmupS: number;
}

// ---------------------------------------------------------------------------------------------
// Latency histogram: 1 µs buckets up to 20 ms, then 100 µs buckets up to 2 s; mergeable.
// ---------------------------------------------------------------------------------------------
const fineBuckets = 20_000;
const coarseBuckets = 19_800;

function newHistogram(): number[] {
  return new Array(fineBuckets + coarseBuckets + 1).fill(0);
}

function record(histogram: number[], micros: number): void {
  const index =
    micros < fineBuckets
      ? Math.floor(micros)
      : Math.min(fineBuckets + Math.floor((micros - fineBuckets) / 100), fineBuckets + coarseBuckets);
  histogram[index] = (histogram[index] as number) + 1;
}

function bucketMicros(index: number): number {
  return index < fineBuckets ? index + 0.5 : fineBuckets + (index - fineBuckets) * 100 + 50;
}

function percentileMs(histogram: readonly number[], total: number, quantile: number): number {
  if (total === 0) return 0;
  const rank = Math.ceil(total * quantile);
  let seen = 0;
  for (let index = 0; index < histogram.length; index++) {
    seen += histogram[index] as number;
    if (seen >= rank) return bucketMicros(index) / 1000;
  }
  return bucketMicros(histogram.length - 1) / 1000;
}

/** The seeded views' feature list (bench/seed.ts): f0..f<n-1>, all doubles. */
function featureDefinitions(count: number): readonly FeatureDefinition[] {
  return Array.from({ length: count }, (_, index) => ({
    name: `f${index}`,
    type: 'double' as const,
    description: '',
    tags: {},
  }));
}

// ---------------------------------------------------------------------------------------------
// Worker: `concurrency` loops on one ioredis connection, each awaiting its own MGET.
// ---------------------------------------------------------------------------------------------
interface WorkerResult {
  lookups: number;
  values: number;
  missing: number;
  errors: number;
  firstError?: string;
  seconds: number;
  histogram: number[];
}

async function runWorker(settings: Settings): Promise<WorkerResult> {
  const redis = new Redis(settings.redisUrl, {
    connectionName: 'fstore-raw-baseline',
    maxRetriesPerRequest: 0,
  });
  await redis.ping();
  const { batch, features, idMin, idMax, viewId, keyPrefix } = settings;
  const span = idMax - idMin;
  const definitions = featureDefinitions(features);
  const histogram = newHistogram();
  let lookups = 0;
  let values = 0;
  let missing = 0;
  let errors = 0;
  let firstError: string | undefined;
  let measuring = false;
  let stop = false;
  let checksum = 0; // keeps the decoded values alive, so nothing is optimized away

  const keysOf = (): string[] => {
    const keys: string[] = new Array(batch);
    const seen = batch > 1 ? new Set<number>() : undefined;
    let count = 0;
    while (count < batch) {
      const id = idMin + Math.floor(Math.random() * span);
      if (seen) {
        if (seen.has(id)) continue;
        seen.add(id);
      }
      // Exactly the key the service builds: prefix + encodeOnlineKey(view id, key parts).
      keys[count++] = keyPrefix + encodeOnlineKey(viewId, [`u${id}`]);
    }
    return keys;
  };

  const loop = async () => {
    while (!stop) {
      const keys = keysOf();
      const started = performance.now();
      try {
        const rows = await redis.mgetBuffer(keys);
        let found = 0;
        for (const bytes of rows) {
          if (!bytes) {
            missing++;
            continue;
          }
          const row = decodeOnlineRow(bytes);
          // Read every requested feature with the codec's own accessor, as the service does.
          for (let feature = 0; feature < features; feature++)
            checksum += (decodeStoredValue(definitions, row, feature) as number | null) ?? 0;
          checksum += row.eventTimeMicros & 1;
          found++;
        }
        if (measuring) {
          lookups++;
          values += found * features;
          record(histogram, (performance.now() - started) * 1000);
        }
      } catch (error) {
        firstError ??= error instanceof Error ? error.message : String(error);
        if (measuring) errors++;
      }
    }
  };

  const loops = Array.from({ length: settings.concurrency }, loop);
  await new Promise((resolve) => setTimeout(resolve, settings.warmupS * 1000));
  measuring = true;
  const started = performance.now();
  await new Promise((resolve) => setTimeout(resolve, settings.durationS * 1000));
  measuring = false;
  const seconds = (performance.now() - started) / 1000;
  stop = true;
  await Promise.all(loops);
  redis.disconnect();
  if (checksum === Number.NEGATIVE_INFINITY) process.stdout.write('');
  return { lookups, values, missing, errors, ...(firstError ? { firstError } : {}), seconds, histogram };
}

// ---------------------------------------------------------------------------------------------
// Parent: resolve the view id, fork the processes, merge their results.
// ---------------------------------------------------------------------------------------------
async function resolveViewId(
  postgresUrl: string,
  schema: string,
  project: string,
  view: string,
): Promise<number> {
  if (!/^[a-z_][a-z0-9_]*$/.test(schema)) throw new Error(`bad schema name '${schema}'`);
  const client = new pg.Client({ connectionString: postgresUrl });
  await client.connect();
  try {
    const result = await client.query<{ id: number }>(
      `SELECT id FROM "${schema}".feature_views WHERE project = $1 AND name = $2`,
      [project, view],
    );
    const id = result.rows[0]?.id;
    if (id === undefined)
      throw new Error(`no feature view ${project}/${view} in schema ${schema}: run bench/seed.ts first`);
    return id;
  } finally {
    await client.end();
  }
}

async function main(): Promise<void> {
  const features = int('features', flags.features, 10);
  const processes = int('processes', flags.processes, 2);
  const concurrency = int('concurrency', flags.concurrency, 32);
  if (concurrency < processes) throw new Error('--concurrency must be at least --processes');
  const project = flags.project ?? process.env.PROJECT ?? 'bench';
  const view = flags.view ?? `bench${features}`;
  const keyPrefix = flags['key-prefix'] ?? process.env.FSTORE_REDIS_KEY_PREFIX ?? 'bench:';
  const redisUrl = flags['redis-url'] ?? process.env.REDIS_URL ?? 'redis://127.0.0.1:6391/1';
  const viewId =
    flags['view-id'] !== undefined
      ? int('view-id', flags['view-id'], 0)
      : await resolveViewId(
          flags['postgres-url'] ??
            process.env.FSTORE_POSTGRES_URL ??
            'postgres://postgres@127.0.0.1:5439/fstore_test',
          flags.schema ?? process.env.FSTORE_POSTGRES_SCHEMA ?? 'fstore_bench',
          project,
          view,
        );
  const base = {
    redisUrl,
    keyPrefix,
    viewId,
    batch: int('batch', flags.batch, 1),
    features,
    idMin: int('id-min', flags['id-min'], 0, 0),
    idMax: int('id-max', flags['id-max'], 100_000),
    durationS: int('duration', flags.duration, 10),
    warmupS: int('warmup', flags.warmup, 2, 0),
  };
  if (base.batch > base.idMax - base.idMin) throw new Error('--batch is larger than the id range');

  // Sanity: the first and last ids must exist, or we would be measuring misses.
  const probe = new Redis(redisUrl, { maxRetriesPerRequest: 0 });
  const probeKeys = [base.idMin, base.idMax - 1].map((id) => keyPrefix + encodeOnlineKey(viewId, [`u${id}`]));
  const present = await probe.exists(...probeKeys);
  const sample = await probe.getBuffer(probeKeys[1] as string);
  probe.disconnect();
  if (present !== probeKeys.length || !sample)
    throw new Error(`keys ${probeKeys.join(', ')} are not all in Redis: seed first (or check prefix/db)`);
  // And the codec must read back what bench/seed.ts wrote: f<i> of u<n> = n × 0.001 + i + 0.123456789.
  const lastFeature = features - 1;
  const expected = (base.idMax - 1) * 0.001 + lastFeature + 0.123456789;
  const got = decodeStoredValue(featureDefinitions(features), decodeOnlineRow(sample), lastFeature);
  if (typeof got !== 'number' || Math.abs(got - expected) > 1e-9)
    throw new Error(
      `decoding ${probeKeys[1]} f${lastFeature} gave ${String(got)}, expected ${expected}: codec or seed mismatch`,
    );

  const perProcess = Array.from(
    { length: processes },
    (_, index) => Math.floor(concurrency / processes) + (index < concurrency % processes ? 1 : 0),
  );
  const script = fileURLToPath(import.meta.url);
  const children: ChildProcess[] = [];
  const results = await Promise.all(
    perProcess.map(
      (loops) =>
        new Promise<WorkerResult>((resolve, reject) => {
          const child = fork(script, [], {
            execArgv: process.execArgv,
            env: { ...process.env, RAW_BASELINE_WORKER: JSON.stringify({ ...base, concurrency: loops }) },
          });
          children.push(child);
          child.once('message', (message) => resolve(message as WorkerResult));
          child.once('error', reject);
          child.once('exit', (code) => {
            if (code !== 0) reject(new Error(`raw-baseline worker exited with code ${code}`));
          });
        }),
    ),
  );

  const histogram = newHistogram();
  let lookups = 0;
  let values = 0;
  let missing = 0;
  let errors = 0;
  let seconds = 0;
  let firstError: string | undefined;
  for (const result of results) {
    firstError ??= result.firstError;
    lookups += result.lookups;
    values += result.values;
    missing += result.missing;
    errors += result.errors;
    seconds = Math.max(seconds, result.seconds);
    for (let index = 0; index < histogram.length; index++)
      histogram[index] = (histogram[index] as number) + (result.histogram[index] as number);
  }
  const summary = {
    cell: `b${base.batch}xf${features}`,
    batch: base.batch,
    features,
    view,
    viewId,
    processes,
    concurrency,
    duration_s: Number(seconds.toFixed(3)),
    lookups,
    req_per_s: lookups / seconds,
    values_per_s: values / seconds,
    keys_per_s: (lookups * base.batch) / seconds,
    missing_keys: missing,
    errors,
    ...(firstError ? { first_error: firstError } : {}),
    latency_ms: {
      p50: percentileMs(histogram, lookups, 0.5),
      p95: percentileMs(histogram, lookups, 0.95),
      p99: percentileMs(histogram, lookups, 0.99),
      p999: percentileMs(histogram, lookups, 0.999),
    },
  };
  const line = JSON.stringify(summary);
  process.stdout.write(`${line}\n`);
  if (flags.json) writeFileSync(flags.json, `${JSON.stringify(summary, null, 2)}\n`);
}

if (process.env.RAW_BASELINE_WORKER) {
  const settings = JSON.parse(process.env.RAW_BASELINE_WORKER) as Settings;
  runWorker(settings).then(
    (result) => process.send?.(result, () => process.exit(0)),
    (error: unknown) => {
      process.stderr.write(`raw-baseline worker: ${error instanceof Error ? error.stack : String(error)}\n`);
      process.exit(1);
    },
  );
} else {
  main().catch((error: unknown) => {
    process.stderr.write(`raw-baseline: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
