import { endianness } from 'node:os';
import { create, type MessageInitShape, toBinary } from '@bufbuild/protobuf';
import type { GetOnlineFeaturesResponseSchema } from '../../gen/fstore/v1/feature_service_pb.js';
import { VectorSchema } from '../../gen/fstore/v1/values_pb.js';
import type { FeatureStatus } from '../domain/feature-status.js';
import type { FeatureValue, ValueType } from '../domain/model.js';
import type { OnlineReadResult } from '../serving/online-features.js';
import { featureStatusToProto, vectorFromValues } from './vectors.js';

/**
 * Writes a GetOnlineFeaturesResponse straight to protobuf bytes. The generic path (create the
 * message, then toBinary) allocates per double value — protobuf-es writes each packed double
 * through a fresh 8-byte chunk — which made a 100 × 50 response cost more CPU than the Redis
 * read behind it. Here a first pass sizes every field and a second writes them into one buffer:
 * double and float columns value by value, statuses one byte each, a view's event times encoded
 * once for all its features. Other value types go through protobuf-es.
 * test/grpc/online-response-encoder.test.ts holds this to byte-for-byte agreement with the
 * generic path.
 *
 * Field numbers: proto/fstore/v1/feature_service.proto and values.proto.
 */

const littleEndian = endianness() === 'LE';

const statusBytes: Record<FeatureStatus, number> = {
  present: featureStatusToProto('present'),
  not_found: featureStatusToProto('not_found'),
  null_value: featureStatusToProto('null_value'),
  outside_max_age: featureStatusToProto('outside_max_age'),
};

function varintLength(value: number): number {
  let length = 1;
  for (let rest = value; rest >= 0x80; rest = Math.floor(rest / 0x80)) length++;
  return length;
}

/** Writes a varint of a non-negative safe integer; returns the next offset. */
function writeVarint(buffer: Uint8Array, offset: number, value: number): number {
  let rest = value;
  let at = offset;
  while (rest >= 0x80) {
    buffer[at++] = (rest % 0x80) | 0x80;
    rest = Math.floor(rest / 0x80);
  }
  buffer[at++] = rest;
  return at;
}

/** int64 varint bytes of any safe integer (negative ones take ten bytes, as protobuf says). */
function int64Varint(value: number): Uint8Array {
  if (value >= 0) {
    const bytes = new Uint8Array(varintLength(value));
    writeVarint(bytes, 0, value);
    return bytes;
  }
  const bytes = new Uint8Array(10);
  let rest = BigInt.asUintN(64, BigInt(value));
  for (let index = 0; index < 10; index++) {
    bytes[index] = Number(rest & 0x7fn) | (index < 9 ? 0x80 : 0);
    rest >>= 7n;
  }
  return bytes;
}

/** Packed int64 varints of safe integers (event times in microseconds). */
export function packedInt64(values: ArrayLike<number>): Uint8Array {
  const bytes = new Uint8Array(values.length * 10);
  let length = 0;
  for (let index = 0; index < values.length; index++) {
    const value = values[index] as number;
    if (value >= 0) length = writeVarint(bytes, length, value);
    else {
      bytes.set(int64Varint(value), length);
      length += 10;
    }
  }
  return bytes.subarray(0, length);
}

/** Size of a length-delimited field (one-byte tag) holding `length` bytes. */
export const fieldLength = (length: number): number => 1 + varintLength(length) + length;

/**
 * A FeatureColumn to encode. Online reads give plain arrays; historical reads give typed arrays:
 * a Float64Array of values (double and float columns only, zero where not PRESENT), statuses as
 * FeatureStatus numbers, event times as a Float64Array.
 */
export interface EncodableColumn {
  readonly reference: string;
  readonly type: ValueType;
  readonly values: readonly FeatureValue[] | Float64Array;
  readonly statuses: readonly FeatureStatus[] | Uint8Array;
  readonly eventTimes: readonly number[] | Float64Array;
}

interface ColumnPlan {
  readonly column: EncodableColumn;
  readonly nameLength: number;
  /** Fixed-width packed numbers written in place: 8 (double), 4 (float), or 0 (`vector` holds the bytes). */
  readonly width: 0 | 4 | 8;
  readonly vector: Uint8Array | undefined;
  readonly vectorLength: number;
  readonly times: Uint8Array;
  readonly length: number;
}

/** Sizes of a list of FeatureColumn fields; columns sharing an event-time array encode it once. */
function planColumns(columns: readonly EncodableColumn[]): { plans: ColumnPlan[]; total: number } {
  const encodedTimes = new Map<EncodableColumn['eventTimes'], Uint8Array>();
  const plans: ColumnPlan[] = [];
  let total = 0;
  for (const column of columns) {
    let times = encodedTimes.get(column.eventTimes);
    if (!times) {
      times = packedInt64(column.eventTimes);
      encodedTimes.set(column.eventTimes, times);
    }
    const rows = column.values.length;
    const width =
      littleEndian && column.type === 'double' ? 8 : littleEndian && column.type === 'float' ? 4 : 0;
    let vector: Uint8Array | undefined;
    let vectorLength: number;
    if (width > 0) {
      // Vector { <double|float>_values: { values: packed } }
      vectorLength = fieldLength(rows > 0 ? fieldLength(rows * width) : 0);
    } else {
      const values = column.values instanceof Float64Array ? Array.from(column.values) : column.values;
      vector = toBinary(VectorSchema, create(VectorSchema, vectorFromValues(column.type, values)));
      vectorLength = vector.length;
    }
    const nameLength = Buffer.byteLength(column.reference);
    const length =
      (nameLength > 0 ? fieldLength(nameLength) : 0) +
      fieldLength(vectorLength) +
      (column.statuses.length > 0 ? fieldLength(column.statuses.length) : 0) +
      (times.length > 0 ? fieldLength(times.length) : 0);
    plans.push({ column, nameLength, width: width as 0 | 4 | 8, vector, vectorLength, times, length });
    total += fieldLength(length);
  }
  return { plans, total };
}

