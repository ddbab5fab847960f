import type { KeyValue } from '../../../domain/model.js';
import { quoteIdentifier } from '../pool.js';
import { micros, selectExpression, toValue } from './latest-rows.js';
import { postgresTypeOf, type ViewLayout, writeOrderColumn } from './table-layout.js';

/**
 * The SQL of point-in-time reads. The join's distinct keys are loaded into a table of the call
 * (binary COPY, see `encodeKeyTable`) with their rank and the latest label time asked for each;
 * the feature rows then come out ordered by (rank, event time, created time, write order) as
 * binary COPY, so neither side depends on how PostgreSQL collates the keys: the merge compares
 * ranks only. The write order (`seq`, see `writeOrderColumn`) is not sent: it only makes the order
 * total, so that of fully tied rows (equal keys, event and created time) the one written last
 * comes last, which is the one the merge keeps.
 */

/**
 * A key table of one call: unlogged rather than temporary, because parallel workers cannot read
 * a temporary table and the hash join and sort of a large block are worth two cores. It is
 * created inside the call's transaction (so a failed or cancelled call rolls it back with
 * everything else) and dropped before the commit. The name is the caller's (random per call).
 */
export function keyTableDefinition(layout: ViewLayout, keyTable: string): string {
  return `CREATE UNLOGGED TABLE ${keyTable} (
    rank integer NOT NULL,
    ${layout.keys.map((key, index) => `k${index} ${postgresTypeOf(key.valueType)} NOT NULL,`).join('\n')}
    max_time timestamptz NOT NULL
  )`;
}

/**
 * Rows of the view with a key of the key table and an event time ≤ that key's max time, in the
 * merge's order: rank, event time, created time, then write order.
 */
export function pointInTimeQuery(layout: ViewLayout, qualifiedTable: string, keyTable: string): string {
  const join = layout.keys.map((key, index) => `f.${quoteIdentifier(key.columnName)} = k.k${index}`);
  return `SELECT k.rank, f.event_time, f.created_time${layout.features
    .map((feature) => `, f.${quoteIdentifier(feature.columnName)}`)
    .join('')}
    FROM ${keyTable} k JOIN ${qualifiedTable} f ON ${join.join(' AND ')} AND f.event_time <= k.max_time
    ORDER BY k.rank, f.event_time, f.created_time, f.${quoteIdentifier(writeOrderColumn)}`;
}

/**
 * Distinct (keys, event time) of the rows of several views in [$1, $2) microseconds, sorted by
 * keys then time; the views' layouts list the same key names and types.
 */
export function entityTimesQuery(layouts: readonly { layout: ViewLayout; table: string }[]): string {
  const first = layouts[0]?.layout as ViewLayout;
  const keyNames = first.keys.map((_, index) => `k${index}`);
  const parts = layouts.map(
    ({ layout, table }) => `SELECT DISTINCT ${layout.keys
      .map((key, index) => `${quoteIdentifier(key.columnName)} AS k${index}`)
      .join(', ')}, event_time FROM ${table}
      WHERE event_time >= to_timestamp($1::numeric / 1000000) AND event_time < to_timestamp($2::numeric / 1000000)
        AND ${layout.keys.map((key) => `${quoteIdentifier(key.columnName)} IS NOT NULL`).join(' AND ')}`,
  );
  const keys = first.keys.map((key, index) =>
    selectExpression({ ...key, columnName: `k${index}` }).replace(`"k${index}"`, `u.k${index}`),
  );
  return `SELECT ${keys.map((expression, index) => `${expression} AS k${index}`).join(', ')}, ${micros('u.event_time')} AS t
    FROM (${parts.join('\nUNION\n')}) u
    ORDER BY ${keyNames.map((name) => `u.${name}`).join(', ')}, u.event_time`;
}

/** Result rows of `entityTimesQuery` in array mode, column-major. */
export function toEntityTimes(
  layout: ViewLayout,
  rows: readonly (readonly unknown[])[],
): { keys: KeyValue[][]; times: number[] } {
  const keyCount = layout.keys.length;
  return {
    keys: layout.keys.map((key, index) => rows.map((row) => toValue(key, row[index]) as KeyValue)),
    times: rows.map((row) => Number(row[keyCount] as string)),
  };
}
