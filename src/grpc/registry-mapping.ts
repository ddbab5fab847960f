import type { MessageInitShape } from '@bufbuild/protobuf';
import { type Duration, timestampFromDate } from '@bufbuild/protobuf/wkt';
import {
  type EntitySchema,
  type FeatureSetSchema,
  type FeatureViewSchema,
  AggregationFunction as ProtoAggregationFunction,
  ApplyOutcome as ProtoApplyOutcome,
  type Entity as ProtoEntity,
  EventTimeUnit as ProtoEventTimeUnit,
  type FeatureSet as ProtoFeatureSet,
  type FeatureView as ProtoFeatureView,
  FeatureViewSource as ProtoSource,
  type StreamAggregation as ProtoStreamAggregation,
  StreamEncoding as ProtoStreamEncoding,
  type StreamAggregationSchema,
} from '../../gen/fstore/v1/registry_pb.js';
import { ValueType as ProtoValueType } from '../../gen/fstore/v1/values_pb.js';
import type { AggregationFunction } from '../domain/aggregations.js';
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
import {
  type EventTimeUnit,
  type StreamAggregation,
  type StreamAggregationDefinition,
  type StreamEncoding,
  streamAggregationDefaults,
} from '../domain/stream-aggregation.js';
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

const durationFromMs = (ms: number) => ({
  seconds: BigInt(Math.floor(ms / 1000)),
  nanos: (ms % 1000) * 1_000_000,
});

/** Whole microseconds; unset is `unset`. Range checks are the domain's (they name the limits). */
function microsFromDuration(duration: Duration | undefined, field: string, unset = 0): number {
  if (!duration) return unset;
  if (duration.seconds < 0n || duration.nanos < 0) throw invalidArgument(field, 'must not be negative');
  if (duration.nanos % 1000 !== 0) throw invalidArgument(field, 'must be whole microseconds');
  const micros = Number(duration.seconds) * 1_000_000 + duration.nanos / 1000;
  if (!Number.isSafeInteger(micros)) throw invalidArgument(field, 'is too large');
  return micros;
}

const durationFromMicros = (micros: number) => ({
  seconds: BigInt(Math.floor(micros / 1_000_000)),
  nanos: (micros % 1_000_000) * 1000,
});

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
        ...(feature.allowedValues.length > 0 ? { allowedValues: [...feature.allowedValues] } : {}),
        ...(feature.maxNullRate !== undefined ? { maxNullRate: feature.maxNullRate } : {}),
        ...(feature.psiWarn !== undefined ? { psiWarn: feature.psiWarn } : {}),
        ...(feature.psiAlert !== undefined ? { psiAlert: feature.psiAlert } : {}),
      };
    }),
    ttlMs: ttlMsFromDuration(view.ttl, `${field}.ttl`),
    online: view.online,
    source,
    owner: view.owner,
    description: view.description,
    tags: { ...view.tags },
    ...(view.freshness ? { freshnessMs: ttlMsFromDuration(view.freshness, `${field}.freshness`) } : {}),
    ...(view.driftMonitor
      ? {
          driftMonitor: {
            referenceProfile: view.driftMonitor.referenceProfile,
            intervalMs: ttlMsFromDuration(view.driftMonitor.interval, `${field}.drift_monitor.interval`),
            windowMs: ttlMsFromDuration(view.driftMonitor.window, `${field}.drift_monitor.window`),
          },
        }
      : {}),
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
      allowedValues: [...(feature.allowedValues ?? [])],
      maxNullRate: feature.maxNullRate,
      psiWarn: feature.psiWarn,
      psiAlert: feature.psiAlert,
    })),
    ttl: durationFromMs(view.ttlMs),
    ...(view.freshnessMs !== undefined ? { freshness: durationFromMs(view.freshnessMs) } : {}),
    ...(view.driftMonitor
      ? {
          driftMonitor: {
            referenceProfile: view.driftMonitor.referenceProfile,
            interval: durationFromMs(view.driftMonitor.intervalMs),
            window: durationFromMs(view.driftMonitor.windowMs),
          },
        }
      : {}),
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

