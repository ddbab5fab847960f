import { move, transferableSymbol, valueSymbol } from 'piscina';
import { decodeSegment, readValue, skipFields } from '../adapters/postgres/offline/binary-rows.js';
import type { ValueType } from '../domain/model.js';
import { createPointInTimeMerger } from '../domain/point-in-time.js';

/**
 * The point-in-time join of one segment, run in a piscina worker (DESIGN §2): the segment's
 * feature rows arrive as the bytes PostgreSQL sent (a transferred buffer), sorted by (rank, event
 * time, created time, write order), so of fully tied rows the merge keeps the one written last; the
 * entity rows as typed arrays sorted by (rank, time); the worker decodes ranks and times, runs the
 * merge kernel, then decodes the values of the chosen rows only. Results go back as typed arrays
 * in transferred buffers, in the entity rows' (sorted) order.
 */

export interface PointInTimeTask {
  readonly bytes: Uint8Array;
  readonly rows: number;
  /** The types of every feature column of the segment rows, in order. */
  readonly columnTypes: readonly ValueType[];
  /** Which of those columns to return, in output order. */
  readonly wanted: readonly number[];
  readonly keyRanks: Int32Array;
  readonly times: Float64Array;
  /** 0: no ttl. */
  readonly ttlMicros: number;
}

/** Values of one feature: typed where the type allows, plain arrays otherwise; nulls flagged. */
export type ValueColumn = Float64Array | BigInt64Array | Uint8Array | unknown[];

export interface PointInTimeTaskResult {
  /** pointInTimeStatus per entity row. */
  readonly status: Uint8Array;
  readonly eventTime: Float64Array;
  /** Per wanted feature: 1 where the chosen row's value is null. */
  readonly nulls: Uint8Array[];
  /** Per wanted feature: the chosen row's value where status is present and not null. */
  readonly values: ValueColumn[];
}

/** The column that holds values of `type` for `length` rows. */
export function valueColumnFor(type: ValueType, length: number): ValueColumn {
  switch (type) {
    case 'double':
    case 'float':
    case 'timestamp':
      return new Float64Array(length);
    case 'int64':
      return new BigInt64Array(length);
    case 'bool':
      return new Uint8Array(length);
    default:
      return new Array<unknown>(length).fill(null);
  }
}

export function runPointInTimeTask(task: PointInTimeTask): PointInTimeTaskResult {
  const { bytes, rows, columnTypes, wanted, keyRanks, times, ttlMicros } = task;
  const decoded = decodeSegment(bytes, rows);
  const merger = createPointInTimeMerger(ttlMicros);
  const rowIndex = new Int32Array(rows);
  for (let row = 0; row < rows; row++) rowIndex[row] = row;
  merger.pushFeatureRows({
    keyRanks: decoded.keyRanks,
    eventTimes: decoded.eventTimes,
    createdTimes: decoded.createdTimes,
    rowIndex,
  });
  merger.finish();
  const length = keyRanks.length;
  const matches = merger.pushEntityRows({ keyRanks, times, inputIndex: new Int32Array(length) });

  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const nulls = wanted.map(() => new Uint8Array(length));
  const values = wanted.map((column) => valueColumnFor(columnTypes[column] as ValueType, length));
  // Output slot of each column (-1: skipped) and the last column to read.
  const slotOf = new Int32Array(columnTypes.length).fill(-1);
  wanted.forEach((column, slot) => {
    slotOf[column] = slot;
  });
  const lastColumn = Math.max(-1, ...wanted);
  for (let entity = 0; entity < length; entity++) {
    const match = matches.match[entity] as number;
    if (match < 0) continue;
    let at = decoded.featureOffsets[match] as number;
    for (let column = 0; column <= lastColumn; column++) {
      const slot = slotOf[column] as number;
      if (slot < 0) {
        at = skipFields(view, at, 1);
        continue;
      }
      const type = columnTypes[column] as ValueType;
      const { value, next } = readValue(type, view, bytes, at);
      at = next;
      if (value === null) {
        (nulls[slot] as Uint8Array)[entity] = 1;
        continue;
      }
      const target = values[slot] as ValueColumn;
      if (type === 'bool') (target as Uint8Array)[entity] = value ? 1 : 0;
      else (target as unknown[])[entity] = value;
    }
  }
  return {
    status: matches.status,
    eventTime: matches.eventTime,
    nulls,
    values,
  };
}

function transferablesOf(result: PointInTimeTaskResult): ArrayBuffer[] {
  const buffers = new Set<ArrayBuffer>([
    result.status.buffer as ArrayBuffer,
    result.eventTime.buffer as ArrayBuffer,
  ]);
  for (const column of result.nulls) buffers.add(column.buffer as ArrayBuffer);
  for (const column of result.values) if (!Array.isArray(column)) buffers.add(column.buffer as ArrayBuffer);
  return [...buffers];
}

export default function pointInTimeTask(task: PointInTimeTask) {
  const result = runPointInTimeTask(task);
  return move({
    get [transferableSymbol]() {
      return transferablesOf(result);
    },
    get [valueSymbol]() {
      return result;
    },
  } as unknown as ArrayBuffer);
}
