import { Packr } from 'msgpackr';
import type { FeatureDefinition, FeatureValue, JoinKey, KeyValue, ScalarValue, ValueType } from './model.js';

/**
 * The online layout, shared by every OnlineStore so they hold identical bytes.
 *
 * Key:   `<view id>:<key part>|<key part>...` — the view id is a small registry-assigned integer,
 *        so a key costs a few bytes more than the entity key itself; `|` and `\` in string parts
 *        are escaped with `\`. One key per (view, entity): a lookup of V views for N entities is
 *        V×N keys in one MGET.
 * Value: 8 bytes of event time (signed big-endian microseconds since the epoch) followed by the
 *        msgpack array [view version, packed doubles, other values...] laid out by that
 *        version's feature list (see RowLayout). The fixed-width prefix lets the store's
 *        last-write-wins check read the time without decoding (GETRANGE key 0 7 in Redis); the
 *        version lets a reader decode rows written before a schema change. A blob per key costs
 *        about 17-19 B per double value where a Redis hash costs 33 B (DESIGN §8).
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

/**
 * The inverse of `encodeOnlineKey` given the view's join keys: the key values, or undefined when
 * `key` is not such a key.
 */
export function decodeOnlineKey(key: string, joinKeys: readonly JoinKey[]): KeyValue[] | undefined {
  const colon = key.indexOf(':');
  if (colon < 0) return undefined;
  const parts: string[] = [];
  let part = '';
  for (let index = colon + 1; index < key.length; index++) {
    const char = key[index]!;
    if (char === '\\' && index + 1 < key.length) part += key[++index];
    else if (char === '|') {
      parts.push(part);
      part = '';
    } else part += char;
  }
  parts.push(part);
  if (parts.length !== joinKeys.length) return undefined;
  const values: KeyValue[] = [];
  for (const [index, joinKey] of joinKeys.entries()) {
    const text = parts[index]!;
    if (joinKey.type === 'int64') {
      if (!/^-?\d+$/.test(text)) return undefined;
      values.push(BigInt(text));
    } else values.push(text);
  }
  return values;
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

/**
 * Where each feature of a view version sits in a stored row. Double features are packed into
 * one bin of 8 bytes each (little-endian binary64) instead of one 9-byte msgpack float each:
 * a 10-double row drops from 100 to 92 bytes, into a smaller allocator size class (measured by
 * bench/redis-memory.ts), and reading it is a DataView load instead of a msgpack decode.
 */
interface RowLayout {
  /** Per feature: ≥ 0 the index in the msgpack body; < 0 the packed double at -(slot + 1). */
  readonly slots: Int32Array;
  readonly packedCount: number;
}

const layouts = new WeakMap<readonly FeatureDefinition[], RowLayout>();

function layoutOf(features: readonly FeatureDefinition[]): RowLayout {
  let layout = layouts.get(features);
  if (!layout) {
    const slots = new Int32Array(features.length);
    let packed = 0;
    // Body: [version, packed doubles (only when there are any), other values...].
    let next = features.some((feature) => feature.type === 'double') ? 2 : 1;
    features.forEach((feature, index) => {
      slots[index] = feature.type === 'double' ? -(packed++ + 1) : next++;
    });
    layout = { slots, packedCount: packed };
    layouts.set(features, layout);
  }
  return layout;
}

// A null packed double: a signalling NaN that encoding never writes for a value (NaN values are
// written as the canonical quiet NaN), so it cannot be mistaken for one.
const nullLow = 0x0000_0001;
const nullHigh = 0x7ff0_0000;

/** Encodes one row: `values[i]` is the value of `features[i]`, already validated for its type. */
export function encodeOnlineRow(
  version: number,
  eventTimeMicros: number,
  features: readonly FeatureDefinition[],
  values: readonly FeatureValue[],
): Uint8Array {
  const layout = layoutOf(features);
  const stored: unknown[] = new Array(
    features.length - layout.packedCount + (layout.packedCount > 0 ? 2 : 1),
  );
  stored[0] = version;
  if (layout.packedCount > 0) {
    const packed = Buffer.allocUnsafe(layout.packedCount * 8);
    const view = new DataView(packed.buffer, packed.byteOffset, packed.byteLength);
    stored[1] = packed;
    for (let index = 0; index < features.length; index++) {
      const slot = layout.slots[index] as number;
      if (slot >= 0) continue;
      const offset = -(slot + 1) * 8;
      const value = values[index] as number | null;
      if (value === null) {
        view.setUint32(offset, nullLow, true);
        view.setUint32(offset + 4, nullHigh, true);
      } else {
        view.setFloat64(offset, Number.isNaN(value) ? Number.NaN : value, true);
      }
    }
  }
  for (let index = 0; index < features.length; index++) {
    const slot = layout.slots[index] as number;
    if (slot >= 0)
      stored[slot] = toStoredValue(
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
  /** The view version that wrote the row: its feature list decodes the values. */
  readonly version: number;
  /** The msgpack body: [version, packed doubles?, other values...]. */
  readonly body: readonly unknown[];
  /** The packed doubles, if the writing version had any. */
  readonly packed: DataView | undefined;
}

export function decodeOnlineRow(row: Uint8Array): DecodedOnlineRow {
  const view = Buffer.isBuffer(row) ? row : Buffer.from(row.buffer, row.byteOffset, row.byteLength);
  const body = packr.unpack(view.subarray(eventTimeBytes)) as unknown[];
  // Only a layout with doubles reads `packed`; for others body[1] may be any value.
  const second = body[1];
  const packed =
    second instanceof Uint8Array
      ? new DataView(second.buffer, second.byteOffset, second.byteLength)
      : undefined;
  return { eventTimeMicros: readEventTime(view), version: Number(body[0]), body, packed };
}

/**
 * Where feature `index` of `features` sits in the rows that version wrote (see RowLayout); -0x7fffffff
 * when the index is beyond them. Resolve once per version, then `decodeSlot` per row.
 */
export function featureSlot(features: readonly FeatureDefinition[], index: number): number {
  return layoutOf(features).slots[index] ?? missingSlot;
}

const missingSlot = -0x7fff_ffff;

/** The value of type `type` at `slot` of a decoded row, or null. */
export function decodeSlot(type: ValueType, row: DecodedOnlineRow, slot: number): FeatureValue {
  if (slot < 0) {
    const offset = -(slot + 1) * 8;
    const packed = row.packed;
    if (slot === missingSlot || !packed || offset + 8 > packed.byteLength) return null;
    if (packed.getUint32(offset + 4, true) === nullHigh && packed.getUint32(offset, true) === nullLow)
      return null;
    return packed.getFloat64(offset, true);
  }
  return fromStoredValue(type, row.body[slot]);
}

/**
 * The value at `index` of `features` — the feature list of the version that wrote the row
 * (`row.version`) — or null.
 */
export function decodeStoredValue(
  features: readonly FeatureDefinition[],
  row: DecodedOnlineRow,
  index: number,
): FeatureValue {
  const feature = features[index];
  return feature ? decodeSlot(feature.type, row, featureSlot(features, index)) : null;
}
