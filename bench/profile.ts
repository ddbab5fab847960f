/**
 * Feature profile computation rate (issue 5): values profiled per second per worker, and end to
 * end through ComputeProfile.
 *
 *   node --import tsx bench/profile.ts [--values 10000000] [--addr 127.0.0.1:6566] [--rows 1000000]
 *
 * Phase "kernel": 10 M doubles (5 % nulls) as PostgreSQL binary COPY rows `(event_time, value)`
 * in segments of FSTORE_PROFILE_SEGMENT_ROWS' default, profiled by the worker's task function on
 * this thread (one worker = one thread), then merged as the server merges them; the same for
 * 2 M strings of 1,000 categories. Baseline in the same run: a plain loop summing the same
 * doubles out of the same bytes (decoding alone), so the figure reads as a ratio.
 * Phase "end to end" (with --addr): ingests `--rows` rows × 10 doubles into a running
 * `fstore serve` and times ComputeProfile over them (PostgreSQL COPY, the pool, merging).
 */
import { parseArgs } from 'node:util';
import { FeatureService } from '../gen/fstore/v1/feature_service_pb.js';
import { MonitoringService } from '../gen/fstore/v1/monitoring_pb.js';
import { FeatureViewSource, RegistryService } from '../gen/fstore/v1/registry_pb.js';
import { ValueType } from '../gen/fstore/v1/values_pb.js';
import { configDefaults } from '../src/config/config.js';
import { decodeProfile, mergeProfiles } from '../src/domain/profile/feature-profile.js';
import { createClient } from '../src/grpc/client.js';
import { runRowsProfileTask } from '../src/workers/profile-task.js';
import { syntheticIngest } from './synthetic-rows.js';

const { values: flags } = parseArgs({
  options: { values: { type: 'string' }, addr: { type: 'string' }, rows: { type: 'string' } },
});
const totalValues = Number(flags.values ?? 10_000_000);
const segmentRows = configDefaults.profileSegmentRows;
const postgresEpochMicros = 946_684_800_000_000;

/** Binary COPY rows (event_time, one column) like PostgreSQL sends them. */
function encodeSegment(
  count: number,
  write: (view: DataView, bytes: Uint8Array, at: number, row: number) => number,
  maxValueBytes: number,
): { bytes: Uint8Array; rows: number } {
  const buffer = new Uint8Array(count * (2 + 12 + 4 + maxValueBytes));
  const view = new DataView(buffer.buffer);
  let at = 0;
  for (let row = 0; row < count; row++) {
    view.setInt16(at, 2);
    view.setInt32(at + 2, 8);
    view.setBigInt64(at + 6, BigInt(1_767_225_600_000_000 + row - postgresEpochMicros));
    at += 14;
    at = write(view, buffer, at, row);
  }
  return { bytes: buffer.slice(0, at), rows: count };
}

function normal(): number {
  return Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());
}

function doubleSegments(): { bytes: Uint8Array; rows: number }[] {
  const segments = [];
  for (let first = 0; first < totalValues; first += segmentRows) {
    const count = Math.min(segmentRows, totalValues - first);
    segments.push(
      encodeSegment(
        count,
        (view, _bytes, at, row) => {
          if ((first + row) % 20 === 0) {
            view.setInt32(at, -1);
            return at + 4;
          }
          view.setInt32(at, 8);
          view.setFloat64(at + 4, 100 + 15 * normal());
          return at + 12;
        },
        8,
      ),
    );
  }
  return segments;
}

function stringSegments(total: number): { bytes: Uint8Array; rows: number }[] {
  const encoder = new TextEncoder();
  const names = Array.from({ length: 1_000 }, (_, index) => encoder.encode(`category_${index}`));
  const segments = [];
  for (let first = 0; first < total; first += segmentRows) {
    const count = Math.min(segmentRows, total - first);
    segments.push(
      encodeSegment(
        count,
        (view, bytes, at, _row) => {
          // Zipf-like: low indexes far more frequent.
          const name = names[Math.floor(1_000 * Math.random() ** 3)] as Uint8Array;
          view.setInt32(at, name.length);
          bytes.set(name, at + 4);
          return at + 4 + name.length;
        },
        16,
      ),
    );
  }
  return segments;
}

