import { FeatureService, type IngestFeaturesRequest } from '../../gen/fstore/v1/feature_service_pb.js';
import type { HistoricalService } from '../serving/historical.js';
import type { IngestMessage, IngestService } from '../serving/ingest.js';
import type { MaterializeService } from '../serving/materialize.js';
import type { OnlineFeatureService } from '../serving/online-features.js';
import { encodeHistoricalResponse, historicalMessages } from './historical-mapping.js';
import { encodeOnlineResponse } from './online-response-encoder.js';
import type { ServiceHandlers } from './server.js';
import { EncodedMessage } from './service-definition.js';
import { columnFromVector, columnsFromVectorMap } from './vectors.js';

/** An ingest stream's protobuf messages as the domain's. */
async function* ingestMessages(
  requests: AsyncIterable<IngestFeaturesRequest>,
): AsyncGenerator<IngestMessage> {
  for await (const request of requests) {
    const message = request.message;
    if (message.case === 'header')
      yield {
        kind: 'header',
        project: message.value.project,
        featureView: message.value.featureView,
        writeOnline: message.value.writeOnline,
      };
    else if (message.case === 'rows')
      yield {
        kind: 'rows',
        rows: {
          entities: columnsFromVectorMap(message.value.entities),
          features: message.value.features.map((feature) => ({
            name: feature.name,
            values: columnFromVector(feature.values),
            nullRows: feature.nullRows,
          })),
          eventTimes: message.value.eventTimestamps,
          createdTimes: message.value.createdTimestamps,
        },
      };
    else if (message.case === 'end') yield { kind: 'end', rowCount: message.value.rowCount };
    else yield { kind: 'empty' };
  }
}

/** FeatureService over the serving core: protobuf in, domain call, protobuf out. */
export function createFeatureServiceHandlers(
  online: OnlineFeatureService,
  ingest: IngestService,
  materialize: MaterializeService,
  historical: HistoricalService,
): ServiceHandlers<typeof FeatureService> {
  return {
    async getOnlineFeatures(request, { signal }) {
      const result = await online.read(
        {
          project: request.project,
          features: request.features,
          featureSet: request.featureSet,
          entities: columnsFromVectorMap(request.entities),
        },
        signal,
      );
      return new EncodedMessage(encodeOnlineResponse(result));
    },

    async writeOnlineFeatures(request, { signal }) {
      const result = await online.write(
        {
          project: request.project,
          featureView: request.featureView,
          entities: columnsFromVectorMap(request.entities),
          features: request.features.map((feature) => ({
            name: feature.name,
            values: columnFromVector(feature.values),
            nullRows: feature.nullRows,
          })),
          eventTimes: request.eventTimestamps,
        },
        signal,
      );
      return { rowsWritten: result.written, rowsStale: result.stale };
    },

    async *materialize(request, { signal }) {
      const runs = materialize.materialize(
        {
          project: request.project,
          featureViews: request.featureViews,
          startMicros: Number(request.startTime),
          endMicros: Number(request.endTime),
          incremental: request.incremental,
        },
        signal,
      );
      for await (const progress of runs)
        yield {
          featureView: progress.featureView,
          startTime: BigInt(progress.startMicros),
          endTime: BigInt(progress.endMicros),
          rowsRead: BigInt(progress.rowsRead),
          rowsWritten: BigInt(progress.rowsWritten),
          rowsStale: BigInt(progress.rowsStale),
          done: progress.done,
        };
    },

    async *getHistoricalFeatures(requests, { signal }) {
      for await (const chunk of historical.retrieve(historicalMessages(requests), signal))
        yield encodeHistoricalResponse(chunk);
    },

    async ingestFeatures(requests, { signal }) {
      const result = await ingest.ingest(ingestMessages(requests), signal);
      return {
        rowsIngested: BigInt(result.rows),
        rowsWrittenOnline: BigInt(result.writtenOnline),
        rowsStaleOnline: BigInt(result.staleOnline),
      };
    },
  };
}

export { FeatureService };
