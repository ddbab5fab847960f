import { FStoreError } from '../../../domain/errors.js';
import type { ValueType } from '../../../domain/model.js';

/**
 * Reading PostgreSQL's binary COPY output (`COPY (…) TO STDOUT (FORMAT binary)`, "Binary Format"
 * in the COPY documentation) of point-in-time rows: `(rank int4, event_time timestamptz,
 * created_time timestamptz, <feature columns>)`.
 *
 * Two halves. `createRowSegmenter` runs where the bytes arrive: it only walks field lengths to
 * cut the stream into row-aligned segments that end at a rank change, so each segment holds every
 * row of its ranks and can be merged on its own, in any worker, in parallel. `decodeSegment`
 * runs in the worker: it reads ranks and times of every row into typed arrays, and values only
 * of the rows a merge chose (`readValue`), so the 9 of 10 rows a point-in-time join skips are
 * never decoded.
 */

const signature = 'PGCOPY\n\xff\r\n\0';
const signatureBytes = 11;
// PostgreSQL timestamps count microseconds from 2000-01-01 UTC.
const postgresEpochMicros = 946_684_800_000_000;
const twoTo32 = 4_294_967_296;

/** A row-aligned run of COPY rows holding every row of the ranks firstRank..lastRank. */
export interface RowSegment {
  /** Exactly the segment's rows (no header, no trailer), in a buffer of its own (transferable). */
  readonly bytes: Uint8Array;
  readonly rows: number;
  readonly firstRank: number;
  readonly lastRank: number;
}

export interface RowSegmenter {
  /** Takes the next bytes of the COPY output; returns the segments completed by them. */
  push(chunk: Uint8Array): RowSegment[];
  /** The end of the COPY output: the last segment, if any rows remain. Throws when the data is cut short. */
  end(): RowSegment | undefined;
}

function corrupt(message: string): FStoreError {
  return new FStoreError('internal', `binary COPY output: ${message}`);
}

/**
 * Cuts binary COPY output into segments of at least `segmentRows` rows (except the last), each
 * ending where the rank (the first column, int4, ascending) changes; or, with `ranked: false`, of
 * exactly `segmentRows` rows (except the last) whatever the first column. Each byte is copied once
 * into the segment under construction; a completed segment is handed over with its own ArrayBuffer.
 */
