import type { MessageInitShape } from '@bufbuild/protobuf';
import { type Duration, timestampFromDate } from '@bufbuild/protobuf/wkt';
import {
  type EntitySchema,
  type FeatureSetSchema,
  type FeatureViewSchema,
  ApplyOutcome as ProtoApplyOutcome,
  type Entity as ProtoEntity,
  type FeatureSet as ProtoFeatureSet,
  type FeatureView as ProtoFeatureView,
  FeatureViewSource as ProtoSource,
} from '../../gen/fstore/v1/registry_pb.js';
import { ValueType as ProtoValueType } from '../../gen/fstore/v1/values_pb.js';
import { invalidArgument } from '../domain/errors.js';
import type {
  ApplyOutcome,
  Entity,
  EntityDefinition,
  FeatureSet,
  FeatureSetDefinition,
  FeatureView,
  FeatureViewDefinition,
  FeatureViewSource,
  KeyType,
} from '../domain/model.js';
import { valueTypeFromProto, valueTypeToProto } from './vectors.js';

/** Registry objects: protobuf ⇄ domain. Shape errors name the request field. */

export function entityFromProto(entity: ProtoEntity | undefined, field = 'entity'): EntityDefinition {
  if (!entity) throw invalidArgument(field, 'is required');
  return {
    name: entity.name,
    description: entity.description,
    joinKeys: entity.joinKeys.map((key, index) => {
      let type: KeyType;
      if (key.type === ProtoValueType.STRING) type = 'string';
      else if (key.type === ProtoValueType.INT64) type = 'int64';
      else
        throw invalidArgument(
          `${field}.join_keys[${index}].type`,
          'must be VALUE_TYPE_STRING or VALUE_TYPE_INT64',
        );
      return { name: key.name, type };
    }),
  };
}

export function entityToProto(entity: Entity): MessageInitShape<typeof EntitySchema> {
  return {
    name: entity.name,
    description: entity.description,
    joinKeys: entity.joinKeys.map((key) => ({
      name: key.name,
      type: key.type === 'string' ? ProtoValueType.STRING : ProtoValueType.INT64,
    })),
    updatedAt: timestampFromDate(entity.updatedAt),
  };
}

function ttlMsFromDuration(ttl: Duration | undefined, field: string): number {
  if (!ttl) return 0;
  if (ttl.seconds < 0n || ttl.nanos < 0) throw invalidArgument(field, 'must not be negative');
  if (ttl.nanos % 1_000_000 !== 0) throw invalidArgument(field, 'must be whole milliseconds');
  const ms = Number(ttl.seconds) * 1000 + ttl.nanos / 1_000_000;
  if (!Number.isSafeInteger(ms)) throw invalidArgument(field, 'is too large');
  return ms;
}

const sourceFromProto: Record<number, FeatureViewSource> = {
  [ProtoSource.UNSPECIFIED]: 'push',
  [ProtoSource.BATCH]: 'batch',
  [ProtoSource.PUSH]: 'push',
  [ProtoSource.STREAM]: 'stream',
};
const sourceToProto: Record<FeatureViewSource, ProtoSource> = {
  batch: ProtoSource.BATCH,
  push: ProtoSource.PUSH,
  stream: ProtoSource.STREAM,
};

export function featureViewFromProto(
  view: ProtoFeatureView | undefined,
  field = 'feature_view',
): FeatureViewDefinition {
  if (!view) throw invalidArgument(field, 'is required');
  const source = sourceFromProto[view.source];
  if (!source) throw invalidArgument(`${field}.source`, `unknown source ${view.source}`);
  return {
    name: view.name,
    entities: [...view.entities],
    features: view.features.map((feature, index) => {
      const type = valueTypeFromProto(feature.type);
      if (!type) throw invalidArgument(`${field}.features[${index}].type`, 'a value type is required');
      return {
        name: feature.name,
        type,
        description: feature.description,
        tags: { ...feature.tags },
        required: feature.required,
        ...(feature.min !== undefined ? { min: feature.min } : {}),
        ...(feature.max !== undefined ? { max: feature.max } : {}),
      };
    }),
    ttlMs: ttlMsFromDuration(view.ttl, `${field}.ttl`),
    online: view.online,
    source,
    owner: view.owner,
    description: view.description,
    tags: { ...view.tags },
  };
}

export function featureViewToProto(view: FeatureView): MessageInitShape<typeof FeatureViewSchema> {
  return {
    name: view.name,
    entities: [...view.entities],
    features: view.features.map((feature) => ({
      name: feature.name,
      type: valueTypeToProto(feature.type),
      description: feature.description,
      tags: { ...feature.tags },
      required: feature.required ?? false,
      min: feature.min,
      max: feature.max,
    })),
    ttl: { seconds: BigInt(Math.floor(view.ttlMs / 1000)), nanos: (view.ttlMs % 1000) * 1_000_000 },
    online: view.online,
    source: sourceToProto[view.source],
    owner: view.owner,
    description: view.description,
    tags: { ...view.tags },
    version: view.version,
    createdAt: timestampFromDate(view.createdAt),
  };
}

export function featureSetFromProto(
  featureSet: ProtoFeatureSet | undefined,
  field = 'feature_set',
): FeatureSetDefinition {
  if (!featureSet) throw invalidArgument(field, 'is required');
  return { name: featureSet.name, features: [...featureSet.features], description: featureSet.description };
}

export function featureSetToProto(featureSet: FeatureSet): MessageInitShape<typeof FeatureSetSchema> {
  return {
    name: featureSet.name,
    features: [...featureSet.features],
    description: featureSet.description,
    updatedAt: timestampFromDate(featureSet.updatedAt),
  };
}

const outcomeToProto: Record<ApplyOutcome, ProtoApplyOutcome> = {
  created: ProtoApplyOutcome.CREATED,
  unchanged: ProtoApplyOutcome.UNCHANGED,
  updated: ProtoApplyOutcome.UPDATED,
};

export function applyOutcomeToProto(outcome: ApplyOutcome): ProtoApplyOutcome {
  return outcomeToProto[outcome];
}
