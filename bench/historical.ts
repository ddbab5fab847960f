/**
 * Point-in-time join benchmark (DESIGN §8): 1 M labelled entity rows × 10 M feature rows × 10
 * double features, end to end through GetHistoricalFeatures, against DuckDB loading the same rows
 * from Parquet, ASOF-joining them with the same semantics and streaming the result out.
 *
 *   eval "$(bash scripts/servers.sh env)"
 *   node --import tsx bench/historical.ts                                  # full scale
 *   node --import tsx bench/historical.ts --entities 10000 --entity-rows 100000   # quick
 *
 * Steps:
 *  1. DuckDB generates the data with SQL (hash-based, deterministic) and writes features.parquet
 *     (entity_id, event_time, created_time, f0..f9; `--rows-per-entity` rows per entity spread
 *     over `--days`, 1 % of them tied on event time with the previous row of their entity) and
 *     entities.parquet (i, entity_id, t; label times uniform over the same range plus a day before
 *     it) in a temporary directory, deleted at the end.
 *  2. Setup, not measured: the view is created in a schema of its own and the feature rows are
 *     written through the offline store adapter (binary COPY, one transaction), read back from the
 *     Parquet file, then VACUUM ANALYZE. A schema left by `--keep` with the same data is reused.
 *  3. `fstore serve` starts as a child process (in-process online store, the worker pool's
 *     defaults); its resident memory is polled every 100 ms and its VmHWM read (threads included).
 *  4. Measured: a gRPC client streams the entity rows (read from entities.parquet beforehand) in
 *     chunks of `--chunk-rows` and consumes every result chunk; wall time from the first request
 *     to the last response.
 *  5. Baseline, measured the same way: bench/historical-duckdb.ts in a child process per variant
 *     (`latest`: tables loaded from Parquet, same semantics; `latest-parquet`: the same query
 *     straight over the files; `plain`: the bare ASOF JOIN, for reference). The time target is
 *     checked against the faster same-semantics variant.
 *  6. Both sides' row and status counts and f0 checksums must agree; figures are printed as a
 *     table and one JSON line.
 *
 * Flags: --entities (100000) --rows-per-entity (100) --entity-rows (1000000) --key int64|string
 * (int64) --days (100) --ttl-days (2) --chunk-rows (10000) --block-rows (server default)
 * --duckdb-threads (all cores) --baselines (latest,latest-parquet,plain) --keep (keep the schema:
 * a later run with the same flags skips the ingest) --cpu-prof (profile the serve child, files in
 * bench/results/) --cold (no warm-up call before the measured one) --postgres-url
 * (FSTORE_POSTGRES_URL, else FSTORE_TEST_POSTGRES_URL) --json <file> (also write the JSON there).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { availableParallelism, cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { type DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import pg from 'pg';
import {
  FeatureService,
  type GetHistoricalFeaturesRequestSchema,
} from '../gen/fstore/v1/feature_service_pb.js';
import { FeatureStatus } from '../gen/fstore/v1/values_pb.js';
import { createPostgresOfflineStore } from '../src/adapters/postgres/offline/postgres-offline-store.js';
import { createPostgresRegistry } from '../src/adapters/postgres/postgres-registry.js';
import type { FeatureView, KeyValue } from '../src/domain/model.js';
import { createClient } from '../src/grpc/client.js';
import type { OfflineRowBatch } from '../src/ports/offline-store.js';
import { machineCpuSeconds, type ProcessSample, sampleProcess } from './process-sampler.js';

const { values: flags } = parseArgs({
  options: {
    entities: { type: 'string', default: '100000' },
    'rows-per-entity': { type: 'string', default: '100' },
    'entity-rows': { type: 'string', default: '1000000' },
    key: { type: 'string', default: 'int64' },
    days: { type: 'string', default: '100' },
    'ttl-days': { type: 'string', default: '2' },
    'chunk-rows': { type: 'string', default: '10000' },
    'block-rows': { type: 'string' },
    'duckdb-threads': { type: 'string' },
    baselines: { type: 'string', default: 'latest,latest-parquet,plain' },
    keep: { type: 'boolean', default: false },
    'cpu-prof': { type: 'boolean', default: false },
    cold: { type: 'boolean', default: false },
    'postgres-url': { type: 'string' },
    json: { type: 'string' },
  },
});

const positive = (name: string, text: string | undefined): number => {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value <= 0) throw new Error(`--${name} must be a positive integer`);
  return value;
};
const entities = positive('entities', flags.entities);
const rowsPerEntity = positive('rows-per-entity', flags['rows-per-entity']);
const entityRows = positive('entity-rows', flags['entity-rows']);
const days = positive('days', flags.days);
const ttlDays = positive('ttl-days', flags['ttl-days']);
const chunkRows = positive('chunk-rows', flags['chunk-rows']);
const keyType = flags.key;
if (keyType !== 'int64' && keyType !== 'string') throw new Error('--key must be int64 or string');
const baselines = (flags.baselines ?? '').split(',').filter((name) => name !== '');
// Variants with FStore's semantics (ties on event time: latest created); `plain` is for reference.
const sameSemantics = ['latest', 'latest-parquet'];
for (const name of baselines)
  if (![...sameSemantics, 'plain'].includes(name)) throw new Error(`--baselines: unknown variant ${name}`);
const postgresUrlInput =
  flags['postgres-url'] ?? process.env.FSTORE_POSTGRES_URL ?? process.env.FSTORE_TEST_POSTGRES_URL;
if (!postgresUrlInput)
  throw new Error('no PostgreSQL: pass --postgres-url or eval "$(bash scripts/servers.sh env)"');
const postgresUrl: string = postgresUrlInput;

const featureRows = entities * rowsPerEntity;
const featureNames = Array.from({ length: 10 }, (_, index) => `f${index}`);
const day = 86_400_000_000; // microseconds
const start = Date.UTC(2026, 0, 1) * 1000;
const span = days * day;
const step = Math.floor(span / rowsPerEntity);
const ttlMicros = ttlDays * day;
const project = 'bench_pit';
const view = 'pit10';
// One schema per data set: a kept schema is reused only for exactly the same rows.
// Bump the v1 when the generator changes.
const schema = `bench_pit_v1_${keyType}_${entities}x${rowsPerEntity}_${days}d`;
const repoRoot = new URL('..', import.meta.url).pathname;
const log = (message: string) =>
  process.stderr.write(`[historical ${new Date().toISOString()}] ${message}\n`);
const seconds = (since: number) => (performance.now() - since) / 1000;
const load = () => loadavg().map((value) => Number(value.toFixed(2)));

// ---------------------------------------------------------------------------------------------
// 1. Data, generated by DuckDB into Parquet.

const keyExpression = (id: string) => (keyType === 'int64' ? `(${id})::BIGINT` : `'entity-' || (${id})`);

async function writeParquet(connection: DuckDBConnection, directory: string) {
  const featuresPath = join(directory, 'features.parquet');
  const entitiesPath = join(directory, 'entities.parquet');
  // Event times: one slot of `step` per row, jittered inside it by a hash; 1 % of rows repeat the
  // previous row's event time (created time decides). Created times are after the event time and
  // distinct per entity.
  await connection.run(
    `CREATE MACRO slot_time(e, j) AS ${start}::BIGINT + j * ${step}::BIGINT + (hash(e, j) % ${step})::BIGINT`,
  );
  await connection.run(`COPY (
      SELECT ${keyExpression('e')} AS entity_id, event_time,
        event_time + ((hash(e, j, 'created') % 3600) * 1000000 + j)::BIGINT AS created_time,
        ${featureNames.map((name, index) => `(hash(e, j, ${index}) % 1000000)::DOUBLE / 1000 AS ${name}`).join(', ')}
      FROM (
        SELECT e, j, CASE WHEN j > 0 AND hash(e, j, 'tie') % 100 = 0 THEN slot_time(e, j - 1) ELSE slot_time(e, j) END AS event_time
        FROM range(${rowsPerEntity}) s(j), range(${entities}) k(e)
      )
    ) TO '${featuresPath}' (FORMAT parquet)`);
  await connection.run(`COPY (
      SELECT i::BIGINT AS i, ${keyExpression(`(hash(i, 'entity') % ${entities})::BIGINT`)} AS entity_id,
        (${start - day} + hash(i, 'time') % ${span + day})::BIGINT AS t
      FROM range(${entityRows}) r(i) ORDER BY i
    ) TO '${entitiesPath}' (FORMAT parquet)`);
  return { featuresPath, entitiesPath };
}

// ---------------------------------------------------------------------------------------------
// 2. FStore's offline store, through the adapter (setup: not the measured part).

async function markerRows(client: pg.Client): Promise<number | undefined> {
  // Fails when the table does not exist: nothing to reuse.
  const found = await client
    .query<{ rows: string }>(`SELECT rows FROM "${schema}".bench_marker`)
    .catch(() => undefined);
  const rows = found?.rows[0]?.rows;
  return rows === undefined ? undefined : Number(rows);
}

async function prepareStore(connection: DuckDBConnection, featuresPath: string): Promise<void> {
  const admin = new pg.Client({ connectionString: postgresUrl });
  await admin.connect();
  try {
    if ((await markerRows(admin)) === featureRows) {
      log(`reusing schema ${schema} (${featureRows.toLocaleString()} feature rows, kept by --keep)`);
      return;
    }
    await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    const registry = await createPostgresRegistry({ connectionString: postgresUrl, schema });
    const offline = await createPostgresOfflineStore({ connectionString: postgresUrl, schema });
    try {
      await registry.applyEntity(
        project,
        {
          name: 'entity',
          joinKeys: [{ name: 'entity_id', type: keyType as 'int64' | 'string' }],
          description: '',
        },
        { force: false },
      );
      const { featureView } = await registry.applyFeatureView(
        project,
        {
          name: view,
          entities: ['entity'],
          features: featureNames.map((name) => ({ name, type: 'double', description: '', tags: {} })),
          ttlMs: ttlMicros / 1000,
          online: false,
          source: 'batch',
          owner: '',
          description: 'bench/historical.ts',
          tags: {},
        },
        { force: false },
      );
      await offline.ensureView(featureView);
      const started = performance.now();
      const { rows } = await offline.writeRows(parquetBatches(connection, featuresPath, featureView));
      log(
        `ingested ${rows.toLocaleString()} rows in ${seconds(started).toFixed(1)} s (offline adapter, binary COPY)`,
      );
    } finally {
      await offline.close();
      await registry.close();
    }
    const vacuumStarted = performance.now();
    const tables = await admin.query<{ tablename: string }>(
      'SELECT tablename FROM pg_tables WHERE schemaname = $1',
      [schema],
    );
    for (const { tablename } of tables.rows) await admin.query(`VACUUM (ANALYZE) "${schema}"."${tablename}"`);
    log(`VACUUM ANALYZE in ${seconds(vacuumStarted).toFixed(1)} s`);
    await admin.query(`CREATE TABLE "${schema}".bench_marker (rows bigint NOT NULL)`);
    await admin.query(`INSERT INTO "${schema}".bench_marker VALUES ($1)`, [featureRows]);
  } finally {
    await admin.end();
  }
}

/** The Parquet rows as offline batches of ~50,000 rows. */
async function* parquetBatches(
  connection: DuckDBConnection,
  path: string,
  featureView: FeatureView,
): AsyncGenerator<OfflineRowBatch> {
  const result = await connection.stream(
    `SELECT entity_id, event_time::DOUBLE, created_time::DOUBLE, ${featureNames.join(', ')} FROM read_parquet('${path}')`,
  );
  const batchRows = 50_000;
  let keys: KeyValue[] = [];
  let eventTimes: number[] = [];
  let createdTimes: number[] = [];
  let values: number[][] = featureNames.map(() => []);
  const batch = (): OfflineRowBatch => ({
    view: featureView,
    keys: [keys],
    eventTimes,
    createdTimes,
    values,
  });
  for (;;) {
    const chunk = await result.fetchChunk();
    if (!chunk || chunk.rowCount === 0) break;
    const columns = chunk.getColumns();
    keys.push(...(columns[0] as KeyValue[]));
    eventTimes.push(...(columns[1] as number[]));
    createdTimes.push(...(columns[2] as number[]));
    values.forEach((column, index) => {
      column.push(...(columns[3 + index] as number[]));
    });
    if (keys.length >= batchRows) {
      yield batch();
      keys = [];
      eventTimes = [];
      createdTimes = [];
      values = featureNames.map(() => []);
    }
  }
  if (keys.length > 0) yield batch();
}