const encodingFromProto: Record<number, StreamEncoding> = {
  [ProtoStreamEncoding.JSON]: 'json',
  [ProtoStreamEncoding.MSGPACK]: 'msgpack',
};
const encodingToProto: Record<StreamEncoding, ProtoStreamEncoding> = {
  json: ProtoStreamEncoding.JSON,
  msgpack: ProtoStreamEncoding.MSGPACK,
};
const timeUnitFromProto: Record<number, EventTimeUnit> = {
  [ProtoEventTimeUnit.EPOCH_MICROS]: 'epoch_micros',
  [ProtoEventTimeUnit.EPOCH_MILLIS]: 'epoch_millis',
  [ProtoEventTimeUnit.EPOCH_SECONDS]: 'epoch_seconds',
  [ProtoEventTimeUnit.ISO8601]: 'iso8601',
};
const timeUnitToProto: Record<EventTimeUnit, ProtoEventTimeUnit> = {
  epoch_micros: ProtoEventTimeUnit.EPOCH_MICROS,
  epoch_millis: ProtoEventTimeUnit.EPOCH_MILLIS,
  epoch_seconds: ProtoEventTimeUnit.EPOCH_SECONDS,
  iso8601: ProtoEventTimeUnit.ISO8601,
};
const functionToProto: Record<AggregationFunction, ProtoAggregationFunction> = {
  count: ProtoAggregationFunction.COUNT,
  sum: ProtoAggregationFunction.SUM,
  mean: ProtoAggregationFunction.MEAN,
  min: ProtoAggregationFunction.MIN,
  max: ProtoAggregationFunction.MAX,
  stddev_pop: ProtoAggregationFunction.STDDEV_POP,
  stddev_samp: ProtoAggregationFunction.STDDEV_SAMP,
  last: ProtoAggregationFunction.LAST,
  distinct_count: ProtoAggregationFunction.DISTINCT_COUNT,
};
const functionFromProto = new Map(
  Object.entries(functionToProto).map(([name, value]) => [value, name as AggregationFunction]),
);

export function streamAggregationFromProto(
  aggregation: ProtoStreamAggregation | undefined,
  field = 'stream_aggregation',
): StreamAggregationDefinition {
  if (!aggregation) throw invalidArgument(field, 'is required');
  const encoding = encodingFromProto[aggregation.encoding];
  if (!encoding)
    throw invalidArgument(`${field}.encoding`, 'STREAM_ENCODING_JSON or STREAM_ENCODING_MSGPACK is required');
  const eventTimeUnit = timeUnitFromProto[aggregation.eventTimeUnit];
  if (!eventTimeUnit) throw invalidArgument(`${field}.event_time_unit`, 'an event time unit is required');
  const idleTimeoutMicros = microsFromDuration(
    aggregation.idleTimeout,
    `${field}.idle_timeout`,
    streamAggregationDefaults.idleTimeoutMs * 1000,
  );
  if (idleTimeoutMicros % 1000 !== 0)
    throw invalidArgument(`${field}.idle_timeout`, 'must be whole milliseconds');
  return {
    name: aggregation.name,
    topic: aggregation.topic,
    encoding,
    keyFields: [...aggregation.keyFields],
    entities: [...aggregation.entities],
    eventTimeField: aggregation.eventTimeField,
    eventTimeUnit,
    watermarkBoundMicros: microsFromDuration(aggregation.watermarkBound, `${field}.watermark_bound`),
    allowedLatenessMicros: microsFromDuration(aggregation.allowedLateness, `${field}.allowed_lateness`),
    idleTimeoutMs: idleTimeoutMicros / 1000,
    emitFollowingEmptyWindow: aggregation.emitFollowingEmptyWindow,
    aggregations: aggregation.aggregations.map((item, index) => {
      const path = `${field}.aggregations[${index}]`;
      const fn = functionFromProto.get(item.function);
      if (!fn) throw invalidArgument(`${path}.function`, 'an aggregation function is required');
      return {
        name: item.name,
        function: fn,
        ...(item.field !== '' ? { field: item.field } : {}),
        sizeMicros: microsFromDuration(item.windowSize, `${path}.window_size`),
        slideMicros: microsFromDuration(item.slide, `${path}.slide`),
      };
    }),
    ttlMs: ttlMsFromDuration(aggregation.ttl, `${field}.ttl`),
    online: aggregation.online,
    owner: aggregation.owner,
    description: aggregation.description,
    tags: { ...aggregation.tags },
  };
}

export function streamAggregationToProto(
  aggregation: StreamAggregation,
): MessageInitShape<typeof StreamAggregationSchema> {
  return {
    name: aggregation.name,
    topic: aggregation.topic,
    encoding: encodingToProto[aggregation.encoding],
    keyFields: [...aggregation.keyFields],
    entities: [...aggregation.entities],
    eventTimeField: aggregation.eventTimeField,
    eventTimeUnit: timeUnitToProto[aggregation.eventTimeUnit],
    watermarkBound: durationFromMicros(aggregation.watermarkBoundMicros),
    allowedLateness: durationFromMicros(aggregation.allowedLatenessMicros),
    idleTimeout: durationFromMs(aggregation.idleTimeoutMs),
    emitFollowingEmptyWindow: aggregation.emitFollowingEmptyWindow,
    aggregations: aggregation.aggregations.map((item) => ({
      name: item.name,
      function: functionToProto[item.function],
      field: item.field ?? '',
      windowSize: durationFromMicros(item.sizeMicros),
      slide: durationFromMicros(item.slideMicros),
    })),
    ttl: durationFromMs(aggregation.ttlMs),
    online: aggregation.online,
    owner: aggregation.owner,
    description: aggregation.description,
    tags: { ...aggregation.tags },
    updatedAt: timestampFromDate(aggregation.updatedAt),
  };
}
