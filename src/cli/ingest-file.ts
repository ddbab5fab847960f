import { extname } from 'node:path';
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { FeatureService, IngestFeaturesRequestSchema } from '../../gen/fstore/v1/feature_service_pb.js';
import type { RegistryService } from '../../gen/fstore/v1/registry_pb.js';
import { ValueType, type VectorSchema } from '../../gen/fstore/v1/values_pb.js';
import { zeroValue } from '../domain/columns.js';
import { FStoreError, invalidArgument } from '../domain/errors.js';
import type { FeatureValue } from '../domain/model.js';
import type { ServiceClient } from '../grpc/client.js';
import { valueTypeFromProto, vectorFromValues } from '../grpc/vectors.js';
import {
  cellError,
  type OpenRowSource,
  type RowBlock,
  type RowSource,
  type ViewColumn,
} from './ingest-source.js';

/**
 * `fstore ingest --file F`: reads a CSV, Parquet or Arrow IPC file as a stream and sends its rows
 * to IngestFeatures in chunks. The file's columns are named after the view's: every join key,
 * `event_timestamp`, optionally `created_timestamp`, and every feature (other columns are
 * ignored). A reader per format turns the file into blocks of typed rows; this module checks
 * what all formats share, cuts the rows into chunks and streams them. The server stores nothing
 * unless the whole file arrives, so a bad value anywhere fails the call with nothing stored.
 */

type Request = MessageInitShape<typeof IngestFeaturesRequestSchema>;

export const fileFormats = ['csv', 'parquet', 'arrow'] as const;
export type FileFormat = (typeof fileFormats)[number];

const formatByExtension: Readonly<Record<string, FileFormat>> = {
  '.csv': 'csv',
  '.parquet': 'parquet',
  '.pq': 'parquet',
  '.arrow': 'arrow',
  '.feather': 'arrow', // Feather v2 is the Arrow IPC file format
  '.ipc': 'arrow',
  '.arrows': 'arrow', // the Arrow IPC stream format
};

// Loaded when used: importing apache-arrow alone takes a quarter of a second, at every CLI start.
const readers: Readonly<Record<FileFormat, () => Promise<OpenRowSource>>> = {
  csv: async () => (await import('./ingest-csv.js')).openCsv,
  parquet: async () => (await import('./ingest-parquet.js')).openParquet,
  arrow: async () => (await import('./ingest-arrow.js')).openArrow,
};

/** The format of a file by its extension; fails for an extension it does not know. */
export function fileFormatOf(file: string): FileFormat {
  const format = formatByExtension[extname(file).toLowerCase()];
  if (!format)
    throw invalidArgument(
      file,
      `cannot tell the format from the extension (known: ${Object.keys(formatByExtension).join(' ')}); pass --format ${fileFormats.join('|')}`,
    );
  return format;
}

export interface FileIngestOptions {
  readonly project: string;
  readonly featureView: string;
  readonly file: string;
  /** Default: from the file's extension. */
  readonly format?: FileFormat;
  /** Rows per streamed chunk, at most the server's maximum batch rows. */
  readonly chunkRows: number;
  /** Also write the latest row per entity online once the rows are committed. */
  readonly writeOnline?: boolean;
}

export interface IngestClients {
  readonly registry: ServiceClient<typeof RegistryService>;
  readonly features: ServiceClient<typeof FeatureService>;
}

/** The columns a file must carry for the view's current version, from the registry. */
async function viewColumns(
  registry: ServiceClient<typeof RegistryService>,
  project: string,
  name: string,
): Promise<ViewColumn[]> {
  const { featureView } = await registry.getFeatureView({ project, name });
  if (!featureView) throw new FStoreError('not_found', `feature view "${name}" not found`);
  const columns: ViewColumn[] = [];
  for (const entityName of featureView.entities) {
    const { entity } = await registry.getEntity({ project, name: entityName });
    for (const key of entity?.joinKeys ?? [])
      columns.push({ name: key.name, type: key.type === ValueType.INT64 ? 'int64' : 'string', role: 'key' });
  }
  columns.push({ name: 'event_timestamp', type: 'timestamp', role: 'event_time' });
  columns.push({ name: 'created_timestamp', type: 'timestamp', role: 'created_time' });
  for (const feature of featureView.features)
    columns.push({ name: feature.name, type: valueTypeFromProto(feature.type) ?? 'string', role: 'feature' });
  return columns;
}

