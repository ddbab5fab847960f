import { invalidArgument } from './errors.js';
import type { FeatureValue, KeyType, KeyValue, ScalarValue, ValueType } from './model.js';

/**
 * A column as it arrives from a client, before it is checked against a schema: which typed array
 * carried it and its values. List columns carry one column per row.
 */
export type ColumnKind =
  | 'int64'
  | 'double'
  | 'float'
  | 'string'
  | 'bool'
  | 'bytes'
  | 'timestamp'
  | 'list'
  | 'none';

export type Column =
  | { readonly kind: 'int64' | 'timestamp'; readonly values: readonly bigint[] }
  | { readonly kind: 'double' | 'float'; readonly values: readonly number[] }
  | { readonly kind: 'string'; readonly values: readonly string[] }
  | { readonly kind: 'bool'; readonly values: readonly boolean[] }
  | { readonly kind: 'bytes'; readonly values: readonly Uint8Array[] }
  | { readonly kind: 'list'; readonly values: readonly Column[] }
  | { readonly kind: 'none'; readonly values: readonly never[] };

const kindLabel = (kind: ColumnKind): string => (kind === 'none' ? 'no values' : `${kind}_values`);

/** The element type of a list type, or undefined for scalars. */
export function listElementType(type: ValueType): ValueType | undefined {
  return type.endsWith('_list') ? (type.slice(0, -'_list'.length) as ValueType) : undefined;
}

/** The column kind that carries values of `type`. */
export function columnKindOf(type: ValueType): ColumnKind {
  return listElementType(type) ? 'list' : (type as ColumnKind);
}

export function zeroValue(type: ValueType): FeatureValue {
  switch (type) {
    case 'int64':
      return 0n;
    case 'double':
    case 'float':
    case 'timestamp':
      return 0;
    case 'string':
      return '';
    case 'bool':
      return false;
    case 'bytes':
      return new Uint8Array(0);
    default:
      return [];
  }
}

const microsMax = BigInt(Number.MAX_SAFE_INTEGER);

function scalarValues(field: string, type: ValueType, column: Column): readonly ScalarValue[] {
  if (column.kind !== columnKindOf(type))
    throw invalidArgument(
      field,
      `expected ${kindLabel(columnKindOf(type))} for type ${type}, got ${kindLabel(column.kind)}`,
    );
  if (type === 'timestamp') {
    return (column.values as readonly bigint[]).map((micros, row) => {
      if (micros > microsMax || micros < -microsMax)
        throw invalidArgument(`${field}[${row}]`, 'timestamp out of range (microseconds since the epoch)');
      return Number(micros);
    });
  }
  if (type === 'float') return (column.values as readonly number[]).map(Math.fround);
  return column.values as readonly ScalarValue[];
}

/**
 * Checks a column against a feature type and length; returns its values as FeatureValues (rows
 * listed in `nullRows` become null). The message names the field and, for lists, the row.
 */
export function columnToFeatureValues(
  field: string,
  type: ValueType,
  column: Column,
  rowCount: number,
  nullRows: readonly number[] = [],
): FeatureValue[] {
  if (column.values.length !== rowCount)
    throw invalidArgument(field, `has ${column.values.length} values, expected ${rowCount} (one per row)`);
  const elementType = listElementType(type);
  let values: FeatureValue[];
  if (elementType) {
    if (column.kind !== 'list')
      throw invalidArgument(field, `expected list_values for type ${type}, got ${kindLabel(column.kind)}`);
    values = (column.values as readonly Column[]).map((row, index) => {
      if (row.kind === 'none') return [];
      return scalarValues(`${field}[${index}]`, elementType, row);
    });
  } else {
    values = [...scalarValues(field, type, column)];
  }
  let previous = -1;
  for (const [position, row] of nullRows.entries()) {
    if (!Number.isInteger(row) || row <= previous || row >= rowCount)
      throw invalidArgument(
        `${field.replace(/\.values$/, '')}.null_rows[${position}]`,
        `row ${row} is out of order or outside 0..${rowCount - 1}`,
      );
    values[row] = null;
    previous = row;
  }
  return values;
}

/** Checks a join-key column's kind and returns its values. */
export function columnToKeyValues(field: string, type: KeyType, column: Column): readonly KeyValue[] {
  if (column.kind !== type)
    throw invalidArgument(
      field,
      `expected ${type}_values for a ${type} join key, got ${kindLabel(column.kind)}`,
    );
  return column.values as readonly KeyValue[];
}