/** Writes planned FeatureColumns as fields with the one-byte `tag`; returns the next offset. */
function writeColumns(buffer: Buffer, offset: number, plans: readonly ColumnPlan[], tag: number): number {
  let at = offset;
  for (const { column, nameLength, width, vector, vectorLength, times, length } of plans) {
    buffer[at++] = tag;
    at = writeVarint(buffer, at, length);
    if (nameLength > 0) {
      buffer[at++] = 0x0a; // FeatureColumn.name = 1
      at = writeVarint(buffer, at, nameLength);
      at += buffer.write(column.reference, at, 'utf8');
    }
    buffer[at++] = 0x12; // FeatureColumn.values = 2
    at = writeVarint(buffer, at, vectorLength);
    if (vector) {
      buffer.set(vector, at);
      at += vector.length;
    } else {
      const rows = column.values.length;
      buffer[at++] = width === 8 ? 0x12 : 0x1a; // Vector.double_values = 2 / float_values = 3
      at = writeVarint(buffer, at, rows > 0 ? fieldLength(rows * width) : 0);
      if (rows > 0) {
        buffer[at++] = 0x0a; // DoubleArray.values / FloatArray.values = 1, packed
        at = writeVarint(buffer, at, rows * width);
        const values = column.values;
        if (width === 8 && values instanceof Float64Array) {
          // Little-endian doubles already: the bytes as they are.
          buffer.set(new Uint8Array(values.buffer, values.byteOffset, rows * 8), at);
          at += rows * 8;
        } else if (width === 8)
          for (let row = 0; row < rows; row++) at = buffer.writeDoubleLE(values[row] as number, at);
        else for (let row = 0; row < rows; row++) at = buffer.writeFloatLE(values[row] as number, at);
      }
    }
    const { statuses } = column;
    if (statuses.length > 0) {
      buffer[at++] = 0x1a; // FeatureColumn.statuses = 3, packed; every status fits one byte
      at = writeVarint(buffer, at, statuses.length);
      if (statuses instanceof Uint8Array) {
        buffer.set(statuses, at);
        at += statuses.length;
      } else for (const status of statuses) buffer[at++] = statusBytes[status];
    }
    if (times.length > 0) {
      buffer[at++] = 0x22; // FeatureColumn.event_timestamps = 4, packed
      at = writeVarint(buffer, at, times.length);
      buffer.set(times, at);
      at += times.length;
    }
  }
  return at;
}

/**
 * `fields` (already encoded, in field-number order) followed by `columns` as the repeated
 * FeatureColumn field with the one-byte `tag`, in one buffer.
 */
export function encodeWithFeatureColumns(
  before: readonly Uint8Array[],
  columns: readonly EncodableColumn[],
  tag: number,
  after: readonly Uint8Array[] = [],
): Uint8Array {
  const { plans, total } = planColumns(columns);
  const parts = (list: readonly Uint8Array[]) => list.reduce((sum, part) => sum + part.length, 0);
  const buffer = Buffer.allocUnsafe(parts(before) + total + parts(after));
  let at = 0;
  for (const part of before) {
    buffer.set(part, at);
    at += part.length;
  }
  at = writeColumns(buffer, at, plans, tag);
  for (const part of after) {
    buffer.set(part, at);
    at += part.length;
  }
  return buffer;
}

export function encodeOnlineResponse(result: OnlineReadResult): Uint8Array {
  const requestTime = result.requestTimeMicros !== 0 ? int64Varint(result.requestTimeMicros) : undefined;
  // GetOnlineFeaturesResponse.features = 1, then request_time = 2.
  return encodeWithFeatureColumns(
    [],
    result.columns,
    0x0a,
    requestTime ? [Uint8Array.of(0x10), requestTime] : [],
  );
}

/** Varint-encoded field with a one-byte tag holding a length-delimited payload. */
export function lengthDelimited(tag: number, payload: Uint8Array): Uint8Array {
  const bytes = new Uint8Array(fieldLength(payload.length));
  bytes[0] = tag;
  const at = writeVarint(bytes, 1, payload.length);
  bytes.set(payload, at);
  return bytes;
}

/** The same response as a message init for protobuf-es: the reference the fast path must equal. */
export function onlineResponseInit(
  result: OnlineReadResult,
): MessageInitShape<typeof GetOnlineFeaturesResponseSchema> {
  return {
    requestTime: BigInt(result.requestTimeMicros),
    features: result.columns.map((column) => ({
      name: column.reference,
      values: vectorFromValues(column.type, column.values),
      statuses: column.statuses.map(featureStatusToProto),
      eventTimestamps: column.eventTimes.map((micros) => BigInt(micros)),
    })),
  };
}