/** Join keys and times have no nulls; features may. */
function assertRequiredValues(block: RowBlock, columns: readonly ViewColumn[]): void {
  for (const column of columns) {
    if (column.role === 'feature') continue;
    const row = block.values.get(column.name)?.indexOf(null) ?? -1;
    if (row >= 0) throw cellError(block.where(row), column.name, 'is null');
  }
}

/** Rows gathered for the next chunk, column by column. */
class PendingChunk {
  rowCount = 0;
  private readonly values = new Map<string, FeatureValue[]>();

  constructor(private readonly columns: readonly ViewColumn[]) {
    for (const column of columns) this.values.set(column.name, []);
  }

  /** Appends rows [start, end) of a block. */
  append(block: RowBlock, start: number, end: number): void {
    for (const column of this.columns) {
      const target = this.values.get(column.name) as FeatureValue[];
      const source = block.values.get(column.name) as readonly FeatureValue[];
      for (let row = start; row < end; row++) target.push(source[row] ?? null);
    }
    this.rowCount += end - start;
  }

  toRequest(): Request {
    const entities: Record<string, MessageInitShape<typeof VectorSchema>> = {};
    const features: { name: string; values: ReturnType<typeof vectorFromValues>; nullRows: number[] }[] = [];
    let eventTimestamps: bigint[] = [];
    let createdTimestamps: bigint[] = [];
    for (const column of this.columns) {
      const values = this.values.get(column.name) as FeatureValue[];
      const { type } = column;
      switch (column.role) {
        case 'key':
          entities[column.name] = vectorFromValues(type, values);
          break;
        case 'event_time':
          eventTimestamps = values.map((micros) => BigInt(micros as number));
          break;
        case 'created_time':
          createdTimestamps = values.map((micros) => BigInt(micros as number));
          break;
        case 'feature': {
          const nullRows: number[] = [];
          for (const [row, value] of values.entries()) if (value === null) nullRows.push(row);
          features.push({
            name: column.name,
            values: vectorFromValues(
              type,
              values.map((value) => value ?? zeroValue(type)),
            ),
            nullRows,
          });
        }
      }
    }
    return { message: { case: 'rows', value: { entities, features, eventTimestamps, createdTimestamps } } };
  }
}

async function* ingestRequests(source: RowSource, options: FileIngestOptions): AsyncGenerator<Request> {
  yield {
    message: {
      case: 'header',
      value: {
        project: options.project,
        featureView: options.featureView,
        writeOnline: options.writeOnline ?? false,
      },
    },
  };
  let rowsSent = 0;
  let pending = new PendingChunk(source.columns);
  for await (const block of source.blocks()) {
    assertRequiredValues(block, source.columns);
    for (let start = 0; start < block.rowCount; ) {
      const end = Math.min(block.rowCount, start + options.chunkRows - pending.rowCount);
      pending.append(block, start, end);
      start = end;
      if (pending.rowCount === options.chunkRows) {
        yield pending.toRequest();
        rowsSent += pending.rowCount;
        pending = new PendingChunk(source.columns);
      }
    }
  }
  if (pending.rowCount > 0) {
    yield pending.toRequest();
    rowsSent += pending.rowCount;
  }
  yield { message: { case: 'end', value: { rowCount: BigInt(rowsSent) } } };
}

/** Streams every row of the file into the view's offline store: all rows or, on any error, none. */
export async function ingestFile(
  clients: IngestClients,
  options: FileIngestOptions,
): Promise<{ rows: bigint; writtenOnline: bigint; staleOnline: bigint }> {
  const open = await readers[options.format ?? fileFormatOf(options.file)]();
  const columns = await viewColumns(clients.registry, options.project, options.featureView);
  const source = await open(options.file, columns);
  try {
    const response = await clients.features.ingestFeatures(ingestRequests(source, options));
    return {
      rows: response.rowsIngested,
      writtenOnline: response.rowsWrittenOnline,
      staleOnline: response.rowsStaleOnline,
    };
  } finally {
    await source.close();
  }
}
