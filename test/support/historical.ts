import type { MessageInitShape } from '@bufbuild/protobuf';
import type {
  FeatureService,
  GetHistoricalFeaturesRequestSchema,
  GetHistoricalFeaturesResponse,
  IngestFeaturesRequestSchema,
} from '../../gen/fstore/v1/feature_service_pb.js';
import type { Vector, VectorSchema } from '../../gen/fstore/v1/values_pb.js';
import type { CallOptions, ServiceClient } from '../../src/grpc/client.js';
import { valuesOf } from './fixtures.js';

export type HistoricalRequest = MessageInitShape<typeof GetHistoricalFeaturesRequestSchema>;
type VectorInit = MessageInitShape<typeof VectorSchema>;

/** The whole result of a retrieval, concatenated from its chunks (checked to be contiguous). */
export interface HistoricalResult {
  readonly chunks: GetHistoricalFeaturesResponse[];
  readonly keys: Record<string, unknown[]>;
  readonly timestamps: bigint[];
  readonly carry: Record<string, unknown[]>;
  /** reference → values, statuses, event times. */
  readonly features: Record<string, { values: unknown[]; statuses: number[]; eventTimes: bigint[] }>;
}

/** The plain values of a scalar vector. */
const vectorValues = (vector: Vector): unknown[] | undefined =>
  (vector.values.value as { values?: unknown[] } | undefined)?.values;

function appendTo(columns: Record<string, unknown[]>, name: string, values: unknown[] | undefined): void {
  const column = columns[name] ?? [];
  column.push(...(values ?? []));
  columns[name] = column;
}

export function collectHistorical(chunks: GetHistoricalFeaturesResponse[]): HistoricalResult {
  const keys: Record<string, unknown[]> = {};
  const carry: Record<string, unknown[]> = {};
  const timestamps: bigint[] = [];
  const features: HistoricalResult['features'] = {};
  let next = 0n;
  for (const chunk of chunks) {
    if (chunk.firstRow !== next) throw new Error(`chunk starts at row ${chunk.firstRow}, expected ${next}`);
    next += BigInt(chunk.timestamps.length);
    timestamps.push(...chunk.timestamps);
    for (const [name, vector] of Object.entries(chunk.entities)) appendTo(keys, name, vectorValues(vector));
    for (const [name, vector] of Object.entries(chunk.carry)) appendTo(carry, name, vectorValues(vector));
    for (const column of chunk.features) {
      const target = features[column.name] ?? { values: [], statuses: [], eventTimes: [] };
      features[column.name] = target;
      const listRows =
        column.values?.values.case === 'listValues' ? column.values.values.value.rows : undefined;
      target.values.push(
        ...(listRows ? listRows.map((row) => vectorValues(row) ?? []) : (valuesOf(column) ?? [])),
      );
      target.statuses.push(...column.statuses);
      target.eventTimes.push(...column.eventTimestamps);
    }
  }
  return { chunks, keys, timestamps, carry, features };
}

export async function retrieveHistorical(
  client: ServiceClient<typeof FeatureService>,
  requests: HistoricalRequest[] | AsyncIterable<HistoricalRequest>,
  options?: CallOptions,
): Promise<HistoricalResult> {
  const chunks: GetHistoricalFeaturesResponse[] = [];
  for await (const chunk of client.getHistoricalFeatures(requests, options)) chunks.push(chunk);
  return collectHistorical(chunks);
}

/** query, one chunk per element of `chunks`, end with the right row count. */
export function historicalRequests(
  query: MessageInitShape<typeof GetHistoricalFeaturesRequestSchema>['message'] extends infer M
    ? M extends { case: 'query'; value: infer Q }
      ? Q
      : never
    : never,
  chunks: {
    entities: Record<string, VectorInit>;
    timestamps: bigint[];
    carry?: Record<string, VectorInit>;
  }[],
): HistoricalRequest[] {
  const rowCount = chunks.reduce((sum, chunk) => sum + chunk.timestamps.length, 0);
  return [
    { message: { case: 'query', value: query } },
    ...chunks.map((chunk): HistoricalRequest => ({ message: { case: 'rows', value: chunk } })),
    { message: { case: 'end', value: { rowCount: BigInt(rowCount) } } },
  ];
}

type IngestRequest = MessageInitShape<typeof IngestFeaturesRequestSchema>;

/** An ingest stream of one chunk. */
export function ingestRequests(
  project: string,
  featureView: string,
  chunk: Extract<IngestRequest['message'], { case: 'rows' }>['value'],
  rowCount: number,
): IngestRequest[] {
  return [
    { message: { case: 'header', value: { project, featureView } } },
    { message: { case: 'rows', value: chunk } },
    { message: { case: 'end', value: { rowCount: BigInt(rowCount) } } },
  ];
}