// ---------------------------------------------------------------------------------------------
// 3-4. fstore serve as a child, and the measured client run.

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  return port;
}

async function startServe(port: number, logPath: string, profileDirectory: string | undefined) {
  const environment: NodeJS.ProcessEnv = {
    ...process.env,
    FSTORE_POSTGRES_URL: postgresUrl,
    FSTORE_POSTGRES_SCHEMA: schema,
    FSTORE_GRPC_HOST: '127.0.0.1',
    FSTORE_GRPC_PORT: String(port),
    FSTORE_HISTORICAL_CHUNK_ROWS: String(chunkRows),
    FSTORE_SHUTDOWN_GRACE_MS: '2000',
    FSTORE_LOG_LEVEL: 'warn',
  };
  if (flags['block-rows']) environment.FSTORE_HISTORICAL_BLOCK_ROWS = flags['block-rows'];
  for (const name of ['FSTORE_REDIS_URL', 'FSTORE_REDIS_CLUSTER_NODES', 'FSTORE_PROCESSES'])
    delete environment[name];
  const nodeFlags = profileDirectory ? ['--cpu-prof', '--cpu-prof-dir', profileDirectory] : [];
  const output = openSync(logPath, 'w');
  const child = spawn(process.execPath, [...nodeFlags, '--import', 'tsx', 'src/cli/main.ts', 'serve'], {
    cwd: repoRoot,
    env: environment,
    stdio: ['ignore', output, output],
  });
  await promisify(execFile)(
    process.execPath,
    ['--import', 'tsx', 'bench/wait-healthy.ts', `127.0.0.1:${port}`, '60', '1'],
    { cwd: repoRoot },
  ).catch((error: unknown) => {
    child.kill('SIGKILL');
    throw new Error(
      `fstore serve did not become healthy: ${String(error)}\n${readFileSync(logPath, 'utf8')}`,
    );
  });
  return child;
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}

