import type { MessageInitShape } from '@bufbuild/protobuf';
import type {
  GetHistoricalFeaturesRequest,
  GetHistoricalFeaturesResponseSchema,
} from '../../gen/fstore/v1/feature_service_pb.js';
import type { HistoricalChunk, HistoricalMessage } from '../serving/historical.js';
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
      values: vectorFromValues(feature.type, feature.values),
      statuses: Array.from(feature.statuses),
      eventTimestamps: toBigInts(feature.eventTimes),
    })),
  };
}
