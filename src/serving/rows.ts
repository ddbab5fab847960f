import { type Column, columnToFeatureValues, columnToKeyValues } from '../domain/columns.js';
import { FStoreError, invalidArgument } from '../domain/errors.js';
import { keyValueProblem } from '../domain/input-limits.js';
import type { FeatureDefinition, FeatureValue, FeatureView, KeyValue, ScalarValue } from '../domain/model.js';
import type { ServedView } from './registry-cache.js';

/**
 * Column-major rows as clients send them (online writes, ingest chunks), and their validation
 * against a view's current version: one piece of code for every write path.
 */

export interface RowColumns {
  /** Join key name → one value per row. */
  readonly entities: ReadonlyMap<string, Column>;
  readonly features: readonly {
    readonly name: string;
    readonly values: Column;
    readonly nullRows: readonly number[];
  }[];
  readonly eventTimes: readonly bigint[];
  /** Optional: empty means "not given". */
  readonly createdTimes?: readonly bigint[];
}

export interface ValidatedRows {
  readonly rowCount: number;
  /** Per join key of the view, in order. */
  readonly keys: (readonly KeyValue[])[];
  /** Microseconds since the epoch. */
  readonly eventTimes: number[];
  /** Microseconds since the epoch; undefined when the client gave none. */
  readonly createdTimes: number[] | undefined;
  /** Per feature of the view's current version, in order; null for nulls. */
  readonly values: FeatureValue[][];
}

/** The number of rows of the entity columns: all equal, 1 to `maxBatchRows`. */
export function countRows(entities: ReadonlyMap<string, Column>, maxBatchRows: number): number {
  let rowCount = -1;
  let first = '';
  for (const [name, column] of entities) {
    if (rowCount === -1) {
      rowCount = column.values.length;
      first = name;
    } else if (column.values.length !== rowCount)
      throw invalidArgument(
        `entities["${name}"]`,
        `has ${column.values.length} rows but entities["${first}"] has ${rowCount}: every key vector needs one value per row`,
      );
  }
  if (rowCount <= 0) throw invalidArgument('entities', 'at least one entity row is required');
  if (rowCount > maxBatchRows)
    throw new FStoreError(
      'resource_exhausted',
      `entities: ${rowCount} rows, more than the server's maximum batch of ${maxBatchRows} (FSTORE_MAX_BATCH_ROWS)`,
    );
  return rowCount;
}

/**
 * Refuses the first string key value that breaks `keyValueProblem` (NUL, more than
 * `inputLimits.entityKeyBytes`): the one rule of every path that takes keys (online reads and
 * writes, ingest, historical input), so a key valid online is valid offline. Rows are numbered
 * from `firstRow`.
 */
function assertKeyValues(name: string, values: readonly KeyValue[], firstRow: number): void {
  for (let row = 0; row < values.length; row++) {
    const value = values[row];
    if (typeof value !== 'string') continue;
    const problem = keyValueProblem(value);
    if (problem) throw invalidArgument(`rows[${firstRow + row}].entities["${name}"]`, problem);
  }
}

/**
 * The request's key column of each join key of `view`, checked for presence, type and the key
 * value rule (rows numbered from `firstRow`).
 */
export function joinKeyColumns(
  view: FeatureView,
  entities: ReadonlyMap<string, Column>,
  firstRow = 0,
): (readonly KeyValue[])[] {
  return view.joinKeys.map((joinKey) => {
    const column = entities.get(joinKey.name);
    if (!column)
      throw invalidArgument('entities', `missing join key "${joinKey.name}" of feature view "${view.name}"`);
    const values = columnToKeyValues(`entities["${joinKey.name}"]`, joinKey.type, column);
    if (joinKey.type === 'string') assertKeyValues(joinKey.name, values, firstRow);
    return values;
  });
}

/**
 * Refuses NUL in a string or string-list feature's values (PostgreSQL text cannot hold it; online
 * writes follow the same rule, so every row written online can be written offline).
 */
function assertStringValues(
  feature: FeatureDefinition,
  values: readonly FeatureValue[],
  firstRow: number,
): void {
  if (feature.type !== 'string' && feature.type !== 'string_list') return;
  for (let row = 0; row < values.length; row++) {
    const value = values[row];
    if (typeof value === 'string') {
      if (value.includes('\u0000'))
        throw invalidArgument(
          `rows[${firstRow + row}].features["${feature.name}"]`,
          'contains a NUL character',
        );
    } else if (Array.isArray(value))
      for (let element = 0; element < value.length; element++) {
        const item = value[element];
        if (typeof item === 'string' && item.includes('\u0000'))
          throw invalidArgument(
            `rows[${firstRow + row}].features["${feature.name}"][${element}]`,
            'contains a NUL character',
          );
      }
  }
}

const maxMicros = BigInt(Number.MAX_SAFE_INTEGER);

function timesOf(field: string, times: readonly bigint[], rowCount: number, positive: boolean): number[] {
  if (times.length !== rowCount)
    throw invalidArgument(field, `has ${times.length} values, expected ${rowCount} (one per row)`);
  return times.map((micros, row) => {
    if (positive ? micros <= 0n || micros > maxMicros : micros < -maxMicros || micros > maxMicros)
      throw invalidArgument(
        `${field}[${row}]`,
        positive
          ? 'must be a positive time in microseconds since the epoch'
          : 'is outside the representable range of microseconds since the epoch',
      );
    return Number(micros);
  });
}