type HistoricalRequest = MessageInitShape<typeof GetHistoricalFeaturesRequestSchema>;

interface JoinSummary {
  rows: number;
  statuses: { present: number; notFound: number; outsideMaxAge: number };
  sumF0: number;
}

async function readEntityChunks(connection: DuckDBConnection, path: string): Promise<HistoricalRequest[]> {
  const reader = await connection.runAndReadAll(
    `SELECT entity_id, t FROM read_parquet('${path}') ORDER BY i`,
  );
  const [ids, times] = reader.getColumns() as [KeyValue[], bigint[]];
  const requests: HistoricalRequest[] = [];
  for (let first = 0; first < ids.length; first += chunkRows) {
    const part = ids.slice(first, first + chunkRows);
    requests.push({
      message: {
        case: 'rows',
        value: {
          entities: {
            entity_id:
              keyType === 'int64'
                ? { values: { case: 'int64Values', value: { values: part as bigint[] } } }
                : { values: { case: 'stringValues', value: { values: part as string[] } } },
          },
          timestamps: times.slice(first, first + chunkRows),
        },
      },
    });
  }
  return requests;
}

const historicalRequests = (rowChunks: HistoricalRequest[], rowCount: number): HistoricalRequest[] => [
  {
    message: {
      case: 'query',
      value: { project, features: featureNames.map((name) => `${view}:${name}`), chunkRows },
    },
  },
  ...rowChunks,
  { message: { case: 'end', value: { rowCount: BigInt(rowCount) } } },
];