export function createRowSegmenter(
  fieldCount: number,
  segmentRows: number,
  options: { readonly ranked?: boolean } = {},
): RowSegmenter {
  // Unranked, firstRank and lastRank stay 0.
  const ranked = options.ranked ?? true;
  let buffer = new Uint8Array(1 << 20);
  let view = new DataView(buffer.buffer);
  let length = 0;
  // Complete rows of the current segment end at `scanned`.
  let scanned = 0;
  let rows = 0;
  let firstRank = 0;
  let lastRank = 0;
  let headerDone = false;
  let trailerSeen = false;

  const append = (chunk: Uint8Array) => {
    if (length + chunk.length > buffer.length) {
      const grown = new Uint8Array(Math.max(buffer.length * 2, length + chunk.length));
      grown.set(buffer.subarray(0, length));
      buffer = grown;
      view = new DataView(buffer.buffer);
    }
    buffer.set(chunk, length);
    length += chunk.length;
  };

  /** Hands over rows [0, scanned) and keeps the rest in a new buffer. */
  const cut = (): RowSegment => {
    const segment: RowSegment = { bytes: buffer.subarray(0, scanned), rows, firstRank, lastRank };
    const rest = buffer.subarray(scanned, length);
    const next = new Uint8Array(Math.max(1 << 20, rest.length * 2));
    next.set(rest);
    buffer = next;
    view = new DataView(buffer.buffer);
    length = rest.length;
    scanned = 0;
    rows = 0;
    return segment;
  };

  const readHeader = (): boolean => {
    if (length < signatureBytes + 8) return false;
    for (let index = 0; index < signatureBytes; index++)
      if (buffer[index] !== signature.charCodeAt(index)) throw corrupt('bad signature');
    const extension = view.getInt32(signatureBytes + 4);
    const start = signatureBytes + 8 + extension;
    if (length < start) return false;
    buffer.copyWithin(0, start, length);
    length -= start;
    headerDone = true;
    return true;
  };

  return {
    push(chunk) {
      if (trailerSeen) {
        if (chunk.length > 0) throw corrupt('data after the trailer');
        return [];
      }
      append(chunk);
      if (!headerDone && !readHeader()) return [];
      const segments: RowSegment[] = [];
      for (;;) {
        if (scanned + 2 > length) break;
        const fields = view.getInt16(scanned);
        if (fields === -1) {
          trailerSeen = true;
          length = scanned;
          break;
        }
        if (fields !== fieldCount) throw corrupt(`a row has ${fields} fields, expected ${fieldCount}`);
        // Walk the row's fields; stop if it is not complete yet.
        let at = scanned + 2;
        let complete = true;
        let rank = 0;
        for (let field = 0; field < fields; field++) {
          if (at + 4 > length) {
            complete = false;
            break;
          }
          const size = view.getInt32(at);
          if (field === 0 && ranked) {
            if (size !== 4) throw corrupt('the rank column is not an int4');
            if (at + 8 > length) {
              complete = false;
              break;
            }
            rank = view.getInt32(at + 4);
          }
          at += 4 + Math.max(size, 0);
        }
        if (!complete || at > length) break;
        const rowBytes = at - scanned;
        // A full segment ends before the first row of a new rank; this row then starts the next.
        if (rows >= segmentRows && (rank !== lastRank || !ranked)) segments.push(cut());
        const start = scanned === 0 && rows === 0;
        if (start) firstRank = rank;
        else if (rank < lastRank) throw corrupt(`rank ${rank} after rank ${lastRank}: rows are not sorted`);
        lastRank = rank;
        rows++;
        scanned += rowBytes;
      }
      return segments;
    },
    end() {
      if (!trailerSeen) throw corrupt('the output ended without its trailer');
      return rows > 0 ? cut() : undefined;
    },
  };
}

/** Feature rows of one segment as the merge kernel takes them, plus where each row starts. */
export interface DecodedSegment {
  readonly keyRanks: Int32Array;
  readonly eventTimes: Float64Array;
  readonly createdTimes: Float64Array;
  /** Byte offset of each row's first feature field (after rank and the two times). */
  readonly featureOffsets: Int32Array;
}

// The epoch offset split in 32-bit words, so that adding it takes two exact steps: the result is
// exact whenever it is a safe integer, even where PostgreSQL's own count is not (before ~1685).
const epochHigh = Math.floor(postgresEpochMicros / twoTo32);
const epochLow = postgresEpochMicros - epochHigh * twoTo32;

const readTimestamp = (view: DataView, at: number): number =>
  (view.getInt32(at) + epochHigh) * twoTo32 + (view.getUint32(at + 4) + epochLow);

/** Ranks, event and created times (microseconds since 1970) of every row of a segment. */
export function decodeSegment(bytes: Uint8Array, rowCount: number): DecodedSegment {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const keyRanks = new Int32Array(rowCount);
  const eventTimes = new Float64Array(rowCount);
  const createdTimes = new Float64Array(rowCount);
  const featureOffsets = new Int32Array(rowCount);
  let at = 0;
  for (let row = 0; row < rowCount; row++) {
    const fields = view.getInt16(at);
    // rank: length 4 + int4; event_time and created_time: length 8 + int8 each.
    keyRanks[row] = view.getInt32(at + 6);
    if (view.getInt32(at + 10) !== 8 || view.getInt32(at + 22) !== 8)
      throw corrupt(`row ${row}: event or created time is null`);
    eventTimes[row] = readTimestamp(view, at + 14);
    createdTimes[row] = readTimestamp(view, at + 26);
    at += 34;
    featureOffsets[row] = at;
    for (let field = 3; field < fields; field++) {
      const size = view.getInt32(at);
      at += 4 + Math.max(size, 0);
    }
  }
  return { keyRanks, eventTimes, createdTimes, featureOffsets };
}

