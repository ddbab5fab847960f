import type { MessageInitShape } from '@bufbuild/protobuf';
import type { IngestFeaturesRequestSchema } from '../gen/fstore/v1/feature_service_pb.js';

/** Synthetic IngestFeatures streams for the offline benchmarks: an int64 key, random doubles. */

type Request = MessageInitShape<typeof IngestFeaturesRequestSchema>;

export interface SyntheticRows {
  readonly project: string;
  readonly view: string;
  readonly keyName: string;
  readonly features: readonly string[];
  readonly rows: number;
  /** Row r belongs to entity r % entities. */
  readonly entities: number;
  readonly chunkRows: number;
  /** Event time of row r, microseconds since the epoch. */
  readonly eventTime: (row: number) => number;
}

export function* syntheticIngest(spec: SyntheticRows): Generator<Request> {
  yield { message: { case: 'header', value: { project: spec.project, featureView: spec.view } } };
  for (let first = 0; first < spec.rows; first += spec.chunkRows) {
    const count = Math.min(spec.chunkRows, spec.rows - first);
    const keys = new Array<bigint>(count);
    const times = new Array<bigint>(count);
    for (let row = 0; row < count; row++) {
      keys[row] = BigInt((first + row) % spec.entities);
      times[row] = BigInt(spec.eventTime(first + row));
    }
    yield {
      message: {
        case: 'rows',
        value: {
          entities: { [spec.keyName]: { values: { case: 'int64Values', value: { values: keys } } } },
          eventTimestamps: times,
          features: spec.features.map((name) => ({
            name,
            values: {
              values: { case: 'doubleValues', value: { values: Array.from({ length: count }, Math.random) } },
            },
          })),
        },
      },
    };
  }
  yield { message: { case: 'end', value: { rowCount: BigInt(spec.rows) } } };
}
