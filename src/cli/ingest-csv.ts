import { createReadStream } from 'node:fs';
import { parse } from 'csv-parse';
import { listElementType } from '../domain/columns.js';
import type { ValueType as DomainValueType, FeatureValue, ScalarValue } from '../domain/model.js';
import { parseTimestampMicros } from '../domain/timestamps.js';
import {
  cellError,
  type OpenRowSource,
  type RowBlock,
  selectColumns,
  type ViewColumn,
} from './ingest-source.js';

/**
 * The CSV reader of `fstore ingest`: a header row naming the columns, then one row per line.
 * Times are ISO 8601 or integer microseconds since the epoch; an empty cell is null; lists are
 * JSON arrays; bytes are base64. Errors name the file's line (the header is line 1) and column.
 */

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

// Rows per block handed to the pipeline, which cuts its own chunks; this only bounds memory.
const blockRows = 1000;

export const openCsv: OpenRowSource = async (file, viewColumns) => {
  let header: string[] = [];
  const parser = parse({
    columns: (names: string[]) => {
      header = names;
      return names;
    },
    skip_empty_lines: true,
    bom: true,
  });
  createReadStream(file)
    .on('error', (error) => parser.destroy(error))
    .pipe(parser);
  const records = (parser as AsyncIterable<Record<string, string>>)[Symbol.asyncIterator]();
  let first: IteratorResult<Record<string, string>>;
  let columns: ViewColumn[];
  try {
    // The header is parsed with the first record: read it now, so a bad header fails before any call.
    first = await records.next();
    columns = selectColumns(viewColumns, header, `${file} header`);
  } catch (error) {
    parser.destroy();
    throw error;
  }

  function toBlock(rows: Record<string, string>[], firstLine: number): RowBlock {
    const where = (row: number) => `line ${firstLine + row}`;
    const values = new Map<string, FeatureValue[]>();
    for (const column of columns)
      values.set(
        column.name,
        rows.map((record, row) => {
          const text = record[column.name] ?? '';
          if (text === '') return null;
          try {
            return parseValue(column.type, text);
          } catch (error) {
            throw cellError(where(row), column.name, `"${text}" ${(error as Error).message}`);
          }
        }),
      );
    return { rowCount: rows.length, values, where };
  }

  return {
    columns,
    async *blocks() {
      let pending: Record<string, string>[] = [];
      let firstLine = 2; // line 1 is the header
      let next = first;
      while (!next.done) {
        pending.push(next.value);
        if (pending.length === blockRows) {
          yield toBlock(pending, firstLine);
          firstLine += pending.length;
          pending = [];
        }
        next = await records.next();
      }
      if (pending.length > 0) yield toBlock(pending, firstLine);
    },
    async close() {
      parser.destroy();
    },
  };
};
