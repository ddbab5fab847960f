/**
 * Seeds the online-lookup benchmark through the public gRPC API of a running `fstore serve`:
 *  - entity `bench_user` (string join key `user_id`) in project `bench`;
 *  - feature views `bench10` (f0..f9, doubles) and `bench50` (f0..f49, doubles), online, push
 *    source, ttl BENCH_TTL_HOURS (default 48 h: long enough for any run, short enough that the
 *    keys leave Redis by themselves);
 *  - ids u0..u<N-1> written to both views with WriteOnlineFeatures, 1,000 rows per call.
 *
 *   node --import tsx bench/seed.ts [--addr 127.0.0.1:6566] [--rows 100000]
 *
 * Environment / flags: ADDR (--addr), PROJECT (--project, default bench), SEED_ROWS (--rows,
 * default 100000), SEED_BATCH (--batch, default 1000), SEED_CONCURRENCY (--concurrency, default 4),
 * BENCH_TTL_HOURS (--ttl-hours, default 48; 0 = values never age out, keys never expire).
 * Prints one JSON line with what was written and how fast.
 */
import { parseArgs } from 'node:util';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { FeatureService } from '../gen/fstore/v1/feature_service_pb.js';
import { type FeatureViewSchema, FeatureViewSource, RegistryService } from '../gen/fstore/v1/registry_pb.js';
import { ValueType } from '../gen/fstore/v1/values_pb.js';
import { createClient } from '../src/grpc/client.js';

const { values: flags } = parseArgs({
  options: {
    addr: { type: 'string' },
    project: { type: 'string' },
    rows: { type: 'string' },
    batch: { type: 'string' },
    concurrency: { type: 'string' },
    'ttl-hours': { type: 'string' },
  },
});

function positiveInt(name: string, text: string | undefined, fallback: number, allowZero = false): number {
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < (allowZero ? 0 : 1))
    throw new Error(`${name} must be a positive integer, got '${text}'`);
  return value;
}

const address = flags.addr ?? process.env.ADDR ?? '127.0.0.1:6566';
const project = flags.project ?? process.env.PROJECT ?? 'bench';
const rows = positiveInt('rows', flags.rows ?? process.env.SEED_ROWS, 100_000);
const batchRows = positiveInt('batch', flags.batch ?? process.env.SEED_BATCH, 1_000);
const concurrency = positiveInt('concurrency', flags.concurrency ?? process.env.SEED_CONCURRENCY, 4);
const ttlHours = positiveInt('ttl-hours', flags['ttl-hours'] ?? process.env.BENCH_TTL_HOURS, 48, true);

export const benchViews = [
  { name: 'bench10', features: 10 },
  { name: 'bench50', features: 50 },
] as const;

function viewDefinition(name: string, featureCount: number): MessageInitShape<typeof FeatureViewSchema> {
  return {
    name,
    entities: ['bench_user'],
    online: true,
    source: FeatureViewSource.PUSH,
    ...(ttlHours > 0 ? { ttl: { seconds: BigInt(ttlHours * 3600) } } : {}),
    description: `online-lookup benchmark: ${featureCount} doubles`,
    owner: 'bench',
    features: Array.from({ length: featureCount }, (_, index) => ({
      name: `f${index}`,
      type: ValueType.DOUBLE,
    })),
  };
}

const registry = createClient(RegistryService, address);
const features = createClient(FeatureService, address);

async function writeView(
  view: string,
  featureCount: number,
  eventTime: bigint,
): Promise<{ written: number; stale: number }> {
  let written = 0;
  let stale = 0;
  let next = 0;
  const worker = async () => {
    while (next < rows) {
      const start = next;
      next = Math.min(rows, next + batchRows);
      const count = next - start;
      const ids = Array.from({ length: count }, (_, index) => `u${start + index}`);
      const response = await features.writeOnlineFeatures(
        {
          project,
          featureView: view,
          entities: { user_id: { values: { case: 'stringValues', value: { values: ids } } } },
          eventTimestamps: ids.map(() => eventTime),
          features: Array.from({ length: featureCount }, (_, feature) => ({
            name: `f${feature}`,
            values: {
              values: {
                case: 'doubleValues' as const,
                // Realistic doubles (not small integers, which msgpack would pack in one byte).
                value: { values: ids.map((_, row) => (start + row) * 0.001 + feature + 0.123456789) },
              },
            },
          })),
        },
        { timeoutMs: 30_000 },
      );
      written += response.rowsWritten;
      stale += response.rowsStale;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { written, stale };
}

try {
  const started = performance.now();
  await registry.applyEntity({
    project,
    entity: {
      name: 'bench_user',
      joinKeys: [{ name: 'user_id', type: ValueType.STRING }],
      description: 'benchmark user',
    },
  });
  const result: Record<string, unknown> = { address, project, rows, ttlHours };
  for (const { name, features: featureCount } of benchViews) {
    const applied = await registry.applyFeatureView({
      project,
      featureView: viewDefinition(name, featureCount),
    });
    // The serving processes pick registry changes up asynchronously; give them a moment.
    await new Promise((resolve) => setTimeout(resolve, 200));
    const viewStarted = performance.now();
    const eventTime = BigInt(Date.now()) * 1000n;
    let outcome: { written: number; stale: number } | undefined;
    for (let attempt = 1; ; attempt++) {
      try {
        outcome = await writeView(name, featureCount, eventTime);
        break;
      } catch (error) {
        // A serving process that has not seen the new view yet answers NOT_FOUND: retry briefly.
        if ((error as { code?: string }).code !== 'not_found' || attempt >= 20) throw error;
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
    const seconds = (performance.now() - viewStarted) / 1000;
    result[name] = {
      version: applied.featureView?.version,
      ...outcome,
      seconds: Number(seconds.toFixed(2)),
      rowsPerSecond: Math.round(rows / seconds),
    };
  }
  result.totalSeconds = Number(((performance.now() - started) / 1000).toFixed(2));
  process.stdout.write(`${JSON.stringify(result)}\n`);
} finally {
  registry.close();
  features.close();
}
