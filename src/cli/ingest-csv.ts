import { createReadStream } from 'node:fs';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { parse } from 'csv-parse';
import type { FeatureService, IngestFeaturesRequestSchema } from '../../gen/fstore/v1/feature_service_pb.js';
import type { RegistryService } from '../../gen/fstore/v1/registry_pb.js';
import { ValueType, type VectorSchema } from '../../gen/fstore/v1/values_pb.js';
import { listElementType, zeroValue } from '../domain/columns.js';
import { FStoreError, invalidArgument } from '../domain/errors.js';
import type { ValueType as DomainValueType, FeatureValue, ScalarValue } from '../domain/model.js';
import type { ServiceClient } from '../grpc/client.js';
import { valueTypeFromProto, vectorFromValues } from '../grpc/vectors.js';

/**
 * `fstore ingest --file rows.csv`: reads a CSV file as a stream and sends it to IngestFeatures in
 * chunks. The header row names the columns: every join key of the view, `event_timestamp`
 * (ISO 8601 or integer microseconds since the epoch), optionally `created_timestamp`, and every
 * feature. An empty cell is null. Lists are JSON arrays; bytes are base64. Parse errors name the
 * file's line and column; nothing is stored unless the whole file is.
 */

type Request = MessageInitShape<typeof IngestFeaturesRequestSchema>;

interface CsvColumn {
  readonly name: string;
  readonly type: DomainValueType;
  readonly role: 'key' | 'event_time' | 'created_time' | 'feature';
}

const isoPattern = /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))?(Z|[+-]\d{2}:?\d{2})?$/;

/** Microseconds since the epoch from integer micros or ISO 8601 (fraction kept to the microsecond). */
export function parseTimestampMicros(text: string): number {
  if (/^-?\d+$/.test(text)) {
    const micros = Number(text);
    if (!Number.isSafeInteger(micros)) throw new Error('is outside the representable range');
    return micros;
  }
  const match = isoPattern.exec(text);
  if (!match) throw new Error('is not integer microseconds or an ISO 8601 time');
  const [, date, time, fraction = '', zone = 'Z'] = match;
  const millis = Date.parse(`${date}T${time}${zone === 'Z' ? 'Z' : zone}`);
  if (Number.isNaN(millis)) throw new Error('is not a valid time');
  return millis * 1000 + Number(fraction.padEnd(6, '0'));
}

function parseScalar(type: DomainValueType, text: string): ScalarValue {
  switch (type) {
    case 'int64':
      if (!/^-?\d+$/.test(text)) throw new Error('is not an integer');
      return BigInt(text);
    case 'double':
    case 'float': {
      const value = Number(text);
      if (text.trim() === '' || (Number.isNaN(value) && text !== 'NaN')) throw new Error('is not a number');
      return value;
    }
    case 'bool':
      if (/^(true|1)$/i.test(text)) return true;
      if (/^(false|0)$/i.test(text)) return false;
      throw new Error('is not true/false/1/0');
    case 'bytes':
      return Buffer.from(text, 'base64');
    case 'timestamp':
      return parseTimestampMicros(text);
    default:
      return text;
  }
}

function parseValue(type: DomainValueType, text: string): FeatureValue {
  const element = listElementType(type);
  if (!element) return parseScalar(type, text);
  const items: unknown = JSON.parse(text);
  if (!Array.isArray(items)) throw new Error('is not a JSON array');
  return items.map((item) => parseScalar(element, typeof item === 'string' ? item : JSON.stringify(item)));
}

export interface CsvIngestOptions {
  readonly project: string;
  readonly featureView: string;
  readonly file: string;
  readonly chunkRows: number;
}

