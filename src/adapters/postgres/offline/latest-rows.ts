import { invalidArgument } from '../../../domain/errors.js';
import type { FeatureValue, KeyValue } from '../../../domain/model.js';
import type { TimeRange } from '../../../ports/offline-store.js';
import { quoteIdentifier } from '../pool.js';
import { decodeColumns } from './binary-rows.js';
import { type ColumnMapping, type ViewLayout, writeOrderColumn } from './table-layout.js';

/**
 * The SQL of "latest row per entity in a time range" (binary COPY) and the decoding of its rows
 * into column-major values; and the text forms of columns that other cursor reads select, in a
 * form that converts exactly: bigint and timestamps as text (microseconds), never through a
 * JavaScript Date or a float.
 */

export const micros = (expression: string): string =>
  `((EXTRACT(EPOCH FROM ${expression}) * 1000000)::bigint)::text`;

export function selectExpression(mapping: ColumnMapping): string {
  const column = quoteIdentifier(mapping.columnName);
  switch (mapping.valueType) {
    case 'int64':
      return `${column}::text`;
    case 'int64_list':
      return `${column}::text[]`;
    case 'timestamp':
      return micros(column);
    default:
      return column;
  }
}

/** A bound of a time range as a SQL literal; COPY takes no parameters. */
export function timeLiteral(value: number, name: string): string {
  if (!Number.isInteger(value))
    throw invalidArgument(name, `must be integer microseconds since the epoch, got ${value}`);
  return `to_timestamp(${BigInt(value)}::numeric / 1000000)`;
}

/**
 * The latest row per entity of [start, end) as binary COPY output: DISTINCT ON the keys, newest
 * event time first, ties by newest created time, then by the row written last (greatest `seq`,
 * see `writeOrderColumn`). Raw columns (keys, event time, created time, the features), decoded by
 * `decodeLatestRows`.
 */
export function latestRowsCopy(layout: ViewLayout, qualifiedTable: string, range: TimeRange): string {
  const keys = layout.keys.map((key) => quoteIdentifier(key.columnName));
  const columns = [
    ...keys,
    'event_time',
    'created_time',
    ...layout.features.map((feature) => quoteIdentifier(feature.columnName)),
  ];
  return `COPY (SELECT DISTINCT ON (${keys.join(', ')}) ${columns.join(', ')}
    FROM ${qualifiedTable}
    WHERE event_time >= ${timeLiteral(range.startMicros, 'startMicros')}
      AND event_time < ${timeLiteral(range.endMicros, 'endMicros')}
      AND ${keys.map((key) => `${key} IS NOT NULL`).join(' AND ')}
    ORDER BY ${keys.join(', ')}, event_time DESC, created_time DESC, ${quoteIdentifier(writeOrderColumn)} DESC)
    TO STDOUT (FORMAT binary)`;
}

/** The number of columns of a `latestRowsCopy` row. */
export const latestRowsFieldCount = (layout: ViewLayout): number =>
  layout.keys.length + 2 + layout.features.length;

export function toValue(mapping: ColumnMapping, raw: unknown): FeatureValue {
  if (raw === null || raw === undefined) return null;
  switch (mapping.valueType) {
    case 'int64':
      return BigInt(raw as string);
    case 'int64_list':
      return (raw as string[]).map((item) => BigInt(item));
    case 'timestamp':
      return Number(raw as string);
    // real arrives as its shortest decimal text ("1.1"): round back to the float32 that was stored.
    case 'float':
      return Math.fround(raw as number);
    case 'float_list':
      return (raw as number[]).map(Math.fround);
    default:
      return raw as FeatureValue;
  }
}

export interface LatestRowsColumns {
  readonly keys: KeyValue[][];
  readonly eventTimes: number[];
  readonly createdTimes: number[];
  readonly values: FeatureValue[][];
}

/** Rows of `latestRowsCopy` output (a row-aligned segment of it), column-major. */
export function decodeLatestRows(layout: ViewLayout, bytes: Uint8Array, rowCount: number): LatestRowsColumns {
  const types = [
    ...layout.keys.map((key) => key.valueType),
    'timestamp' as const,
    'timestamp' as const,
    ...layout.features.map((feature) => feature.valueType),
  ];
  const columns = decodeColumns(bytes, rowCount, types);
  const keyCount = layout.keys.length;
  return {
    keys: columns.slice(0, keyCount) as KeyValue[][],
    eventTimes: columns[keyCount] as number[],
    createdTimes: columns[keyCount + 1] as number[],
    values: columns.slice(keyCount + 2) as FeatureValue[][],
  };
}