/** Skips `count` fields from `at`; returns the offset after them. */
export function skipFields(view: DataView, at: number, count: number): number {
  let position = at;
  for (let field = 0; field < count; field++) {
    const size = view.getInt32(position);
    position += 4 + Math.max(size, 0);
  }
  return position;
}

const textDecoder = new TextDecoder();

function readScalar(type: string, view: DataView, bytes: Uint8Array, at: number, size: number): unknown {
  switch (type) {
    case 'int64':
      return view.getBigInt64(at);
    case 'double':
      return view.getFloat64(at);
    case 'float':
      return view.getFloat32(at);
    case 'string':
      return textDecoder.decode(bytes.subarray(at, at + size));
    case 'bool':
      return bytes[at] !== 0;
    case 'bytes':
      return bytes.slice(at, at + size);
    case 'timestamp':
      return readTimestamp(view, at);
    default:
      throw corrupt(`no decoding for ${type}`);
  }
}

/**
 * The value of the field at `at` (its length word) as the domain holds a value of `type`: int64
 * as bigint, timestamps as microseconds, float as the float32 widened to a double, lists as
 * arrays; null for SQL NULL. Returns the value and the offset of the next field.
 */
export function readValue(
  type: ValueType,
  view: DataView,
  bytes: Uint8Array,
  at: number,
): { value: unknown; next: number } {
  const size = view.getInt32(at);
  if (size < 0) return { value: null, next: at + 4 };
  const start = at + 4;
  const next = start + size;
  if (!type.endsWith('_list')) return { value: readScalar(type, view, bytes, start, size), next };
  const element = type.slice(0, -'_list'.length);
  const dimensions = view.getInt32(start);
  if (dimensions === 0) return { value: [], next };
  if (dimensions !== 1) throw corrupt(`a ${type} value has ${dimensions} dimensions`);
  const count = view.getInt32(start + 12);
  const values = new Array<unknown>(count);
  let position = start + 20;
  for (let index = 0; index < count; index++) {
    const itemSize = view.getInt32(position);
    values[index] = itemSize < 0 ? null : readScalar(element, view, bytes, position + 4, itemSize);
    position += 4 + Math.max(itemSize, 0);
  }
  return { value: values, next };
}

/**
 * Every field of every row of a row-aligned run of COPY rows (a segment's bytes), column-major:
 * `types[i]` is the domain type of field i, read as `readValue` reads it (null for SQL NULL).
 * Fixed-width scalars are read in place, without readValue's per-field result object: this loop
 * runs once per value that materialization copies.
 */
export function decodeColumns(bytes: Uint8Array, rowCount: number, types: readonly ValueType[]): unknown[][] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fieldCount = types.length;
  const columns = types.map(() => new Array<unknown>(rowCount));
  let at = 0;
  for (let row = 0; row < rowCount; row++) {
    const fields = view.getInt16(at);
    if (fields !== fieldCount) throw corrupt(`row ${row} has ${fields} fields, expected ${fieldCount}`);
    at += 2;
    for (let field = 0; field < fieldCount; field++) {
      const column = columns[field] as unknown[];
      const size = view.getInt32(at);
      if (size < 0) {
        column[row] = null;
        at += 4;
        continue;
      }
      switch (types[field]) {
        case 'double':
          column[row] = view.getFloat64(at + 4);
          break;
        case 'int64':
          column[row] = view.getBigInt64(at + 4);
          break;
        case 'timestamp':
          column[row] = readTimestamp(view, at + 4);
          break;
        case 'float':
          column[row] = view.getFloat32(at + 4);
          break;
        case 'bool':
          column[row] = bytes[at + 4] !== 0;
          break;
        default:
          column[row] = readValue(types[field] as ValueType, view, bytes, at).value;
      }
      at += 4 + size;
    }
  }
  if (at !== bytes.byteLength) throw corrupt(`${bytes.byteLength - at} bytes after the last row`);
  return columns;
}
