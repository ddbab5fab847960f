import { listElementType } from '../domain/columns.js';
import type { FeatureValue, ScalarValue, ValueType } from '../domain/model.js';
import { cellError, type ViewColumn } from './ingest-source.js';

/**
 * Column types of typed files (Parquet, Arrow IPC) in one vocabulary for both formats, which of
 * them can hold which of the view's value types, and the conversion of their values. Readers hand
 * values over normalised: integers as number or bigint, floating point as number, strings,
 * booleans, bytes as Uint8Array, timestamps as bigint microseconds since the epoch, lists as
 * arrays, and null (or undefined) for a null.
 */
export type FileColumnType =
  | {
      readonly kind: 'integer' | 'floating' | 'string' | 'bool' | 'bytes' | 'timestamp' | 'unsupported';
      /** The type as the messages name it, Arrow style: "int32", "timestamp[ms, tz=UTC]". */
      readonly label: string;
    }
  | { readonly kind: 'list'; readonly element: FileColumnType; readonly label: string };

export type TimeUnit = 's' | 'ms' | 'us' | 'ns';

export const unsupportedType = (label: string): FileColumnType => ({ kind: 'unsupported', label });

export const listType = (element: FileColumnType): FileColumnType => ({
  kind: 'list',
  element,
  label: `list<${element.label}>`,
});

export const timestampType = (unit: TimeUnit, timeZone?: string): FileColumnType => ({
  kind: 'timestamp',
  label: timeZone ? `timestamp[${unit}, tz=${timeZone}]` : `timestamp[${unit}]`,
});

/** Whether values of a file column of type `file` convert to `type` without loss of meaning. */
function canHold(file: FileColumnType, type: ValueType): boolean {
  const element = listElementType(type);
  if (element) return file.kind === 'list' && canHold(file.element, element);
  switch (type) {
    case 'int64':
      return file.kind === 'integer';
    case 'double':
    case 'float':
      return file.kind === 'floating';
    default:
      return file.kind === type;
  }
}

/** Fails on the first column whose type in the file cannot hold the view's type, naming both. */
export function assertColumnTypes(
  columns: readonly ViewColumn[],
  fileTypes: ReadonlyMap<string, FileColumnType>,
  where: string,
): void {
  for (const column of columns) {
    const file = fileTypes.get(column.name) ?? unsupportedType('absent');
    if (!canHold(file, column.type))
      throw cellError(
        where,
        column.name,
        `the file's type ${file.label} cannot hold the view's type ${column.type}`,
      );
  }
}

const unitsPerSecond: Record<TimeUnit, bigint> = { s: 1n, ms: 1_000n, us: 1_000_000n, ns: 1_000_000_000n };

/** Microseconds since the epoch of a time in `unit`; finer units round down (towards the past). */
export function toMicros(value: bigint, unit: TimeUnit): bigint {
  const perSecond = unitsPerSecond[unit];
  if (perSecond <= 1_000_000n) return value * (1_000_000n / perSecond);
  const divisor = perSecond / 1_000_000n;
  const quotient = value / divisor;
  return value < 0n && quotient * divisor !== value ? quotient - 1n : quotient;
}

// The domain keeps timestamps as numbers of microseconds: exact up to the year 2255.
const microsLimit = BigInt(Number.MAX_SAFE_INTEGER);

function scalarValue(type: ValueType, value: unknown): ScalarValue {
  switch (type) {
    case 'int64':
      return typeof value === 'bigint' ? value : BigInt(value as number);
    case 'timestamp': {
      const micros = value as bigint;
      if (micros > microsLimit || micros < -microsLimit)
        throw new Error(`${micros} microseconds is outside the representable range`);
      return Number(micros);
    }
    default:
      return value as ScalarValue;
  }
}

/**
 * A normalised value of a column whose type passed assertColumnTypes, as a value of `type`.
 * Throws an Error whose message is the reason, for the caller to place.
 */
export function typedValue(type: ValueType, value: unknown): FeatureValue {
  if (value === null || value === undefined) return null;
  const element = listElementType(type);
  if (!element) return scalarValue(type, value);
  return Array.from(value as ArrayLike<unknown>, (item, position) => {
    if (item === null || item === undefined) throw new Error(`list element ${position} is null`);
    return scalarValue(element, item);
  });
}
