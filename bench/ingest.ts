/**
 * Ingest throughput through the public API: streams N rows of a 10-double view (int64 entity
 * key, 100,000 entities, event times spread over 90 days) into IngestFeatures of a running
 * `fstore serve`, chunks of 5,000 rows, and prints rows/s end to end (client encode, gRPC,
 * validation, binary COPY, commit).
 *
 *   node --import tsx bench/ingest.ts [--addr 127.0.0.1:6566] [--rows 1000000]
 */
import { parseArgs } from 'node:util';
import { FeatureService } from '../gen/fstore/v1/feature_service_pb.js';
import { FeatureViewSource, RegistryService } from '../gen/fstore/v1/registry_pb.js';
import { ValueType } from '../gen/fstore/v1/values_pb.js';
import { createClient } from '../src/grpc/client.js';
import { syntheticIngest } from './synthetic-rows.js';

const { values: flags } = parseArgs({
  options: { addr: { type: 'string' }, rows: { type: 'string' }, chunk: { type: 'string' } },
});
const address = flags.addr ?? '127.0.0.1:6566';
const rows = Number(flags.rows ?? 1_000_000);
const chunkRows = Number(flags.chunk ?? 5_000);
const project = 'bench_ingest';
const view = `ingest_${Date.now()}`;
const features = Array.from({ length: 10 }, (_, index) => `f${index}`);

const registry = createClient(RegistryService, address);
const client = createClient(FeatureService, address);
await registry.applyEntity({
  project,
  entity: { name: 'rider', joinKeys: [{ name: 'rider_id', type: ValueType.INT64 }] },
});
await registry.applyFeatureView({
  project,
  featureView: {
    name: view,
    entities: ['rider'],
    source: FeatureViewSource.BATCH,
    features: features.map((name) => ({ name, type: ValueType.DOUBLE })),
  },
});

const start = Date.UTC(2026, 0, 1) * 1000;
const spanMicros = 90 * 24 * 3600 * 1_000_000;
const requests = () =>
  syntheticIngest({
    project,
    view,
    keyName: 'rider_id',
    features,
    rows,
    entities: 100_000,
    chunkRows,
    eventTime: (row) => start + Math.floor((row / rows) * spanMicros),
  });

const started = performance.now();
const response = await client.ingestFeatures(requests());
const seconds = (performance.now() - started) / 1000;
console.log(
  JSON.stringify({
    rows: Number(response.rowsIngested),
    seconds: Number(seconds.toFixed(2)),
    rowsPerSecond: Math.round(Number(response.rowsIngested) / seconds),
    valuesPerSecond: Math.round((Number(response.rowsIngested) * features.length) / seconds),
    chunkRows,
    view: `${project}/${view}`,
  }),
);
registry.close();
client.close();
