import { type FStoreError, invalidArgument } from '../domain/errors.js';
import type { FeatureValue, ValueType } from '../domain/model.js';

/**
 * The contract between a file reader (CSV, Parquet, Arrow IPC) and the ingest pipeline: a reader
 * checks its header or schema against the view's columns, then yields blocks of rows already
 * converted to the view's value types. What every format shares (null keys and times, chunking,
 * streaming) is the pipeline's job, in ingest-file.ts.
 */

export type ColumnRole = 'key' | 'event_time' | 'created_time' | 'feature';

/** A column of the view's current version as a file carries it: under the column's own name. */
export interface ViewColumn {
  readonly name: string;
  readonly type: ValueType;
  readonly role: ColumnRole;
}

/** Consecutive rows of a file: one array of values per column of the source; null is a null. */
export interface RowBlock {
  readonly rowCount: number;
  readonly values: ReadonlyMap<string, readonly FeatureValue[]>;
  /** Where row `row` of the block is in the file, for messages ("row 17", "line 19"). */
  where(row: number): string;
}

/** A file whose header or schema matched the view, read block by block. */
export interface RowSource {
  /** The view's columns the file carries: all but created_timestamp, which is optional. */
  readonly columns: readonly ViewColumn[];
  blocks(): AsyncIterable<RowBlock>;
  /** Releases the file. */
  close(): Promise<void>;
}

export type OpenRowSource = (file: string, columns: readonly ViewColumn[]) => Promise<RowSource>;

/** The error of one bad value: where it is in the file, its column, and what is wrong with it. */
export function cellError(where: string, column: string, reason: string): FStoreError {
  return invalidArgument(`${where}, column "${column}"`, reason);
}

/**
 * The view columns present in a file with these column names; fails naming every missing one.
 * `where` names the file's header or schema in the message.
 */
export function selectColumns(
  columns: readonly ViewColumn[],
  fileColumnNames: Iterable<string>,
  where: string,
): ViewColumn[] {
  const present = new Set(fileColumnNames);
  const missing = columns
    .filter((column) => column.role !== 'created_time' && !present.has(column.name))
    .map((column) => column.name);
  if (missing.length > 0) throw invalidArgument(where, `missing columns: ${missing.join(', ')}`);
  return columns.filter((column) => present.has(column.name));
}
