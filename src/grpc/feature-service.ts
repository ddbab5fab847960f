import { FeatureService } from '../../gen/fstore/v1/feature_service_pb.js';
import type { OnlineFeatureService } from '../serving/online-features.js';
import { encodeOnlineResponse } from './online-response-encoder.js';
import type { UnaryHandlers } from './server.js';
import { EncodedMessage } from './service-definition.js';
import { columnFromVector, columnsFromVectorMap } from './vectors.js';

/** FeatureService over the online serving core: protobuf in, domain call, protobuf out. */
export function createFeatureServiceHandlers(
  online: OnlineFeatureService,
): UnaryHandlers<typeof FeatureService> {
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
  };
}

export { FeatureService };