/**
 * One small call first: the worker pool starts its threads on demand (each loads tsx and the task
 * module, ~1-2 s here), which a long-running server has already paid.
 */
async function warmUp(address: string, firstChunk: HistoricalRequest) {
  const client = createClient(FeatureService, address);
  const started = performance.now();
  const rows = (firstChunk.message as { value: { timestamps: unknown[] } }).value.timestamps.length;
  try {
    for await (const _ of client.getHistoricalFeatures(historicalRequests([firstChunk], rows))) {
    }
  } finally {
    client.close();
  }
  return seconds(started);
}

async function runFStore(address: string, rowChunks: HistoricalRequest[]) {
  const client = createClient(FeatureService, address);
  let inputSentSeconds = 0;
  // Records when the client has handed over its last request (all input written).
  async function* requests() {
    yield* historicalRequests(rowChunks, entityRows);
    inputSentSeconds = seconds(started);
  }
  const summary: JoinSummary = { rows: 0, statuses: { present: 0, notFound: 0, outsideMaxAge: 0 }, sumF0: 0 };
  const cpu0 = process.cpuUsage();
  const started = performance.now();
  let firstChunkSeconds = 0;
  try {
    for await (const chunk of client.getHistoricalFeatures(requests(), { timeoutMs: 3_600_000 })) {
      if (summary.rows === 0) firstChunkSeconds = seconds(started);
      summary.rows += chunk.timestamps.length;
      const f0 = chunk.features[0];
      const values = f0?.values?.values.case === 'doubleValues' ? f0.values.values.value.values : [];
      f0?.statuses.forEach((status, row) => {
        if (status === FeatureStatus.PRESENT) {
          summary.statuses.present++;
          summary.sumF0 += values[row] as number;
        } else if (status === FeatureStatus.NOT_FOUND) summary.statuses.notFound++;
        else if (status === FeatureStatus.OUTSIDE_MAX_AGE) summary.statuses.outsideMaxAge++;
      });
    }
  } finally {
    client.close();
  }
  const cpu = process.cpuUsage(cpu0);
  return {
    seconds: seconds(started),
    inputSentSeconds,
    firstChunkSeconds,
    clientCpuSeconds: (cpu.user + cpu.system) / 1e6,
    summary,
  };
}

