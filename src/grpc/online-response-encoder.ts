import { endianness } from 'node:os';
import { create, type MessageInitShape, toBinary } from '@bufbuild/protobuf';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import type { GetOnlineFeaturesResponseSchema } from '../../gen/fstore/v1/feature_service_pb.js';
import { VectorSchema } from '../../gen/fstore/v1/values_pb.js';
import type { FeatureStatus } from '../domain/feature-status.js';
import type { FeatureValue, ValueType } from '../domain/model.js';
import type { OnlineFeatureColumn, OnlineReadResult } from '../serving/online-features.js';
import { featureStatusToProto, vectorFromValues } from './vectors.js';

/**
 * Writes a GetOnlineFeaturesResponse straight to protobuf bytes. The generic path (create the
 * message, then toBinary) allocates per double value — protobuf-es writes each packed double
 * through a fresh 8-byte chunk — which made a 100 × 50 response cost more CPU than the Redis
 * read behind it. Here numeric columns are copied into one typed array each, statuses are one
 * byte each, and a view's event times are encoded once for all its features. Other value types
 * go through protobuf-es. test/grpc/online-response-encoder.test.ts holds this to byte-for-byte
 * agreement with the generic path.
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

/** A packed repeated field of fixed-width numbers as the bytes of a typed array. */
function packedFixed(values: readonly FeatureValue[], width: 4 | 8): Uint8Array {
  const array = width === 8 ? new Float64Array(values.length) : new Float32Array(values.length);
  for (let index = 0; index < values.length; index++) array[index] = values[index] as number;
  return new Uint8Array(array.buffer);
}

/** Vector { <case> { repeated <scalar> values = 1 } }: the Vector message's bytes. */
function encodeVector(type: ValueType, values: readonly FeatureValue[]): Uint8Array {
  if (littleEndian && (type === 'double' || type === 'float')) {
    const writer = new BinaryWriter();
    writer.tag(type === 'double' ? 2 : 3, WireType.LengthDelimited).fork();
    if (values.length > 0)
      writer.tag(1, WireType.LengthDelimited).bytes(packedFixed(values, type === 'double' ? 8 : 4));
    writer.join();
    return writer.finish();
  }
  return toBinary(VectorSchema, create(VectorSchema, vectorFromValues(type, values)));
}

/** Packed varints of non-negative safe integers; negative ones take the 10-byte int64 form. */
function packedInt64(values: readonly number[]): Uint8Array {
  const bytes = new Uint8Array(values.length * 10);
  let length = 0;
  for (const value of values) {
    if (value < 0) {
      const writer = new BinaryWriter();
      writer.int64(value);
      const encoded = writer.finish();
      bytes.set(encoded, length);
      length += encoded.length;
      continue;
    }
    let rest = value;
    while (rest >= 0x80) {
      bytes[length++] = (rest % 0x80) | 0x80;
      rest = Math.floor(rest / 0x80);
    }
    bytes[length++] = rest;
  }
  return bytes.subarray(0, length);
}

function encodeStatuses(statuses: readonly FeatureStatus[]): Uint8Array {
  const bytes = new Uint8Array(statuses.length);
  for (let index = 0; index < statuses.length; index++)
    bytes[index] = statusBytes[statuses[index] as FeatureStatus];
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

export function encodeOnlineResponse(result: OnlineReadResult): Uint8Array {
  const writer = new BinaryWriter();
  // Columns of one view share their event-time array: encode it once.
  const encodedTimes = new Map<readonly number[], Uint8Array>();
  for (const column of result.columns as readonly OnlineFeatureColumn[]) {
    let times = encodedTimes.get(column.eventTimes);
    if (!times) {
      times = packedInt64(column.eventTimes);
      encodedTimes.set(column.eventTimes, times);
    }
    writer.tag(1, WireType.LengthDelimited).fork();
    if (column.reference) writer.tag(1, WireType.LengthDelimited).string(column.reference);
    writer.tag(2, WireType.LengthDelimited).bytes(encodeVector(column.type, column.values));
    if (column.statuses.length > 0)
      writer.tag(3, WireType.LengthDelimited).bytes(encodeStatuses(column.statuses));
    if (times.length > 0) writer.tag(4, WireType.LengthDelimited).bytes(times);
    writer.join();
  }
  if (result.requestTimeMicros !== 0) writer.tag(2, WireType.Varint).int64(result.requestTimeMicros);
  return writer.finish();
}
