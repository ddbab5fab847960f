/**
 * Stream aggregation definitions (DESIGN §3): what the registry stores and the feature view each
 * one produces. Validation reuses the window kernel's own checks (`validateWindowAggregationSpec`,
 * `validateWatermarkOptions`) and the feature view rules, so each rule lives in one place; the
 * error paths are the proto field names under `stream_aggregation`.
 */
import type { AggregationFunction } from './aggregations.js';
import { type FStoreError, invalidArgument } from './errors.js';
import type { FeatureViewDefinition, JoinKey, ValueType } from './model.js';
import { validateFeatureViewDefinition, validateName } from './registry-rules.js';
import { validateWatermarkOptions, watermarkDefaults } from './watermarks.js';
import {
  type AggregationSpec,
  validateWindowAggregationSpec,
  windowAggregationLimits,
} from './window-aggregator.js';

export const streamEncodings = ['json', 'msgpack'] as const;
export type StreamEncoding = (typeof streamEncodings)[number];

export const eventTimeUnits = ['epoch_micros', 'epoch_millis', 'epoch_seconds', 'iso8601'] as const;
export type EventTimeUnit = (typeof eventTimeUnits)[number];

export interface StreamAggregationDefinition {
  /** Also the name of the feature view it produces. */
  readonly name: string;
  readonly topic: string;
  readonly encoding: StreamEncoding;
  /** Event fields holding the key: one per join key of `entities`, in key order. */
  readonly keyFields: readonly string[];
  /** Entity names of the produced view, in key order. */
  readonly entities: readonly string[];
  readonly eventTimeField: string;
  readonly eventTimeUnit: EventTimeUnit;
  readonly watermarkBoundMicros: number;
  readonly allowedLatenessMicros: number;
  readonly idleTimeoutMs: number;
  readonly emitFollowingEmptyWindow: boolean;
  readonly aggregations: readonly AggregationSpec[];
  /** The produced view's max age, milliseconds; 0: none. */
  readonly ttlMs: number;
  readonly online: boolean;
  readonly owner: string;
  readonly description: string;
  readonly tags: Readonly<Record<string, string>>;
}

export interface StreamAggregation extends StreamAggregationDefinition {
  readonly updatedAt: Date;
}

export const streamAggregationDefaults = {
  idleTimeoutMs: watermarkDefaults.idleTimeoutMs,
} as const satisfies Partial<StreamAggregationDefinition>;

/** Kafka's own topic name rule. */
const topicPattern = /^[A-Za-z0-9._-]{1,249}$/;

/** The type of the feature an aggregation produces: counts are int64, everything else double. */
export function aggregationFeatureType(fn: AggregationFunction): ValueType {
  return fn === 'count' || fn === 'distinct_count' ? 'int64' : 'double';
}

/** The feature view a stream aggregation produces; applied through the ordinary view path. */
export function producedFeatureView(definition: StreamAggregationDefinition): FeatureViewDefinition {
  return {
    name: definition.name,
    entities: [...definition.entities],
    features: definition.aggregations.map((aggregation) => ({
      name: aggregation.name,
      type: aggregationFeatureType(aggregation.function),
      description: '',
      tags: {},
    })),
    ttlMs: definition.ttlMs,
    online: definition.online,
    source: 'stream',
    owner: definition.owner,
    description: definition.description,
    tags: { ...definition.tags },
  };
}

/**
 * Checks everything that does not need the registry's other objects; throws the first problem as
 * an `invalid_argument` error naming the field. Entities are resolved at apply time
 * (`validateKeyFields`).
 */
