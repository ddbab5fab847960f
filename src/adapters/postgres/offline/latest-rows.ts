import type { FeatureValue, KeyValue } from '../../../domain/model.js';
import { quoteIdentifier } from '../pool.js';
import type { ColumnMapping, ViewLayout } from './table-layout.js';

/**
 * The SQL of "latest row per entity in a time range" and the conversion of its result rows into
 * column-major values. Every column is selected in a form that converts exactly: bigint and
 * timestamps as text (microseconds), never through a JavaScript Date or a float.
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

/** DISTINCT ON the keys, newest event time first, ties by newest created time. */
export function latestRowsQuery(layout: ViewLayout, qualifiedTable: string): string {
  const keys = layout.keys.map((key) => quoteIdentifier(key.columnName));
  const columns = [
    ...layout.keys.map((key, index) => `${selectExpression(key)} AS k${index}`),
    `${micros('event_time')} AS event_time`,
    `${micros('created_time')} AS created_time`,
    ...layout.features.map((feature, index) => `${selectExpression(feature)} AS f${index}`),
  ];
  return `SELECT DISTINCT ON (${keys.join(', ')}) ${columns.join(', ')}
    FROM ${qualifiedTable}
    WHERE event_time >= to_timestamp($1::numeric / 1000000) AND event_time < to_timestamp($2::numeric / 1000000)
      AND ${keys.map((key) => `${key} IS NOT NULL`).join(' AND ')}
    ORDER BY ${keys.join(', ')}, event_time DESC, created_time DESC`;
}

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

/** Result rows in array mode: the key columns, event time, created time, then the features. */
export function toColumns(layout: ViewLayout, rows: readonly (readonly unknown[])[]): LatestRowsColumns {
  const keyCount = layout.keys.length;
  return {
    keys: layout.keys.map((key, index) => rows.map((row) => toValue(key, row[index]) as KeyValue)),
    eventTimes: rows.map((row) => Number(row[keyCount] as string)),
    createdTimes: rows.map((row) => Number(row[keyCount + 1] as string)),
    values: layout.features.map((feature, index) =>
      rows.map((row) => toValue(feature, row[keyCount + 2 + index])),
    ),
  };
}