/** Columns the CSV must hold for the view's current version, from the registry. */
async function columnsOf(registry: ServiceClient<typeof RegistryService>, project: string, name: string) {
  const { featureView } = await registry.getFeatureView({ project, name });
  if (!featureView) throw new FStoreError('not_found', `feature view "${name}" not found`);
  const columns: CsvColumn[] = [];
  for (const entityName of featureView.entities) {
    const { entity } = await registry.getEntity({ project, name: entityName });
    for (const key of entity?.joinKeys ?? [])
      columns.push({ name: key.name, type: key.type === ValueType.INT64 ? 'int64' : 'string', role: 'key' });
  }
  columns.push({ name: 'event_timestamp', type: 'timestamp', role: 'event_time' });
  for (const feature of featureView.features)
    columns.push({ name: feature.name, type: valueTypeFromProto(feature.type) ?? 'string', role: 'feature' });
  return columns;
}

export async function ingestCsv(
  clients: {
    registry: ServiceClient<typeof RegistryService>;
    features: ServiceClient<typeof FeatureService>;
  },
  options: CsvIngestOptions,
): Promise<{ rows: bigint }> {
  const columns = await columnsOf(clients.registry, options.project, options.featureView);
  const parser = createReadStream(options.file).pipe(
    parse({ columns: true, skip_empty_lines: true, bom: true }),
  );
  let rowsSent = 0;

  async function* requests(): AsyncGenerator<Request> {
    yield {
      message: { case: 'header', value: { project: options.project, featureView: options.featureView } },
    };
    let pending: Record<string, string>[] = [];
    let firstLine = 2; // line 1 is the header
    const flush = (): Request => {
      const cells = (column: CsvColumn, row: number) =>
        (pending[row] as Record<string, string>)[column.name] ?? '';
      const parsed = (column: CsvColumn) => {
        const nullRows: number[] = [];
        const values = pending.map((_, row) => {
          const text = cells(column, row);
          if (text === '') {
            if (column.role !== 'feature')
              throw invalidArgument(`line ${firstLine + row}, column "${column.name}"`, 'is empty');
            nullRows.push(row);
            return null;
          }
          try {
            return parseValue(column.type, text);
          } catch (error) {
            throw invalidArgument(
              `line ${firstLine + row}, column "${column.name}"`,
              `"${text}" ${(error as Error).message}`,
            );
          }
        });
        return { values, nullRows };
      };
      const entities: Record<string, MessageInitShape<typeof VectorSchema>> = {};
      const features: { name: string; values: ReturnType<typeof vectorFromValues>; nullRows: number[] }[] =
        [];
      let eventTimestamps: bigint[] = [];
      let createdTimestamps: bigint[] = [];
      for (const column of columns) {
        const { values, nullRows } = parsed(column);
        if (column.role === 'key') entities[column.name] = vectorFromValues(column.type, values);
        else if (column.role === 'event_time')
          eventTimestamps = values.map((micros) => BigInt(micros as number));
        else {
          const type = column.type;
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
      if (pending[0] && 'created_timestamp' in pending[0]) {
        const created = parsed({ name: 'created_timestamp', type: 'timestamp', role: 'created_time' });
        createdTimestamps = created.values.map((micros) => BigInt(micros as number));
      }
      const chunk: Request = {
        message: { case: 'rows', value: { entities, features, eventTimestamps, createdTimestamps } },
      };
      rowsSent += pending.length;
      firstLine += pending.length;
      pending = [];
      return chunk;
    };
    for await (const record of parser as AsyncIterable<Record<string, string>>) {
      if (rowsSent === 0 && pending.length === 0) {
        const missing = columns.filter((column) => !(column.name in record)).map((column) => column.name);
        if (missing.length > 0)
          throw invalidArgument(`${options.file} header`, `missing columns: ${missing.join(', ')}`);
      }
      pending.push(record);
      if (pending.length >= options.chunkRows) yield flush();
    }
    if (pending.length > 0) yield flush();
    yield { message: { case: 'end', value: { rowCount: BigInt(rowsSent) } } };
  }

  const response = await clients.features.ingestFeatures(requests());
  return { rows: response.rowsIngested };
}
