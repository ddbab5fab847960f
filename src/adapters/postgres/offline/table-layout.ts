import { createHash } from 'node:crypto';
import type { FeatureView, KeyType, ValueType } from '../../../domain/model.js';
import { quoteIdentifier } from '../pool.js';

/**
 * Where the rows of a view version live: one partitioned table per view id, one column per join
 * key and per feature. A column keeps one PostgreSQL type forever, so a key or feature whose type
 * changed in a forced version gets a new column; `offline_columns` records, per version, which
 * column holds what, so every version's rows stay readable.
 */
export interface ColumnMapping {
  readonly role: 'key' | 'feature';
  /** The key's or feature's name in the view version. */
  readonly name: string;
  readonly columnName: string;
  readonly valueType: ValueType | KeyType;
}

export interface ViewLayout {
  readonly viewId: number;
  readonly version: number;
  readonly table: string;
  /** In `view.joinKeys` order. */
  readonly keys: readonly ColumnMapping[];
  /** In `view.features` order. */
  readonly features: readonly ColumnMapping[];
}

export interface StoredMapping extends ColumnMapping {
  readonly version: number;
}

/** The mapping table; created once per schema by the store (see postgres-offline-store.ts). */
export const columnsTable = 'offline_columns';

export const viewTableName = (viewId: number): string => `offline_view_${viewId}`;

/**
 * The write order of a view's rows: every view table has a `seq bigint NOT NULL` column filled by
 * default from the view's own sequence (`offline_view_<id>_seq`, owned by the column), so a row
 * written later has a greater value: within one write, a later row of its stream; a write that
 * starts after another ended, every row of it (concurrent writes interleave, in the order their
 * rows reach the table). It breaks full ties: of rows with the same keys and equal event AND
 * created time, the one written last is the answer of every read that chooses a latest row. The
 * sequence has no cache, so values follow the order of nextval calls across sessions.
 */
export const writeOrderColumn = 'seq';

export const writeOrderSequenceName = (viewId: number): string => `${viewTableName(viewId)}_seq`;

const pgScalarTypes: Record<string, string> = {
  int64: 'bigint',
  double: 'double precision',
  float: 'real',
  string: 'text',
  bool: 'boolean',
  bytes: 'bytea',
  timestamp: 'timestamptz',
};

/** The PostgreSQL type of a value type (lists are one-dimensional arrays of the element). */
export function postgresTypeOf(type: ValueType | KeyType): string {
  const element = type.endsWith('_list') ? type.slice(0, -'_list'.length) : type;
  const scalar = pgScalarTypes[element];
  if (scalar === undefined) throw new Error(`no PostgreSQL type for value type ${type}`);
  return element === type ? scalar : `${scalar}[]`;
}

// PostgreSQL silently truncates identifiers to 63 bytes; two long names must not collide.
const maxIdentifierBytes = 63;

function columnNameFor(prefix: 'k_' | 'f_', name: string, suffix: string): string {
  const full = `${prefix}${name}${suffix}`;
  if (Buffer.byteLength(full) <= maxIdentifierBytes) return full;
  const hash = createHash('sha256').update(full).digest('hex').slice(0, 10);
  return `${prefix}${name.slice(0, maxIdentifierBytes - prefix.length - suffix.length - 11)}_${hash}${suffix}`;
}

/**
 * The columns of `view`'s version given the mappings already stored for the view (any version):
 * a key or feature keeps the column it had with the same type; a new one gets `k_<name>` /
 * `f_<name>`, or `…__v<version>` when that name already holds another type.
 */
export function planLayout(view: FeatureView, stored: readonly StoredMapping[]): ViewLayout {
  const taken = new Set(stored.map((mapping) => mapping.columnName));
  const plan = (role: 'key' | 'feature', name: string, valueType: ValueType | KeyType): ColumnMapping => {
    const same = stored.find(
      (mapping) => mapping.role === role && mapping.name === name && mapping.valueType === valueType,
    );
    if (same) return { role, name, columnName: same.columnName, valueType };
    const prefix = role === 'key' ? 'k_' : 'f_';
    let columnName = columnNameFor(prefix, name, '');
    if (taken.has(columnName)) columnName = columnNameFor(prefix, name, `__v${view.version}`);
    taken.add(columnName);
    return { role, name, columnName, valueType };
  };
  return {
    viewId: view.id,
    version: view.version,
    table: viewTableName(view.id),
    keys: view.joinKeys.map((key) => plan('key', key.name, key.type)),
    features: view.features.map((feature) => plan('feature', feature.name, feature.type)),
  };
}

/** Whether stored mappings of one version describe exactly `view`'s keys and features. */
export function layoutFromStored(view: FeatureView, rows: readonly StoredMapping[]): ViewLayout | undefined {
  const find = (role: 'key' | 'feature', name: string, type: string) =>
    rows.find((row) => row.role === role && row.name === name && row.valueType === type);
  const keys = view.joinKeys.map((key) => find('key', key.name, key.type));
  const features = view.features.map((feature) => find('feature', feature.name, feature.type));
  if (rows.length !== keys.length + features.length) return undefined;
  if (keys.some((key) => key === undefined) || features.some((feature) => feature === undefined))
    return undefined;
  const strip = ({ role, name, columnName, valueType }: ColumnMapping): ColumnMapping => ({
    role,
    name,
    columnName,
    valueType,
  });
  return {
    viewId: view.id,
    version: view.version,
    table: viewTableName(view.id),
    keys: (keys as ColumnMapping[]).map(strip),
    features: (features as ColumnMapping[]).map(strip),
  };
}

export const qualified = (schema: string, name: string): string =>
  `${quoteIdentifier(schema)}.${quoteIdentifier(name)}`;

// Monthly partitions, in UTC. A month is numbered year * 12 + month (0-based month).

export function monthOf(micros: number): number {
  const date = new Date(Math.floor(micros / 1_000));
  return date.getUTCFullYear() * 12 + date.getUTCMonth();
}

/** First microsecond of the month. */
export const monthStartMicros = (month: number): number =>
  Date.UTC(Math.floor(month / 12), month % 12, 1) * 1_000;

export function partitionName(viewId: number, month: number): string {
  const year = Math.floor(month / 12);
  return `${viewTableName(viewId)}_p${String(year).padStart(4, '0')}${String((month % 12) + 1).padStart(2, '0')}`;
}

/** The month a partition name stands for, or undefined for a name this store did not make. */
export function monthOfPartition(viewId: number, name: string): number | undefined {
  const match = new RegExp(`^${viewTableName(viewId)}_p(\\d{4})(\\d{2})$`).exec(name);
  if (!match) return undefined;
  return Number(match[1]) * 12 + Number(match[2]) - 1;
}

/** `'2024-03-01 00:00:00+00'`: a partition bound. */
export function monthBoundLiteral(month: number): string {
  const year = Math.floor(month / 12);
  return `'${String(year).padStart(4, '0')}-${String((month % 12) + 1).padStart(2, '0')}-01 00:00:00+00'`;
}

/** Every distinct month of the event times (one Date per month change, not per row). */
export function monthsOf(eventTimes: readonly number[]): number[] {
  const months = new Set<number>();
  let low = Number.POSITIVE_INFINITY;
  let high = Number.NEGATIVE_INFINITY;
  for (const micros of eventTimes) {
    if (micros >= low && micros < high) continue;
    const month = monthOf(micros);
    months.add(month);
    low = monthStartMicros(month);
    high = monthStartMicros(month + 1);
  }
  return [...months].sort((a, b) => a - b);
}
