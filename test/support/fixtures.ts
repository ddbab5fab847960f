import type { MessageInitShape } from '@bufbuild/protobuf';
import type { FeatureService } from '../../gen/fstore/v1/feature_service_pb.js';
import type { FeatureViewSchema, RegistryService } from '../../gen/fstore/v1/registry_pb.js';
import { type EntitySchema, FeatureViewSource } from '../../gen/fstore/v1/registry_pb.js';
import { ValueType, type VectorSchema } from '../../gen/fstore/v1/values_pb.js';
import type { ServiceClient } from '../../src/grpc/client.js';

/** Request builders and a small registry used by the serving tests. */

type VectorInit = MessageInitShape<typeof VectorSchema>;

export const strings = (...values: string[]): VectorInit => ({
  values: { case: 'stringValues', value: { values } },
});
export const int64s = (...values: (number | bigint)[]): VectorInit => ({
  values: { case: 'int64Values', value: { values: values.map((value) => BigInt(value)) } },
});
export const doubles = (...values: number[]): VectorInit => ({
  values: { case: 'doubleValues', value: { values } },
});
export const floats = (...values: number[]): VectorInit => ({
  values: { case: 'floatValues', value: { values } },
});
export const bools = (...values: boolean[]): VectorInit => ({
  values: { case: 'boolValues', value: { values } },
});
export const bytes = (...values: Uint8Array[]): VectorInit => ({
  values: { case: 'bytesValues', value: { values } },
});
export const timestamps = (...values: number[]): VectorInit => ({
  values: { case: 'timestampValues', value: { values: values.map((value) => BigInt(value)) } },
});
export const lists = (...rows: VectorInit[]): VectorInit => ({
  values: { case: 'listValues', value: { rows } },
});

export const nowMicros = (): number => Date.now() * 1000;
export const hourMs = 3_600_000;

export const userEntity: MessageInitShape<typeof EntitySchema> = {
  name: 'user',
  joinKeys: [{ name: 'user_id', type: ValueType.STRING }],
  description: 'a customer',
};
export const merchantEntity: MessageInitShape<typeof EntitySchema> = {
  name: 'merchant',
  joinKeys: [{ name: 'merchant_id', type: ValueType.INT64 }],
};

/** Every value type, one hour ttl. */
export const userStatsView: MessageInitShape<typeof FeatureViewSchema> = {
  name: 'user_stats',
  entities: ['user'],
  online: true,
  source: FeatureViewSource.PUSH,
  ttl: { seconds: BigInt(hourMs / 1000) },
  features: [
    { name: 'clicks', type: ValueType.INT64 },
    { name: 'score', type: ValueType.DOUBLE },
    { name: 'ratio', type: ValueType.FLOAT },
    { name: 'name', type: ValueType.STRING },
    { name: 'active', type: ValueType.BOOL },
    { name: 'blob', type: ValueType.BYTES },
    { name: 'last_seen', type: ValueType.TIMESTAMP },
    { name: 'embedding', type: ValueType.FLOAT_LIST },
    { name: 'tags', type: ValueType.STRING_LIST },
  ],
};

/** A composite key: (user_id, merchant_id). */
export const pairStatsView: MessageInitShape<typeof FeatureViewSchema> = {
  name: 'pair_stats',
  entities: ['user', 'merchant'],
  online: true,
  features: [{ name: 'amount', type: ValueType.DOUBLE }],
};

export const offlineOnlyView: MessageInitShape<typeof FeatureViewSchema> = {
  name: 'offline_only',
  entities: ['user'],
  online: false,
  source: FeatureViewSource.BATCH,
  features: [{ name: 'x', type: ValueType.DOUBLE }],
};

export async function applyFixtures(
  registry: ServiceClient<typeof RegistryService>,
  project: string,
): Promise<void> {
  await registry.applyEntity({ project, entity: userEntity });
  await registry.applyEntity({ project, entity: merchantEntity });
  await registry.applyFeatureView({ project, featureView: userStatsView });
  await registry.applyFeatureView({ project, featureView: pairStatsView });
  await registry.applyFeatureView({ project, featureView: offlineOnlyView });
}

/** Writes one pair_stats row (user_id, merchant_id) → amount, timed now. */
export function writePairAmount(
  features: ServiceClient<typeof FeatureService>,
  project: string,
  userId: string,
  merchantId: number,
  amount: number,
) {
  return features.writeOnlineFeatures({
    project,
    featureView: 'pair_stats',
    entities: { user_id: strings(userId), merchant_id: int64s(merchantId) },
    eventTimestamps: [BigInt(nowMicros())],
    features: [{ name: 'amount', values: doubles(amount) }],
  });
}

/** Rejections of the typed client are FStoreErrors; this reads their code and message. */
export async function failureOf(promise: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await promise;
  } catch (error) {
    const { code, message } = error as { code: string; message: string };
    return { code, message };
  }
  throw new Error('expected the call to fail, it succeeded');
}

/** The plain values of a scalar column of a response (undefined for list columns). */
export function valuesOf(
  column: { values?: { values: { case: string | undefined; value?: unknown } } } | undefined,
): unknown[] | undefined {
  const value = column?.values?.values.value as { values?: unknown[] } | undefined;
  return value?.values;
}

/** A seeded generator (mulberry32) of numbers in [0, 1), so every run sees the same data. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let value = state;
    value = Math.imul(value ^ (value >>> 15), value | 1);
    value ^= value + Math.imul(value ^ (value >>> 7), value | 61);
    return ((value ^ (value >>> 14)) >>> 0) / 4_294_967_296;
  };
}
