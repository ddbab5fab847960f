/**
 * Turns the bytes of one Kafka record into the windowing kernel's event (DESIGN §4), by the rules
 * of a stream aggregation: JSON or msgpack, one object per record; the key fields give the
 * entity's join keys (string keys take strings, int64 keys take integers or decimal strings); the
 * event-time field is read in the definition's unit; only the fields the aggregations read are
 * kept. A record that breaks a rule is not an event: the decoder says what and where, for the
 * dead-letter topic, and which of the two reasons of a dead letter it is:
 * - `malformed`: the record cannot be read as an event — its bytes are not one JSON object or
 *   MessagePack map, or a key field or the event-time field is missing or of the wrong type (or
 *   out of range);
 * - `invalid`: an event (its key and time read) with a value its aggregation cannot take — not a
 *   scalar, or not a number where the result is a number. The window aggregator says `invalid`
 *   for the same kind of fault (a string for sum, mean, min or max; a non-finite number), so a
 *   non-numeric value for a numeric aggregation is `invalid` whichever of the two finds it.
 */
import { Unpackr } from 'msgpackr';
import type { EventValue } from '../domain/aggregations.js';
import type { JoinKey, KeyValue } from '../domain/model.js';
import { encodeOnlineKey } from '../domain/online-codec.js';
import type { StreamAggregationDefinition } from '../domain/stream-aggregation.js';
import { parseIsoMicros } from '../domain/timestamps.js';
import type { StreamEvent } from '../domain/window-aggregator.js';

export type DecodedRecord =
  | { readonly ok: true; readonly event: StreamEvent }
  | {
      readonly ok: false;
      readonly problem: string;
      /** `invalid`: a value its aggregation cannot take; absent: the record is malformed. */
      readonly reason?: 'invalid';
    };

export type EventDecoder = (bytes: Uint8Array | null) => DecodedRecord;

const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'bigint' });
const int64Min = -(2n ** 63n);
const int64Max = 2n ** 63n - 1n;

const microsPerUnit = { epoch_micros: 1, epoch_millis: 1_000, epoch_seconds: 1_000_000 } as const;

const typeName = (value: unknown): string =>
  value === null
    ? 'null'
    : Array.isArray(value)
      ? 'list'
      : value instanceof Uint8Array
        ? 'bytes'
        : typeof value;

/** The record is not an event (dead-letter reason `malformed`). */
const failure = (problem: string): DecodedRecord => ({ ok: false, problem });
/** The event has a value its aggregation cannot take (dead-letter reason `invalid`). */
const invalid = (problem: string): DecodedRecord => ({ ok: false, problem, reason: 'invalid' });

/** The join-key value of `value`, or a string saying why it is not one. */
function keyValue(joinKey: JoinKey, value: unknown): { readonly value: KeyValue } | string {
  if (joinKey.type === 'string')
    return typeof value === 'string' ? { value } : `a string is required, got ${typeName(value)}`;
  let big: bigint | undefined;
  if (typeof value === 'bigint') big = value;
  else if (typeof value === 'number' && Number.isSafeInteger(value)) big = BigInt(value);
  else if (typeof value === 'string' && /^-?\d{1,19}$/.test(value)) big = BigInt(value);
  if (big === undefined || big < int64Min || big > int64Max)
    return `an int64 is required (an integer, or its decimal string), got ${
      typeof value === 'string' ? JSON.stringify(value.slice(0, 40)) : typeName(value)
    }`;
  return { value: big };
}

function eventTimeMicros(
  unit: StreamAggregationDefinition['eventTimeUnit'],
  value: unknown,
): number | string {
  if (unit === 'iso8601') {
    if (typeof value !== 'string') return `an ISO 8601 string is required, got ${typeName(value)}`;
    return parseIsoMicros(value) ?? `${JSON.stringify(value.slice(0, 40))} is not an ISO 8601 time`;
  }
  const factor = microsPerUnit[unit];
  let micros: number;
  if (typeof value === 'number' && Number.isFinite(value)) micros = Math.round(value * factor);
  else if (typeof value === 'bigint') micros = Number(value) * factor;
  else return `a number (${unit}) is required, got ${typeName(value)}`;
  return Number.isSafeInteger(micros) ? micros : `${String(value)} (${unit}) is out of range`;
}

/**
 * The decoder of `definition`, whose produced view has `joinKeys` (in key-field order) and the id
 * `viewId`: the event's key is the online key of the entity (`encodeOnlineKey`), so it names the
 * same entity everywhere.
 */
export function createEventDecoder(
  definition: StreamAggregationDefinition,
  viewId: number,
  joinKeys: readonly JoinKey[],
): EventDecoder {
  const { keyFields, eventTimeField, eventTimeUnit, encoding } = definition;
  // The fields the aggregations read, and whether a numeric result needs a number (`last` yields
  // the view's double feature; count and distinct_count take any scalar).
  const inputs = new Map<string, boolean>();
  for (const aggregation of definition.aggregations) {
    if (aggregation.field === undefined) continue;
    const needsNumber = aggregation.function === 'last';
    inputs.set(aggregation.field, (inputs.get(aggregation.field) ?? false) || needsNumber);
  }
  const parts: KeyValue[] = new Array(keyFields.length);

  function parse(bytes: Uint8Array): unknown {
    if (encoding === 'msgpack') return unpackr.unpack(bytes);
    const text = Buffer.isBuffer(bytes)
      ? bytes.toString('utf8')
      : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
    return JSON.parse(text);
  }

  return (bytes) => {
    if (bytes === null || bytes.byteLength === 0) return failure('the record has no value');
    let record: unknown;
    try {
      record = parse(bytes);
    } catch (error) {
      return failure(`not ${encoding}: ${error instanceof Error ? error.message : String(error)}`);
    }
    if (
      typeof record !== 'object' ||
      record === null ||
      Array.isArray(record) ||
      record instanceof Uint8Array
    )
      return failure(
        `the record must be a ${encoding === 'json' ? 'JSON object' : 'msgpack map'}, got ${typeName(record)}`,
      );
    const fields = record as Record<string, unknown>;
    for (let index = 0; index < keyFields.length; index++) {
      const field = keyFields[index]!;
      const value = Object.hasOwn(fields, field) ? fields[field] : undefined;
      if (value === undefined || value === null) return failure(`key field ${field}: missing`);
      const parsed = keyValue(joinKeys[index]!, value);
      if (typeof parsed === 'string') return failure(`key field ${field}: ${parsed}`);
      parts[index] = parsed.value;
    }
    const rawTime = Object.hasOwn(fields, eventTimeField) ? fields[eventTimeField] : undefined;
    if (rawTime === undefined || rawTime === null)
      return failure(`event time field ${eventTimeField}: missing`);
    const time = eventTimeMicros(eventTimeUnit, rawTime);
    if (typeof time === 'string') return failure(`event time field ${eventTimeField}: ${time}`);
    const values: Record<string, EventValue> = {};
    for (const [field, needsNumber] of inputs) {
      const value = Object.hasOwn(fields, field) ? fields[field] : undefined;
      if (value === undefined || value === null) continue;
      const type = typeof value;
      if (type !== 'number' && type !== 'bigint' && type !== 'string' && type !== 'boolean')
        return invalid(`field ${field}: a scalar is required, got ${typeName(value)}`);
      if (needsNumber && type !== 'number' && type !== 'bigint')
        return invalid(`field ${field}: a number is required (last yields a double feature), got ${type}`);
      values[field] = value as EventValue;
    }
    return { ok: true, event: { key: encodeOnlineKey(viewId, parts), time, fields: values } };
  };
}
