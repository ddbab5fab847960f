import { open } from 'node:fs/promises';
import {
  type AsyncBuffer,
  type FileMetaData,
  type TimeUnit as ParquetTimeUnit,
  parquetMetadataAsync,
  parquetScan,
  parquetSchema,
  type SchemaElement,
  type SchemaTree,
} from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { invalidArgument } from '../domain/errors.js';
import type { FeatureValue } from '../domain/model.js';
import { cellError, type OpenRowSource, selectColumns, type ViewColumn } from './ingest-source.js';
import {
  assertColumnTypes,
  type FileColumnType,
  listType,
  type TimeUnit,
  timestampType,
  toMicros,
  typedValue,
  unsupportedType,
} from './ingest-typed.js';

/**
 * The Parquet reader of `fstore ingest`, on hyparquet: the footer gives the schema, then the file
 * is read one row group at a time, only the view's columns, so memory holds one row group's worth
 * of those columns whatever the file's size. Every compression codec of the format is read
 * (hyparquet-compressors: zstd and gzip are common besides snappy). Errors name the row (0-based
 * in the file) and the column.
 */

const parquetUnits: Record<ParquetTimeUnit, TimeUnit> = { MILLIS: 'ms', MICROS: 'us', NANOS: 'ns' };

const integerType = (label: string): FileColumnType => ({ kind: 'integer', label });

function integerLabel(element: SchemaElement): string | undefined {
  const logical = element.logical_type;
  if (logical?.type === 'INTEGER') return `${logical.isSigned ? 'int' : 'uint'}${logical.bitWidth}`;
  const converted = /^(U?)INT_(8|16|32|64)$/.exec(element.converted_type ?? '');
  if (converted) return `${converted[1] ? 'uint' : 'int'}${converted[2]}`;
  return undefined;
}

/** An annotated type fstore does not read, named for messages: "decimal(10,2)", "date", "json". */
function annotationLabel(element: SchemaElement): string {
  const logical = element.logical_type;
  if (logical?.type === 'DECIMAL') return `decimal(${logical.precision},${logical.scale})`;
  if (element.converted_type === 'DECIMAL') return `decimal(${element.precision},${element.scale})`;
  return String(logical?.type ?? element.converted_type).toLowerCase();
}

/** The type of a primitive column from its physical type and its annotation, if any. */
function primitiveType(element: SchemaElement): FileColumnType {
  const logical = element.logical_type;
  const annotation = logical?.type ?? element.converted_type;
  switch (element.type) {
    case 'BOOLEAN':
      return { kind: 'bool', label: 'bool' };
    case 'INT32':
    case 'INT64': {
      if (logical?.type === 'TIMESTAMP')
        return timestampType(parquetUnits[logical.unit], logical.isAdjustedToUTC ? 'UTC' : undefined);
      // The legacy annotations mean UTC-adjusted times.
      if (element.converted_type === 'TIMESTAMP_MILLIS') return timestampType('ms', 'UTC');
      if (element.converted_type === 'TIMESTAMP_MICROS') return timestampType('us', 'UTC');
      const label = integerLabel(element);
      if (label) return label === 'uint64' ? unsupportedType(label) : integerType(label);
      if (annotation) return unsupportedType(annotationLabel(element));
      return integerType(element.type === 'INT32' ? 'int32' : 'int64');
    }
    case 'INT96': // the deprecated nanosecond timestamps of older Spark and Impala
      return { kind: 'timestamp', label: 'int96' };
    case 'FLOAT':
      return { kind: 'floating', label: 'float' };
    case 'DOUBLE':
      return { kind: 'floating', label: 'double' };
    case 'BYTE_ARRAY':
      if (annotation === 'STRING' || annotation === 'UTF8') return { kind: 'string', label: 'string' };
      return annotation ? unsupportedType(annotationLabel(element)) : { kind: 'bytes', label: 'binary' };
    case 'FIXED_LEN_BYTE_ARRAY':
      if (annotation === 'FLOAT16') return { kind: 'floating', label: 'float16' };
      return annotation
        ? unsupportedType(annotationLabel(element))
        : { kind: 'bytes', label: `fixed_size_binary[${element.type_length}]` };
    default:
      return unsupportedType(String(element.type).toLowerCase());
  }
}