export function validateStreamAggregationDefinition(
  definition: StreamAggregationDefinition,
  field = 'stream_aggregation',
): void {
  validateName(`${field}.name`, definition.name);
  if (!topicPattern.test(definition.topic))
    throw invalidArgument(`${field}.topic`, 'must be 1 to 249 characters of A-Z, a-z, 0-9, ".", "_" and "-"');
  if (!streamEncodings.includes(definition.encoding))
    throw invalidArgument(`${field}.encoding`, `must be one of ${streamEncodings.join(', ')}`);
  validateEventField(`${field}.event_time_field`, definition.eventTimeField);
  if (!eventTimeUnits.includes(definition.eventTimeUnit))
    throw invalidArgument(`${field}.event_time_unit`, `must be one of ${eventTimeUnits.join(', ')}`);
  const problems: FStoreError[] = [
    ...validateWatermarkOptions(
      { boundMicros: definition.watermarkBoundMicros, idleTimeoutMs: definition.idleTimeoutMs },
      field,
    ),
    ...validateWindowAggregationSpec(definition, field),
  ];
  const [problem] = problems;
  if (problem) throw problem;
  // The produced view has one event time per row (a window end): every aggregation must have a
  // window ending at each of them, so all share one slide (Tecton's aggregation_interval likewise).
  const slide = definition.aggregations[0]!.slideMicros;
  definition.aggregations.forEach((aggregation, index) => {
    if (aggregation.slideMicros !== slide)
      throw invalidArgument(
        `${field}.aggregations[${index}].slide`,
        `${aggregation.slideMicros} µs differs from aggregations[0].slide (${slide} µs): the aggregations of one stream aggregation share one slide, so each window end is one row of the produced view; define another stream aggregation for another slide`,
      );
  });
  if (definition.keyFields.length === 0)
    throw invalidArgument(`${field}.key_fields`, 'at least one is required');
  definition.keyFields.forEach((keyField, index) => {
    validateEventField(`${field}.key_fields[${index}]`, keyField);
  });
  const seen = new Set<string>();
  definition.keyFields.forEach((keyField, index) => {
    if (seen.has(keyField))
      throw invalidArgument(`${field}.key_fields[${index}]`, `duplicate field "${keyField}"`);
    seen.add(keyField);
  });
  // Entities, ttl: the produced view's own rules, reported under this message's field names
  // (its features are the aggregations, checked above).
  validateFeatureViewDefinition(producedFeatureView(definition), field);
}

function validateEventField(field: string, name: string): void {
  if (typeof name !== 'string' || name.length === 0 || name.length > windowAggregationLimits.fieldLength)
    throw invalidArgument(
      field,
      `must be a field name of 1 to ${windowAggregationLimits.fieldLength} characters`,
    );
  // Stored in the registry's jsonb, which cannot hold NUL.
  if (name.includes('\u0000')) throw invalidArgument(field, 'contains a NUL character');
}

/** One key field per join key of the produced view's entities. */
export function validateKeyFields(
  definition: StreamAggregationDefinition,
  joinKeys: readonly JoinKey[],
  field = 'stream_aggregation',
): void {
  if (definition.keyFields.length !== joinKeys.length)
    throw invalidArgument(
      `${field}.key_fields`,
      `${definition.keyFields.length} field${definition.keyFields.length === 1 ? '' : 's'} for the ${
        joinKeys.length
      } join key${joinKeys.length === 1 ? '' : 's'} (${joinKeys.map((key) => key.name).join(', ')}) of the entities`,
    );
}

/** The definition as plain data in a fixed shape: stored as is, compared as JSON. */
export function canonicalStreamAggregation(
  definition: StreamAggregationDefinition,
): StreamAggregationDefinition {
  return {
    name: definition.name,
    topic: definition.topic,
    encoding: definition.encoding,
    keyFields: [...definition.keyFields],
    entities: [...definition.entities],
    eventTimeField: definition.eventTimeField,
    eventTimeUnit: definition.eventTimeUnit,
    watermarkBoundMicros: definition.watermarkBoundMicros,
    allowedLatenessMicros: definition.allowedLatenessMicros,
    idleTimeoutMs: definition.idleTimeoutMs,
    emitFollowingEmptyWindow: definition.emitFollowingEmptyWindow,
    aggregations: definition.aggregations.map((aggregation) => ({
      name: aggregation.name,
      function: aggregation.function,
      ...(aggregation.field !== undefined ? { field: aggregation.field } : {}),
      sizeMicros: aggregation.sizeMicros,
      slideMicros: aggregation.slideMicros,
    })),
    ttlMs: definition.ttlMs,
    online: definition.online,
    owner: definition.owner ?? '',
    description: definition.description ?? '',
    tags: Object.fromEntries(
      Object.entries(definition.tags).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    ),
  };
}

export function isSameStreamAggregation(
  current: StreamAggregationDefinition,
  next: StreamAggregationDefinition,
): boolean {
  return (
    JSON.stringify(canonicalStreamAggregation(current)) === JSON.stringify(canonicalStreamAggregation(next))
  );
}