// Built once per feature definition (a registry version's objects live until the next version).
const allowedSets = new WeakMap<FeatureDefinition, ReadonlySet<string>>();

/** The allowed values of a feature as a set, or undefined when any value is allowed. */
export function allowedValueSet(feature: FeatureDefinition): ReadonlySet<string> | undefined {
  if (!feature.allowedValues || feature.allowedValues.length === 0) return undefined;
  let set = allowedSets.get(feature);
  if (!set) {
    set = new Set(feature.allowedValues);
    allowedSets.set(feature, set);
  }
  return set;
}

/**
 * Refuses the first value of a feature's column that breaks its rules: a null when required, a
 * value or list element outside [min, max], NaN when bounded, a value not among the allowed ones.
 * Rows are numbered from `firstRow`.
 */
function assertFeatureRules(
  feature: FeatureDefinition,
  values: readonly FeatureValue[],
  firstRow: number,
): void {
  const { required = false, min, max } = feature;
  const bounded = min !== undefined || max !== undefined;
  const allowed = allowedValueSet(feature);
  if (allowed) {
    for (let row = 0; row < values.length; row++) {
      const value = values[row] as FeatureValue;
      if (value !== null && !allowed.has(String(value)))
        throw invalidArgument(
          `rows[${firstRow + row}].features["${feature.name}"]`,
          `${JSON.stringify(String(value))} is not one of the feature's allowed values`,
        );
    }
  }
  if (!required && !bounded) return;
  // float values arrive rounded to float32, so a bound is compared rounded the same way: a
  // client sending exactly the bound (0.1 stored as float32) is within it.
  const single = feature.type === 'float' || feature.type === 'float_list';
  const low = min === undefined ? undefined : single ? Math.fround(min) : min;
  const high = max === undefined ? undefined : single ? Math.fround(max) : max;
  const field = (row: number) => `rows[${firstRow + row}].features["${feature.name}"]`;
  // Bounded types hold numbers (double, float, timestamp) or bigints (int64); a bigint compares
  // with a number bound exactly.
  const problem = (value: ScalarValue): string | undefined => {
    const number = value as number | bigint;
    if (Number.isNaN(number)) return 'NaN is refused: the feature has a minimum or maximum';
    if (low !== undefined && number < low) return `${number} is below the minimum ${min}`;
    if (high !== undefined && number > high) return `${number} is above the maximum ${max}`;
    return undefined;
  };
  for (let row = 0; row < values.length; row++) {
    const value = values[row] as FeatureValue;
    if (value === null) {
      if (required) throw invalidArgument(field(row), 'is null but the feature is required');
      continue;
    }
    if (!bounded) continue;
    if (Array.isArray(value)) {
      for (let element = 0; element < value.length; element++) {
        const reason = problem(value[element] as ScalarValue);
        if (reason) throw invalidArgument(`${field(row)}[${element}]`, reason);
      }
    } else {
      const reason = problem(value as ScalarValue);
      if (reason) throw invalidArgument(field(row), reason);
    }
  }
}

/**
 * Checks rows against the view's current version: every join key, every feature exactly once
 * with one value of its type per row, one event time per row (positive when `positiveTimes`:
 * online writes treat 0 as "missing"), then the features' rules (required, min, max), naming rows
 * from `firstRow` (an ingest chunk's place in its stream). Throws FStoreError naming the field.
 */
export function validateRows(
  view: ServedView,
  rows: RowColumns,
  options: { readonly maxBatchRows: number; readonly positiveTimes: boolean; readonly firstRow?: number },
): ValidatedRows {
  const { current } = view;
  const rowCount = countRows(rows.entities, options.maxBatchRows);
  const eventTimes = timesOf('event_timestamps', rows.eventTimes, rowCount, options.positiveTimes);
  const createdTimes =
    rows.createdTimes && rows.createdTimes.length > 0
      ? timesOf('created_timestamps', rows.createdTimes, rowCount, false)
      : undefined;
  const keys = joinKeyColumns(current, rows.entities, options.firstRow ?? 0);

  const indexes = view.featureIndexes.get(current.version) as ReadonlyMap<string, number>;
  const values = new Array<FeatureValue[] | undefined>(current.features.length);
  rows.features.forEach((feature, position) => {
    const index = indexes.get(feature.name);
    if (index === undefined)
      throw new FStoreError(
        'not_found',
        `features[${position}].name: feature view "${current.name}" has no feature "${feature.name}"`,
      );
    if (values[index])
      throw invalidArgument(`features[${position}].name`, `feature "${feature.name}" is given twice`);
    values[index] = columnToFeatureValues(
      `features[${position}].values`,
      current.features[index]?.type ?? 'double',
      feature.values,
      rowCount,
      feature.nullRows,
    );
  });
  current.features.forEach((feature, index) => {
    if (!values[index])
      throw invalidArgument(
        'features',
        `missing feature "${feature.name}" of feature view "${current.name}"`,
      );
  });
  current.features.forEach((feature, index) => {
    assertStringValues(feature, values[index] as FeatureValue[], options.firstRow ?? 0);
    assertFeatureRules(feature, values[index] as FeatureValue[], options.firstRow ?? 0);
  });
  return { rowCount, keys, eventTimes, createdTimes, values: values as FeatureValue[][] };
}
