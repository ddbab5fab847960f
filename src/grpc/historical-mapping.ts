import { create, type MessageInitShape, toBinary } from '@bufbuild/protobuf';
import {
  type GetHistoricalFeaturesRequest,
  GetHistoricalFeaturesResponseSchema,
} from '../../gen/fstore/v1/feature_service_pb.js';
import type { HistoricalChunk, HistoricalMessage } from '../serving/historical.js';
import { encodeWithFeatureColumns, lengthDelimited, packedInt64 } from './online-response-encoder.js';
import { EncodedMessage } from './service-definition.js';
import { columnsFromVectorMap, vectorFromColumn, vectorFromValues } from './vectors.js';

/** A GetHistoricalFeatures request stream as the domain's messages. */
export async function* historicalMessages(
  requests: AsyncIterable<GetHistoricalFeaturesRequest>,
): AsyncGenerator<HistoricalMessage> {
  for await (const request of requests) {
    const message = request.message;
    if (message.case === 'query') {
      const { range } = message.value;
      yield {
        kind: 'query',
        project: message.value.project,
        features: message.value.features,
        featureSet: message.value.featureSet,
        range: range ? { startMicros: Number(range.startTime), endMicros: Number(range.endTime) } : undefined,
        chunkRows: message.value.chunkRows,
      };
    } else if (message.case === 'rows')
      yield {
        kind: 'rows',
        entities: columnsFromVectorMap(message.value.entities),
        timestamps: message.value.timestamps,
        carry: columnsFromVectorMap(message.value.carry),
      };
    else if (message.case === 'end') yield { kind: 'end', rowCount: message.value.rowCount };
    else yield { kind: 'empty' };
  }
}

const toBigInts = (micros: Float64Array): bigint[] => Array.from(micros, (value) => BigInt(value));

/**
 * A response chunk straight to bytes: keys and carried columns through protobuf-es, label times
 * and feature columns by the hand-written encoder of online responses (values memcpy'd from the
 * Float64Arrays of double columns, times without BigInts). Byte-equal to
 * `toBinary(create(schema, historicalResponse(chunk)))` (test/grpc/historical-encoder.test.ts).
 */
export function encodeHistoricalResponse(chunk: HistoricalChunk): EncodedMessage {
  const head = toBinary(
    GetHistoricalFeaturesResponseSchema,
    create(GetHistoricalFeaturesResponseSchema, {
      firstRow: BigInt(chunk.firstRow),
      entities: Object.fromEntries(
        chunk.keys.map((key) => [key.name, vectorFromValues(key.type, key.values)]),
      ),
    }),
  );
  // GetHistoricalFeaturesResponse.timestamps = 3, packed.
  const timestamps =
    chunk.timestamps.length > 0 ? [lengthDelimited(0x1a, packedInt64(chunk.timestamps))] : [];
  const carry = toBinary(
    GetHistoricalFeaturesResponseSchema,
    create(GetHistoricalFeaturesResponseSchema, {
      carry: Object.fromEntries([...chunk.carry].map(([name, column]) => [name, vectorFromColumn(column)])),
    }),
  );
  // features = 5.
  return new EncodedMessage(encodeWithFeatureColumns([head, ...timestamps, carry], chunk.features, 0x2a));
}

/** The same response as a message init for protobuf-es: the reference the encoder must equal. */
export function historicalResponse(
  chunk: HistoricalChunk,
): MessageInitShape<typeof GetHistoricalFeaturesResponseSchema> {
  return {
    firstRow: BigInt(chunk.firstRow),
    entities: Object.fromEntries(chunk.keys.map((key) => [key.name, vectorFromValues(key.type, key.values)])),
    timestamps: toBigInts(chunk.timestamps),
    carry: Object.fromEntries([...chunk.carry].map(([name, column]) => [name, vectorFromColumn(column)])),
    features: chunk.features.map((feature) => ({
      name: feature.reference,
      values: vectorFromValues(
        feature.type,
        feature.values instanceof Float64Array ? Array.from(feature.values) : feature.values,
      ),
      statuses: Array.from(feature.statuses),
      eventTimestamps: toBigInts(feature.eventTimes),
    })),
  };
}
