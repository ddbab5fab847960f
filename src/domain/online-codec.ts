import { Packr } from 'msgpackr';
import type { FeatureDefinition, FeatureValue, KeyValue, ScalarValue, ValueType } from './model.js';

/**
 * The online layout, shared by every OnlineStore so they hold identical bytes.
 *
 * Key:   `<view id>:<key part>|<key part>...` — the view id is a small registry-assigned integer,
 *        so a key costs a few bytes more than the entity key itself; `|` and `\` in string parts
 *        are escaped with `\`. One key per (view, entity): a lookup of V views for N entities is
 *        V×N keys in one MGET.
 * Value: 8 bytes of event time (signed big-endian microseconds since the epoch) followed by the
 *        msgpack array [view version, value 1, ..., value n] in that version's feature order.
 *        The fixed-width prefix lets the store's last-write-wins check read the time without
 *        decoding (GETRANGE key 0 7 in Redis); the version lets a reader decode rows written
 *        before a schema change. A plain msgpack blob per key measured 18.6 B per double value
 *        where a Redis hash costs 33 B (DESIGN §8).
 */

export const eventTimeBytes = 8;
const twoTo32 = 2 ** 32;

const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'bigint' });

function escapeKeyPart(part: string): string {
  return part.includes('|') || part.includes('\\') ? part.replace(/[\\|]/g, '\\$&') : part;
}

export function encodeOnlineKey(viewId: number, keyValues: readonly KeyValue[]): string {
  let key = `${viewId}:`;
  for (let index = 0; index < keyValues.length; index++) {
    const part = keyValues[index] as KeyValue;
    if (index > 0) key += '|';
    key += typeof part === 'bigint' ? part.toString() : escapeKeyPart(part);
  }
  return key;
}

function toStoredValue(type: ValueType, value: FeatureValue): unknown {
  if (value === null) return null;
  switch (type) {
    case 'int64': {
      const big = value as bigint;
      // msgpack packs small integers in 1 to 5 bytes when they are numbers.
      return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER)
        ? Number(big)
        : big;
    }
    case 'int64_list':
      return (value as readonly bigint[]).map((item) => toStoredValue('int64', item));
    case 'float_list': {
      // Embeddings: 4 bytes per element as one bin, not 5-9 bytes per msgpack float.
      const floats = Float32Array.from(value as readonly number[]);
      return new Uint8Array(floats.buffer);
    }
    default:
      return value;
  }
}

function fromStoredValue(type: ValueType, stored: unknown): FeatureValue {
  if (stored === null || stored === undefined) return null;
  switch (type) {
    case 'int64':
      return typeof stored === 'bigint' ? stored : BigInt(stored as number);
    case 'float':
    case 'double':
    case 'timestamp':
      return Number(stored);
    case 'int64_list':
      return (stored as unknown[]).map((item) => (typeof item === 'bigint' ? item : BigInt(item as number)));
    case 'float_list': {
      const bytes = stored as Uint8Array;
      // Copy: the decoded bin may sit at an offset that is not 4-byte aligned.
      const aligned = new Uint8Array(bytes.byteLength);
      aligned.set(bytes);
      return Array.from(new Float32Array(aligned.buffer));
    }
    case 'double_list':
      return (stored as unknown[]).map(Number);
    case 'bytes':
      return stored as Uint8Array;
    default:
      return stored as ScalarValue;
  }
}

/** Encodes one row: `values[i]` is the value of `features[i]`, already validated for its type. */
export function encodeOnlineRow(
  version: number,
  eventTimeMicros: number,
  features: readonly FeatureDefinition[],
  values: readonly FeatureValue[],
): Uint8Array {
  const stored: unknown[] = new Array(values.length + 1);
  stored[0] = version;
  for (let index = 0; index < values.length; index++) {
    stored[index + 1] = toStoredValue(
      (features[index] as FeatureDefinition).type,
      values[index] as FeatureValue,
    );
  }
  const body = packr.pack(stored);
  const row = Buffer.allocUnsafe(eventTimeBytes + body.length);
  const high = Math.floor(eventTimeMicros / twoTo32);
  row.writeInt32BE(high, 0);
  row.writeUInt32BE(eventTimeMicros - high * twoTo32, 4);
  body.copy(row, eventTimeBytes);
  return row;
}

export function readEventTime(row: Uint8Array): number {
  const view = Buffer.isBuffer(row) ? row : Buffer.from(row.buffer, row.byteOffset, row.byteLength);
  return view.readInt32BE(0) * twoTo32 + view.readUInt32BE(4);
}

export interface DecodedOnlineRow {
  readonly eventTimeMicros: number;
  readonly version: number;
  /** Stored values in the writing version's feature order; convert with `decodeStoredValue`. */
  readonly storedValues: readonly unknown[];
}

export function decodeOnlineRow(row: Uint8Array): DecodedOnlineRow {
  const view = Buffer.isBuffer(row) ? row : Buffer.from(row.buffer, row.byteOffset, row.byteLength);
  const body = packr.unpack(view.subarray(eventTimeBytes)) as unknown[];
  return {
    eventTimeMicros: readEventTime(view),
    version: Number(body[0]),
    storedValues: body.slice(1),
  };
}

/** The value of feature `type` at `index` of a decoded row, or null. */
export function decodeStoredValue(type: ValueType, row: DecodedOnlineRow, index: number): FeatureValue {
  return fromStoredValue(type, row.storedValues[index]);
}