// ---------------------------------------------------------------------------------------------
// 5. The DuckDB baseline, one child process per variant.

async function runDuckDB(variant: string, featuresPath: string, entitiesPath: string) {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      'bench/historical-duckdb.ts',
      '--features',
      featuresPath,
      '--entities',
      entitiesPath,
      '--ttl-micros',
      String(ttlMicros),
      '--variant',
      variant,
      ...(flags['duckdb-threads'] ? ['--threads', flags['duckdb-threads']] : []),
    ],
    { cwd: repoRoot, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const sampler = sampleProcess(child.pid as number);
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => {
    output += text;
  });
  const [code] = (await once(child, 'exit')) as [number | null];
  const sample = sampler.stop();
  if (code !== 0) throw new Error(`DuckDB baseline (${variant}) exited with ${code}: ${output}`);
  const reported = JSON.parse(output.trim().split('\n').pop() as string) as JoinSummary & {
    variant: string;
    seconds: number;
    loadSeconds: number;
    firstChunkSeconds: number;
    joinAndStreamSeconds: number;
    peakRssBytes: number;
    cpuSeconds: number;
  };
  return { ...reported, peakRssBytes: Math.max(reported.peakRssBytes, sample.peakRssBytes), sample };
}

// ---------------------------------------------------------------------------------------------

const gigabytes = (bytes: number) => Number((bytes / 2 ** 30).toFixed(2));
const megabytes = (bytes: number) => Number((bytes / 2 ** 20).toFixed(0));

function agree(fstore: JoinSummary, duckdb: JoinSummary): string {
  const { rows, statuses, sumF0 } = duckdb;
  const sameStatuses =
    fstore.rows === rows &&
    fstore.statuses.present === statuses.present &&
    fstore.statuses.notFound === statuses.notFound &&
    fstore.statuses.outsideMaxAge === statuses.outsideMaxAge;
  const sameSum = Math.abs(fstore.sumF0 - sumF0) <= 1e-9 * Math.max(1, Math.abs(sumF0));
  if (sameStatuses && sameSum) return 'same rows, statuses and f0 sum';
  const theirs = JSON.stringify({ rows, statuses, sumF0 });
  if (sameStatuses) return `same rows and statuses, f0 sum differs (${fstore.sumF0} vs ${sumF0})`;
  return `DIFFERENT: FStore ${JSON.stringify(fstore)}, DuckDB ${theirs}`;
}