function decodeOnly(segments: readonly { bytes: Uint8Array; rows: number }[]): number {
  let sum = 0;
  for (const { bytes, rows } of segments) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let at = 0;
    for (let row = 0; row < rows; row++) {
      at += 14;
      const size = view.getInt32(at);
      at += 4;
      if (size > 0) {
        sum += view.getFloat64(at);
        at += size;
      }
    }
  }
  return sum;
}

function profileAll(
  segments: readonly { bytes: Uint8Array; rows: number }[],
  type: 'double' | 'string',
): number {
  const started = performance.now();
  let merged: ReturnType<typeof decodeProfile> | undefined;
  for (const segment of segments) {
    const result = runRowsProfileTask({
      kind: 'rows',
      bytes: segment.bytes,
      rows: segment.rows,
      columns: [{ type }],
    });
    const profile = decodeProfile(result.profiles[0] as Uint8Array);
    merged = merged ? mergeProfiles(merged, profile) : profile;
  }
  const seconds = (performance.now() - started) / 1000;
  if (!merged) throw new Error('nothing profiled');
  return seconds;
}

console.log(`kernel: ${totalValues.toLocaleString()} doubles in segments of ${segmentRows} rows, one thread`);
const doubles = doubleSegments();
profileAll(doubles.slice(0, 4), 'double'); // warm-up
const decodeStarted = performance.now();
decodeOnly(doubles);
const decodeSeconds = (performance.now() - decodeStarted) / 1000;
const doubleSeconds = profileAll(doubles, 'double');
console.log(
  `  profile ${(totalValues / doubleSeconds / 1e6).toFixed(1)} M values/s per worker (${doubleSeconds.toFixed(2)} s); ` +
    `decode alone ${(totalValues / decodeSeconds / 1e6).toFixed(1)} M values/s; profile/decode time ${(doubleSeconds / decodeSeconds).toFixed(2)}x`,
);
const stringCount = Math.min(totalValues, 2_000_000);
const strings = stringSegments(stringCount);
profileAll(strings.slice(0, 2), 'string');
const stringSeconds = profileAll(strings, 'string');
console.log(
  `  strings (1,000 categories): ${(stringCount / stringSeconds / 1e6).toFixed(2)} M values/s per worker (${stringSeconds.toFixed(2)} s)`,
);

if (flags.addr) {
  const address = flags.addr;
  const rows = Number(flags.rows ?? 1_000_000);
  const project = 'bench_profile';
  const viewName = `profile_${Date.now()}`;
  const features = Array.from({ length: 10 }, (_, index) => `f${index}`);
  const start = Date.UTC(2026, 0, 1) * 1000;
  const registry = createClient(RegistryService, address);
  const client = createClient(FeatureService, address);
  const monitoring = createClient(MonitoringService, address);
  await registry.applyEntity({
    project,
    entity: { name: 'device', joinKeys: [{ name: 'device_id', type: ValueType.INT64 }] },
  });
  await registry.applyFeatureView({
    project,
    featureView: {
      name: viewName,
      entities: ['device'],
      online: false,
      source: FeatureViewSource.BATCH,
      features: features.map((name) => ({ name, type: ValueType.DOUBLE })),
    },
  });
  const ingestStarted = performance.now();
  await client.ingestFeatures(
    syntheticIngest({
      project,
      view: viewName,
      keyName: 'device_id',
      features,
      rows,
      entities: rows,
      chunkRows: 1_000,
      eventTime: (row) => start + row,
    }),
  );
  console.log(
    `end to end: ingested ${rows.toLocaleString()} rows x 10 doubles in ${((performance.now() - ingestStarted) / 1000).toFixed(1)} s`,
  );
  for (let run = 1; run <= 2; run++) {
    const started = performance.now();
    const response = await monitoring.computeProfile({
      project,
      featureView: viewName,
      source: {
        source: { case: 'offline', value: { startTime: BigInt(start), endTime: BigInt(start + rows) } },
      },
    });
    const seconds = (performance.now() - started) / 1000;
    const values = response.profiles.reduce(
      (sum, profile) => sum + Number(profile.count + profile.nullCount),
      0,
    );
    console.log(
      `  ComputeProfile run ${run}: ${values.toLocaleString()} values in ${seconds.toFixed(2)} s = ${(values / seconds / 1e6).toFixed(1)} M values/s (server pool, PostgreSQL COPY included)`,
    );
  }
  registry.close();
  client.close();
  monitoring.close();
}
