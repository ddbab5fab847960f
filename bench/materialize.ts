/**
 * Materialization throughput (DESIGN §8 target: ≥ 10 M rows/min): ingests N entities × 2 rows of
 * a 10-double view into the offline store of a running `fstore serve` (Redis online store), then
 * materializes the whole range and prints entities copied per minute (binary COPY of the latest
 * rows, row encoding, pipelined last-write-wins writes to Redis).
 *
 *   node --import tsx bench/materialize.ts [--addr 127.0.0.1:6566] [--entities 1000000]
 *     [--runs 1] [--ttl-days 0]
 * The server needs FSTORE_MAX_BATCH_ROWS ≥ 5000 (chunk size of the ingest).
 *
 * The first run starts right after the ingest, before autovacuum has analyzed the new partition:
 * PostgreSQL then sorts every row before sending the first one. Later runs (`--runs`) copy the same
 * rows again (equal event times overwrite). `--ttl-days` gives the view a ttl, so every row is
 * written with an expiry (one SET … PXAT per row in the write script instead of one MSET per call).
 */
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { FeatureService } from '../gen/fstore/v1/feature_service_pb.js';
import { FeatureViewSource, RegistryService } from '../gen/fstore/v1/registry_pb.js';
import { ValueType } from '../gen/fstore/v1/values_pb.js';
import { createClient } from '../src/grpc/client.js';
import { syntheticIngest } from './synthetic-rows.js';

const { values: flags } = parseArgs({
  options: {
    addr: { type: 'string' },
    entities: { type: 'string' },
    runs: { type: 'string' },
    'ttl-days': { type: 'string' },
  },
});
const address = flags.addr ?? '127.0.0.1:6566';
const entities = Number(flags.entities ?? 1_000_000);
const runs = Number(flags.runs ?? 1);
const ttlDays = Number(flags['ttl-days'] ?? 0);
const chunkRows = 5_000;
const project = 'bench_materialize';
const view = `materialize_${Date.now()}`;
const features = Array.from({ length: 10 }, (_, index) => `f${index}`);
const start = Date.UTC(2026, 0, 1) * 1000;

const registry = createClient(RegistryService, address);
const client = createClient(FeatureService, address);
await registry.applyEntity({
  project,
  entity: { name: 'device', joinKeys: [{ name: 'device_id', type: ValueType.INT64 }] },
});
await registry.applyFeatureView({
  project,
  featureView: {
    name: view,
    entities: ['device'],
    online: true,
    ...(ttlDays > 0 ? { ttl: { seconds: BigInt(ttlDays * 86_400) } } : {}),
    source: FeatureViewSource.BATCH,
    features: features.map((name) => ({ name, type: ValueType.DOUBLE })),
  },
});

// Two rows per entity: materialization must pick the later one.
const requests = () =>
  syntheticIngest({
    project,
    view,
    keyName: 'device_id',
    features,
    rows: entities * 2,
    entities,
    chunkRows,
    eventTime: (row) => start + row * 10,
  });

const ingestStarted = performance.now();
const ingested = await client.ingestFeatures(requests());
const ingestSeconds = (performance.now() - ingestStarted) / 1000;

const load = () => loadavg().map((value) => Number(value.toFixed(2)));
console.log(
  JSON.stringify({
    offlineRows: Number(ingested.rowsIngested),
    ingestSeconds: Number(ingestSeconds.toFixed(2)),
    ttlDays,
  }),
);
for (let run = 1; run <= runs; run++) {
  const loadBefore = load();
  const started = performance.now();
  let copied = 0n;
  for await (const progress of client.materialize({
    project,
    featureViews: [view],
    startTime: BigInt(start),
    endTime: BigInt(start + entities * 2 * 10 + 1),
  }))
    if (progress.done) copied = progress.rowsWritten;
  const seconds = (performance.now() - started) / 1000;
  console.log(
    JSON.stringify({
      run,
      entitiesMaterialized: Number(copied),
      materializeSeconds: Number(seconds.toFixed(2)),
      rowsPerMinute: Math.round((Number(copied) / seconds) * 60),
      loadAverage: { before: loadBefore, after: load() },
    }),
  );
}
registry.close();
client.close();