const directory = mkdtempSync(join(tmpdir(), 'fstore-bench-historical-'));
let serve: ChildProcess | undefined;
try {
  log(
    `${entities.toLocaleString()} entities (${keyType} key) × ${rowsPerEntity} rows = ${featureRows.toLocaleString()} feature rows, ` +
      `${entityRows.toLocaleString()} entity rows, ${days} days, ttl ${ttlDays} days; data in ${directory}`,
  );
  const duck = await DuckDBInstance.create(':memory:');
  const connection = await duck.connect();
  let started = performance.now();
  const { featuresPath, entitiesPath } = await writeParquet(connection, directory);
  const parquetSeconds = seconds(started);
  log(
    `Parquet written in ${parquetSeconds.toFixed(1)} s: features ${megabytes(statSync(featuresPath).size)} MiB, ` +
      `entities ${megabytes(statSync(entitiesPath).size)} MiB`,
  );
  await prepareStore(connection, featuresPath);
  const rowChunks = await readEntityChunks(connection, entitiesPath);
  connection.closeSync();
  duck.closeSync();

  const profileDirectory = flags['cpu-prof']
    ? join(repoRoot, 'bench/results', `historical-prof-${Date.now()}`)
    : undefined;
  if (profileDirectory) mkdirSync(profileDirectory, { recursive: true });
  const port = await freePort();
  serve = await startServe(port, join(directory, 'serve.log'), profileDirectory);
  const serveIdle = sampleProcess(serve.pid as number).stop();
  log(
    `fstore serve pid ${serve.pid} on port ${port}, ${megabytes(serveIdle.peakRssBytes)} MiB resident at start`,
  );

  if (!flags.cold) {
    const warmUpSeconds = await warmUp(`127.0.0.1:${port}`, rowChunks[0] as HistoricalRequest);
    log(`warm-up call (${chunkRows.toLocaleString()} rows): ${warmUpSeconds.toFixed(2)} s`);
  }
  const loadBefore = load();
  const sampler = sampleProcess(serve.pid as number);
  const fstore = await runFStore(`127.0.0.1:${port}`, rowChunks);
  const serverSample: ProcessSample = sampler.stop();
  const loadAfter = load();
  log(`FStore: ${fstore.seconds.toFixed(2)} s, ${fstore.summary.rows.toLocaleString()} rows`);
  await stopChild(serve);
  serve = undefined;

  const duckdbRuns = [];
  for (const variant of baselines) {
    const machine0 = machineCpuSeconds();
    started = performance.now();
    const run = await runDuckDB(variant, featuresPath, entitiesPath);
    const machineBusy = (machineCpuSeconds() - machine0) / seconds(started);
    log(`DuckDB ${variant}: ${run.seconds.toFixed(2)} s, ${run.rows.toLocaleString()} rows`);
    duckdbRuns.push({ ...run, machineBusyCores: machineBusy, check: agree(fstore.summary, run) });
  }

  const baseline = duckdbRuns
    .filter((run) => sameSemantics.includes(run.variant))
    .sort((a, b) => a.seconds - b.seconds)[0];
  const round = (value: number) => Number(value.toFixed(2));
  const report = {
    date: new Date().toISOString(),
    machine: {
      cores: availableParallelism(),
      cpu: cpus()[0]?.model,
      memoryGiB: gigabytes(totalmem()),
      node: process.version,
      loadAverageBefore: loadBefore,
      loadAverageAfter: loadAfter,
    },
    data: {
      entities,
      keyType,
      rowsPerEntity,
      featureRows,
      entityRows,
      features: 10,
      days,
      ttlDays,
      chunkRows,
    },
    parquetSeconds: round(parquetSeconds),
    fstore: {
      seconds: round(fstore.seconds),
      inputSentSeconds: round(fstore.inputSentSeconds),
      firstChunkSeconds: round(fstore.firstChunkSeconds),
      rowsPerSecond: Math.round(entityRows / fstore.seconds),
      serverPeakRssGiB: gigabytes(serverSample.peakRssBytes),
      serverMaxPolledRssGiB: gigabytes(serverSample.maxRssBytes),
      serverCpuSeconds: round(serverSample.cpuSeconds),
      serverMainThreadCpuSeconds: round(serverSample.mainThreadCpuSeconds),
      // Busiest first: the point-in-time workers, then V8 / libuv helper threads.
      serverOtherThreadsCpuSeconds: serverSample.otherThreadsCpuSeconds.slice(0, 6),
      // Every PostgreSQL process on the machine, so other clients' queries count here too.
      postgresCpuSeconds: round(serverSample.postgresCpuSeconds),
      clientCpuSeconds: round(fstore.clientCpuSeconds),
      machineBusyCores: round(serverSample.machineCpuSeconds / serverSample.wallSeconds),
      summary: fstore.summary,
    },
    duckdb: duckdbRuns.map((run) => ({
      variant: run.variant,
      seconds: round(run.seconds),
      loadSeconds: round(run.loadSeconds),
      joinAndStreamSeconds: round(run.joinAndStreamSeconds),
      peakRssGiB: gigabytes(run.peakRssBytes),
      cpuSeconds: round(run.cpuSeconds),
      machineBusyCores: round(run.machineBusyCores),
      fstoreOverDuckdb: round(fstore.seconds / run.seconds),
      check: run.check,
    })),
    targets: baseline
      ? {
          baseline: baseline.variant,
          timeRatio: round(fstore.seconds / baseline.seconds),
          timeRatioMet: fstore.seconds <= 1.5 * baseline.seconds,
          serverPeakRssMet: serverSample.peakRssBytes <= 2 * 2 ** 30,
        }
      : undefined,
    profileDirectory,
  };

  const rows = [
    [
      'FStore GetHistoricalFeatures',
      fstore.seconds,
      gigabytes(serverSample.peakRssBytes),
      serverSample.cpuSeconds,
      1,
    ],
    ...duckdbRuns.map((run) => [
      `DuckDB ASOF (${run.variant})`,
      run.seconds,
      gigabytes(run.peakRssBytes),
      run.cpuSeconds,
      fstore.seconds / run.seconds,
    ]),
  ] as [string, number, number, number, number][];
  console.log('\n| run | seconds | peak RSS GiB | CPU s | FStore / this |');
  console.log('|---|---:|---:|---:|---:|');
  for (const [name, time, rss, cpu, ratio] of rows)
    console.log(
      `| ${name} | ${time.toFixed(2)} | ${rss.toFixed(2)} | ${cpu.toFixed(1)} | ${ratio.toFixed(2)} |`,
    );
  const { fstore: measured } = report;
  console.log(
    `\nFStore: all input sent at ${measured.inputSentSeconds} s, first result chunk at ${measured.firstChunkSeconds} s; ` +
      `CPU s: server ${measured.serverCpuSeconds} (main thread ${measured.serverMainThreadCpuSeconds}, ` +
      `busiest others ${measured.serverOtherThreadsCpuSeconds.slice(0, 4).join(', ')}), ` +
      `PostgreSQL (all) ${measured.postgresCpuSeconds}, client ${measured.clientCpuSeconds}; ` +
      `machine busy ${measured.machineBusyCores} of ${availableParallelism()} cores; load average ${loadBefore.join(' ')} before`,
  );
  for (const run of duckdbRuns) console.log(`check vs ${run.variant}: ${run.check}`);
  if (report.targets)
    console.log(
      `targets: time ${report.targets.timeRatio}× ${report.targets.baseline} (≤ 1.5: ${report.targets.timeRatioMet ? 'met' : 'NOT met'}), ` +
        `server peak RSS ${measured.serverPeakRssGiB} GiB (≤ 2 GB: ${report.targets.serverPeakRssMet ? 'met' : 'NOT met'})`,
    );
  console.log(JSON.stringify(report));
  if (flags.json) writeFileSync(flags.json, `${JSON.stringify(report, null, 2)}\n`);
} finally {
  if (serve) await stopChild(serve);
  rmSync(directory, { recursive: true, force: true });
  if (!flags.keep) {
    const admin = new pg.Client({ connectionString: postgresUrl });
    await admin.connect();
    await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await admin.end();
  }
}
