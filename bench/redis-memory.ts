/**
 * Redis memory per stored feature value (DESIGN §8 target: ≤ 20 B per value for a 10-double view).
 *
 *   node --import tsx bench/redis-memory.ts
 *
 * Writes N entities of a 10-double feature view through the real codec and the real Redis online
 * store, and divides the `used_memory` growth by N × 10. Variants: entity ids as strings
 * (`user_000123`), sequential int64 (7 digits) and snowflake-like int64 (19 digits), each without
 * and with a per-key expiry; the baseline is a plain msgpack blob of the 10 doubles under the bare
 * id (no prefix, no event time, no version), written with SET. The last rows show the cost of
 * the key prefix: the same store with FSTORE_REDIS_KEY_PREFIX=''.
 *
 * It uses database FSTORE_BENCH_REDIS_DB (default 15) of FSTORE_BENCH_REDIS_URL (default
 * redis://127.0.0.1:6391) and FLUSHes that database before each variant: it refuses to start if
 * the database holds keys and not the marker key it leaves there itself. Run it while nothing
 * else writes to that Redis: `used_memory` is per server, not per database.
 *
 * Environment: FSTORE_BENCH_REDIS_URL, FSTORE_BENCH_REDIS_DB (default 15), FSTORE_BENCH_N
 * (default 200000).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { Packr } from 'msgpackr';
import { createRedisOnlineStore } from '../src/adapters/redis/redis-online-store.js';
import type { FeatureDefinition } from '../src/domain/model.js';
import { encodeOnlineKey, encodeOnlineRow } from '../src/domain/online-codec.js';
import type { OnlineEntry } from '../src/ports/online-store.js';

const url = process.env.FSTORE_BENCH_REDIS_URL ?? 'redis://127.0.0.1:6391';
const database = Number(process.env.FSTORE_BENCH_REDIS_DB ?? 15);
const entityCount = Number(process.env.FSTORE_BENCH_N ?? 200_000);
const featuresPerView = 10;
const batchSize = 1_000;
const viewId = 12; // a registry-assigned view id of two digits
const defaultKeyPrefix = 'fs:'; // the store's default
const markerKey = 'fstore-bench:redis-memory';

if (!Number.isInteger(database) || database < 0)
  throw new Error(`FSTORE_BENCH_REDIS_DB: not a db index: ${database}`);
if (!Number.isInteger(entityCount) || entityCount <= 0)
  throw new Error(`FSTORE_BENCH_N: not a count: ${entityCount}`);

const databaseUrl = new URL(url);
databaseUrl.pathname = `/${database}`;
const admin = new Redis(databaseUrl.toString(), { maxRetriesPerRequest: 1 });

const features: FeatureDefinition[] = Array.from({ length: featuresPerView }, (_, index) => ({
  name: `f${index}`,
  type: 'double',
  description: '',
  tags: {},
}));

// Deterministic random doubles (xorshift), so runs are comparable.
let seed = 0x2545f491;
function randomDouble(): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) / 2 ** 32 - 0.5;
}
const randomValues = (): number[] => Array.from({ length: featuresPerView }, () => randomDouble() * 1_000);

type EntityId = string | bigint;
const idKinds: Record<string, (index: number) => EntityId> = {
  'string id user_000123': (index) => `user_${String(index).padStart(6, '0')}`,
  'int64 id, 7 digits': (index) => BigInt(1_000_000 + index),
  'int64 id, 19 digits': (index) => 1_234_567_890_123_456_789n + BigInt(index) * 7_919n,
};

async function usedMemory(): Promise<number> {
  // Let incremental rehashing and client buffer shrinking finish before reading.
  let previous = -1;
  for (let attempt = 0; attempt < 20; attempt++) {
    await sleep(250);
    const info = await admin.info('memory');
    const used = Number(/used_memory:(\d+)/.exec(info)?.[1]);
    if (used === previous) return used;
    previous = used;
  }
  return previous;
}

async function freshDatabase(): Promise<number> {
  const size = await admin.dbsize();
  if (size > 0 && (await admin.exists(markerKey)) === 0) {
    throw new Error(
      `database ${database} of ${url} holds ${size} keys that this benchmark did not write; ` +
        'refusing to FLUSHDB it (set FSTORE_BENCH_REDIS_DB to a database you own)',
    );
  }
  await admin.flushdb('SYNC');
  await admin.set(markerKey, '1');
  return usedMemory();
}

/** Key counts of the other databases: if they move, someone else wrote during the measurement. */
async function otherDatabases(): Promise<string> {
  const keyspace = await admin.info('keyspace');
  return keyspace
    .split('\n')
    .filter((line) => line.startsWith('db') && !line.startsWith(`db${database}:`))
    .map((line) => line.replace(/,avg_ttl=\d+/, '').trim())
    .join(' ');
}

interface Measurement {
  readonly variant: string;
  /** Whether other databases changed meanwhile (the figure then includes their growth). */
  readonly disturbed: boolean;
  readonly keyBytes: number;
  readonly valueBytes: number;
  readonly memoryUsage: number;
  readonly bytes: number;
}