/** The type of a top-level column; lists in the standard three-level layout or the legacy two-level one. */
function columnType(tree: SchemaTree): FileColumnType {
  const { element, children } = tree;
  if (children.length === 0)
    return element.repetition_type === 'REPEATED' ? listType(primitiveType(element)) : primitiveType(element);
  const annotation = element.logical_type?.type ?? element.converted_type;
  if (annotation !== 'LIST') return unsupportedType(annotation === 'MAP' ? 'map' : 'struct');
  const [repeated] = children;
  if (children.length !== 1 || repeated?.element.repetition_type !== 'REPEATED')
    return unsupportedType('list');
  if (repeated.children.length === 0) return listType(primitiveType(repeated.element));
  const [item] = repeated.children;
  return listType(repeated.children.length === 1 && item ? columnType(item) : unsupportedType('struct'));
}

/** Random access to the file through one descriptor: hyparquet reads the footer, then column chunks. */
async function openFile(file: string): Promise<AsyncBuffer & { close(): Promise<void> }> {
  const handle = await open(file, 'r');
  const { size } = await handle.stat();
  return {
    byteLength: size,
    async slice(start, end = size) {
      const bytes = new Uint8Array(end - start);
      for (let read = 0; read < bytes.length; ) {
        const { bytesRead } = await handle.read(bytes, read, bytes.length - read, start + read);
        if (bytesRead === 0) throw new Error(`${file} ended at byte ${start + read} of ${size}`);
        read += bytesRead;
      }
      return bytes.buffer;
    },
    close: () => handle.close(),
  };
}

// Times arrive as microseconds, exactly; hyparquet's defaults make millisecond Dates.
const timestampsAsMicros = {
  timestampFromMilliseconds: (millis: bigint) => toMicros(millis, 'ms'),
  timestampFromMicroseconds: (micros: bigint) => micros,
  timestampFromNanoseconds: (nanos: bigint) => toMicros(nanos, 'ns'),
};

export const openParquet: OpenRowSource = async (file, viewColumns) => {
  const buffer = await openFile(file);
  let metadata: FileMetaData;
  let columns: ViewColumn[];
  try {
    try {
      metadata = await parquetMetadataAsync(buffer);
    } catch (error) {
      throw invalidArgument(file, `is not a Parquet file (${(error as Error).message})`);
    }
    const schema = parquetSchema(metadata).children;
    const where = `${file} schema`;
    columns = selectColumns(
      viewColumns,
      schema.map((child) => child.element.name),
      where,
    );
    assertColumnTypes(
      columns,
      new Map(schema.map((child) => [child.element.name, columnType(child)])),
      where,
    );
  } catch (error) {
    await buffer.close();
    throw error;
  }

  return {
    columns,
    async *blocks() {
      const scan = await parquetScan({
        file: buffer,
        metadata,
        columns: columns.map((column) => column.name),
        compressors,
        utf8: false, // un-annotated BYTE_ARRAY is binary; strings carry the STRING annotation
        parsers: timestampsAsMicros,
      });
      // One range per row group: with no filter, hyparquet prunes nothing.
      for (const { rowStart, rowEnd } of scan.ranges) {
        const where = (row: number) => `row ${rowStart + row}`;
        const values = new Map<string, FeatureValue[]>();
        for (const column of columns) {
          const data = await scan.readColumn({ column: column.name, rowStart, rowEnd });
          values.set(
            column.name,
            Array.from(data as ArrayLike<unknown>, (value, row) => {
              try {
                return typedValue(column.type, value);
              } catch (error) {
                throw cellError(where(row), column.name, (error as Error).message);
              }
            }),
          );
        }
        yield { rowCount: rowEnd - rowStart, values, where };
      }
    },
    close: () => buffer.close(),
  };
};
