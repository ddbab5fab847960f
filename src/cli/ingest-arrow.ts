import { open } from 'node:fs/promises';
import {
  TimeUnit as ArrowTimeUnit,
  type AsyncRecordBatchFileReader,
  type AsyncRecordBatchStreamReader,
  DataType,
  Precision,
  type RecordBatch,
  RecordBatchReader,
  type Vector,
} from 'apache-arrow';
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
 * The Arrow IPC reader of `fstore ingest`, on apache-arrow: the file format (.arrow, Feather v2)
 * and the stream format (.arrows) alike, one record batch at a time through a file handle, so
 * memory holds one batch whatever the file's size. Errors name the row (0-based in the file) and
 * the column.
 */

const arrowUnits: Record<ArrowTimeUnit, TimeUnit> = {
  [ArrowTimeUnit.SECOND]: 's',
  [ArrowTimeUnit.MILLISECOND]: 'ms',
  [ArrowTimeUnit.MICROSECOND]: 'us',
  [ArrowTimeUnit.NANOSECOND]: 'ns',
};

const floatLabels: Record<Precision, string> = {
  [Precision.HALF]: 'float16',
  [Precision.SINGLE]: 'float',
  [Precision.DOUBLE]: 'double',
};

type AsyncRecordBatchReaders = AsyncRecordBatchFileReader | AsyncRecordBatchStreamReader;

function columnType(type: DataType): FileColumnType {
  if (DataType.isInt(type)) {
    const label = `${type.isSigned ? 'int' : 'uint'}${type.bitWidth}`;
    return label === 'uint64' ? unsupportedType(label) : { kind: 'integer', label };
  }
  if (DataType.isFloat(type)) return { kind: 'floating', label: floatLabels[type.precision] };
  if (DataType.isUtf8(type)) return { kind: 'string', label: 'string' };
  if (DataType.isLargeUtf8(type)) return { kind: 'string', label: 'large_string' };
  if (DataType.isUtf8View(type)) return { kind: 'string', label: 'string_view' };
  if (DataType.isBool(type)) return { kind: 'bool', label: 'bool' };
  if (DataType.isBinary(type)) return { kind: 'bytes', label: 'binary' };
  if (DataType.isLargeBinary(type)) return { kind: 'bytes', label: 'large_binary' };
  if (DataType.isBinaryView(type)) return { kind: 'bytes', label: 'binary_view' };
  if (DataType.isFixedSizeBinary(type))
    return { kind: 'bytes', label: `fixed_size_binary[${type.byteWidth}]` };
  if (DataType.isTimestamp(type)) return timestampType(arrowUnits[type.unit], type.timezone ?? undefined);
  if (DataType.isList(type) || DataType.isLargeList(type) || DataType.isFixedSizeList(type)) {
    const [item] = type.children;
    return listType(item ? columnType(item.type) : unsupportedType('null'));
  }
  if (DataType.isDictionary(type)) {
    const values = columnType(type.dictionary);
    const label = `dictionary<${values.label}>`;
    // Timestamps are read from their raw buffer (Vector.get rounds them to milliseconds).
    return values.kind === 'timestamp' ? unsupportedType(label) : { ...values, label };
  }
  return unsupportedType(String(type).toLowerCase());
}

/** Reads the normalised value (see ingest-typed.ts) of a row of a batch's column. */
type ReadValue = (vector: Vector, row: number) => unknown;

function valueReader(type: DataType): ReadValue {
  if (DataType.isTimestamp(type)) {
    const unit = arrowUnits[type.unit];
    // From the raw int64s: Vector.get turns every unit into (rounded) milliseconds.
    return (vector, row) => {
      const [data] = vector.data; // a batch's column is one Data
      return data?.getValid(row) ? toMicros((data.values as BigInt64Array)[row] ?? 0n, unit) : null;
    };
  }
  if (DataType.isList(type) || DataType.isLargeList(type) || DataType.isFixedSizeList(type))
    return (vector, row) => {
      const items = vector.get(row) as Vector | null;
      return items && [...items];
    };
  return (vector, row) => vector.get(row);
}

export const openArrow: OpenRowSource = async (file, viewColumns) => {
  const handle = await open(file, 'r');
  let reader: AsyncRecordBatchReaders;
  let columns: ViewColumn[];
  const readers = new Map<string, ReadValue>();
  try {
    try {
      // A file handle gives the file format random access to its footer; streams are read in order.
      reader = await RecordBatchReader.from(handle);
      await reader.open();
    } catch (error) {
      throw invalidArgument(file, `is not an Arrow IPC file or stream (${(error as Error).message})`);
    }
    if (!reader.schema) throw invalidArgument(file, 'is not an Arrow IPC file or stream');
    const fields = reader.schema.fields;
    const where = `${file} schema`;
    columns = selectColumns(
      viewColumns,
      fields.map((field) => field.name),
      where,
    );
    const types = new Map(fields.map((field) => [field.name, field.type as DataType]));
    assertColumnTypes(columns, new Map([...types].map(([name, type]) => [name, columnType(type)])), where);
    for (const column of columns) readers.set(column.name, valueReader(types.get(column.name) as DataType));
  } catch (error) {
    await handle.close();
    throw error;
  }

  async function* batches(): AsyncGenerator<RecordBatch> {
    try {
      yield* reader;
    } catch (error) {
      // apache-arrow registers no decompressor (pyarrow's Feather writer compresses with LZ4 by default).
      if (/compressed/i.test((error as Error).message))
        throw invalidArgument(
          file,
          'has compressed record batches, which fstore cannot read: write it uncompressed',
        );
      throw error;
    }
  }

  return {
    columns,
    async *blocks() {
      let firstRow = 0;
      for await (const batch of batches()) {
        const batchStart = firstRow;
        const where = (row: number) => `row ${batchStart + row}`;
        const values = new Map<string, FeatureValue[]>();
        for (const column of columns) {
          const vector = batch.getChild(column.name) as Vector; // every batch has the schema's columns
          const read = readers.get(column.name) as ReadValue;
          const columnValues: FeatureValue[] = new Array(batch.numRows);
          for (let row = 0; row < batch.numRows; row++) {
            try {
              columnValues[row] = typedValue(column.type, read(vector, row));
            } catch (error) {
              throw cellError(where(row), column.name, (error as Error).message);
            }
          }
          values.set(column.name, columnValues);
        }
        firstRow += batch.numRows;
        yield { rowCount: batch.numRows, values, where };
      }
    },
    close: () => handle.close(),
  };
};