async function sample(key: string): Promise<{ valueBytes: number; memoryUsage: number }> {
  const [valueBytes, memoryUsage] = await Promise.all([
    admin.strlen(key),
    admin.call('MEMORY', 'USAGE', key, 'SAMPLES', '0') as Promise<number>,
  ]);
  return { valueBytes, memoryUsage };
}

interface StoreVariant {
  readonly idKind: string;
  readonly withExpiry: boolean;
  readonly keyPrefix?: string;
  readonly label?: string;
}

async function measureStore(variant: StoreVariant): Promise<Measurement> {
  const { idKind, withExpiry, keyPrefix = defaultKeyPrefix } = variant;
  const idOf = idKinds[idKind] as (index: number) => EntityId;
  const before = await freshDatabase();
  const othersBefore = await otherDatabases();
  const store = createRedisOnlineStore({ url: databaseUrl.toString(), keyPrefix, commandTimeoutMs: 30_000 });
  const now = Date.now();
  const expireAtMs = withExpiry ? now + 86_400_000 : 0; // one day
  for (let start = 0; start < entityCount; start += batchSize) {
    const entries: OnlineEntry[] = [];
    for (let index = start; index < Math.min(start + batchSize, entityCount); index++) {
      entries.push({
        key: encodeOnlineKey(viewId, [idOf(index)]),
        value: encodeOnlineRow(1, (now - index) * 1000, features, randomValues()),
        expireAtMs,
      });
    }
    await store.writeMany(entries);
  }
  await store.close();
  const bytes = (await usedMemory()) - before;
  const disturbed = (await otherDatabases()) !== othersBefore;
  const key = keyPrefix + encodeOnlineKey(viewId, [idOf(123)]);
  return {
    variant: `${variant.label ?? 'store'}, ${idKind}, ${withExpiry ? 'with' : 'no'} expiry`,
    disturbed,
    keyBytes: Buffer.byteLength(key),
    ...(await sample(key)),
    bytes,
  };
}

async function measurePlainBlob(): Promise<Measurement> {
  const before = await freshDatabase();
  const othersBefore = await otherDatabases();
  const packr = new Packr({ useRecords: false });
  const idOf = idKinds['string id user_000123'] as (index: number) => EntityId;
  for (let start = 0; start < entityCount; start += batchSize) {
    const pipeline = admin.pipeline();
    for (let index = start; index < Math.min(start + batchSize, entityCount); index++) {
      pipeline.set(String(idOf(index)), packr.pack(randomValues()));
    }
    await pipeline.exec();
  }
  const bytes = (await usedMemory()) - before;
  const disturbed = (await otherDatabases()) !== othersBefore;
  const key = String(idOf(123));
  return {
    variant: 'baseline: plain msgpack blob, bare id, SET',
    disturbed,
    keyBytes: key.length,
    ...(await sample(key)),
    bytes,
  };
}

async function main(): Promise<void> {
  console.log(
    `Redis memory per feature value: ${entityCount.toLocaleString('en')} entities x ${featuresPerView} doubles, ` +
      `${url} database ${database}`,
  );
  const results: Measurement[] = [await measurePlainBlob()];
  for (const idKind of Object.keys(idKinds)) {
    for (const withExpiry of [false, true]) results.push(await measureStore({ idKind, withExpiry }));
  }
  for (const withExpiry of [false, true]) {
    results.push(
      await measureStore({
        idKind: 'string id user_000123',
        withExpiry,
        keyPrefix: '',
        label: "store, keyPrefix ''",
      }),
    );
  }
  await admin.flushdb('SYNC');

  const baseline = (results[0] as Measurement).bytes;
  const rows = results.map((result) => ({
    variant: result.variant,
    'key B': result.keyBytes,
    'value B': result.valueBytes,
    'MEMORY USAGE B': result.memoryUsage,
    'used_memory Δ MB': (result.bytes / 2 ** 20).toFixed(1),
    'B/key': (result.bytes / entityCount).toFixed(1),
    'B/value': (result.bytes / (entityCount * featuresPerView)).toFixed(2),
    'vs baseline': (result.bytes / baseline).toFixed(2),
    '≤ 20 B/value': result.bytes / (entityCount * featuresPerView) <= 20 ? 'yes' : 'NO',
    disturbed: result.disturbed ? 'YES' : '',
  }));
  console.table(rows);
  if (results.some((result) => result.disturbed)) {
    console.log(
      'disturbed = other databases changed during that measurement: used_memory is per server, so rerun ' +
        'those rows while nothing else uses this Redis, or point FSTORE_BENCH_REDIS_URL at a private one',
    );
  }
  const info = await admin.info('server');
  console.log(
    `redis ${/redis_version:(\S+)/.exec(info)?.[1]}, ${/mem_allocator:(\S+)/.exec(await admin.info('memory'))?.[1]}`,
  );
}

try {
  await main();
} finally {
  admin.disconnect();
}
