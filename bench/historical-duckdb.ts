/**
 * The DuckDB baseline of bench/historical.ts, run as a child process so that its peak memory is
 * its own: loads the feature rows and the labelled entity rows from Parquet into an in-memory
 * DuckDB, runs the point-in-time join as an ASOF LEFT JOIN with FStore's semantics, and streams
 * the result out chunk by chunk (as a client reading it would), in input order. Prints one JSON
 * line: times, row and status counts, a checksum of f0, and its own peak RSS.
 *
 *   node --import tsx bench/historical-duckdb.ts --features f.parquet --entities e.parquet \
 *     --ttl-micros 172800000000 [--features-count 10] [--threads 2] [--variant latest]
 *
 * Variants:
 *  - `latest`: loads both files into tables (CREATE TABLE AS read_parquet), then joins; before the
 *    ASOF it keeps the latest created row per (key, event time), because ASOF picks any one of
 *    rows with equal event times: FStore's semantics exactly.
 *  - `latest-parquet`: the same query straight over read_parquet(), no tables.
 *  - `plain`: tables, and the bare ASOF JOIN (DESIGN §8's anchor), which may pick another row
 *    than FStore where event times tie: not the same semantics, shown for reference.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DuckDBInstance } from '@duckdb/node-api';

const { values: flags } = parseArgs({
  options: {
    features: { type: 'string' },
    entities: { type: 'string' },
    'ttl-micros': { type: 'string' },
    'features-count': { type: 'string', default: '10' },
    threads: { type: 'string' },
    variant: { type: 'string', default: 'latest' },
  },
});
if (!flags.features || !flags.entities || !flags['ttl-micros'])
  throw new Error('--features, --entities and --ttl-micros are required');
const variants = ['latest', 'latest-parquet', 'plain'];
if (!variants.includes(flags.variant as string))
  throw new Error(`--variant must be one of ${variants.join(', ')}, got ${flags.variant}`);
const ttlMicros = BigInt(flags['ttl-micros']);
const featureNames = Array.from({ length: Number(flags['features-count']) }, (_, index) => `f${index}`);
const quote = (path: string) => `'${path.replaceAll("'", "''")}'`;

// Status numbers as in fstore.v1.FeatureStatus.
const present = 1;
const notFound = 2;
const outsideMaxAge = 4;

const started = performance.now();
const instance = await DuckDBInstance.create(':memory:', flags.threads ? { threads: flags.threads } : {});
const connection = await instance.connect();
// A view reads the file at query time; a table holds it loaded.
const relation = flags.variant === 'latest-parquet' ? 'VIEW' : 'TABLE';
await connection.run(`CREATE ${relation} features AS SELECT * FROM read_parquet(${quote(flags.features)})`);
await connection.run(`CREATE ${relation} entities AS SELECT * FROM read_parquet(${quote(flags.entities)})`);
const loaded = performance.now();

const source =
  flags.variant === 'plain'
    ? 'features'
    : `(SELECT * FROM features
        QUALIFY row_number() OVER (PARTITION BY entity_id, event_time ORDER BY created_time DESC) = 1)`;
const fresh = `e.t - f.event_time <= ${ttlMicros}`;
const result = await connection.stream(`SELECT e.i, e.entity_id, e.t, coalesce(f.event_time, 0) AS event_time,
    CASE WHEN f.event_time IS NULL THEN ${notFound} WHEN ${fresh} THEN ${present} ELSE ${outsideMaxAge} END AS status,
    ${featureNames.map((name) => `CASE WHEN ${fresh} THEN f.${name} END AS ${name}`).join(', ')}
  FROM entities e ASOF LEFT JOIN ${source} f ON e.entity_id = f.entity_id AND e.t >= f.event_time
  ORDER BY e.i`);
let rows = 0;
const statuses = { present: 0, notFound: 0, outsideMaxAge: 0 };
let sumF0 = 0;
let firstChunkAt = 0;
for (;;) {
  const chunk = await result.fetchChunk();
  if (!chunk || chunk.rowCount === 0) break;
  if (rows === 0) firstChunkAt = performance.now();
  const status = chunk.getColumnVector(4);
  const f0 = chunk.getColumnVector(5);
  for (let row = 0; row < chunk.rowCount; row++) {
    const code = status.getItem(row);
    if (code === present) {
      statuses.present++;
      sumF0 += f0.getItem(row) as number;
    } else if (code === notFound) statuses.notFound++;
    else statuses.outsideMaxAge++;
  }
  rows += chunk.rowCount;
}
const finished = performance.now();
connection.closeSync();
instance.closeSync();

const peakKilobytes = Number(
  readFileSync('/proc/self/status', 'utf8').match(/^VmHWM:\s+(\d+) kB/m)?.[1] ?? 0,
);
console.log(
  JSON.stringify({
    variant: flags.variant,
    seconds: (finished - started) / 1000,
    loadSeconds: (loaded - started) / 1000,
    firstChunkSeconds: (firstChunkAt - loaded) / 1000,
    joinAndStreamSeconds: (finished - loaded) / 1000,
    rows,
    statuses,
    sumF0,
    peakRssBytes: peakKilobytes * 1024,
    cpuSeconds: (process.cpuUsage().user + process.cpuUsage().system) / 1e6,
  }),
);
