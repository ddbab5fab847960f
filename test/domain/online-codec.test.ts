import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { FeatureDefinition, FeatureValue, KeyValue, ValueType } from '../../src/domain/model.js';
import {
  decodeOnlineRow,
  decodeStoredValue,
  encodeOnlineKey,
  encodeOnlineRow,
  eventTimeBytes,
  readEventTime,
} from '../../src/domain/online-codec.js';

const feature = (type: ValueType, name: string = type): FeatureDefinition => ({
  name,
  type,
  description: '',
  tags: {},
});

/** Buffers (what msgpackr decodes bins to) compared as plain bytes. */
function plain(value: unknown): unknown {
  if (value instanceof Uint8Array) return Uint8Array.from(value);
  return Array.isArray(value) ? value.map(plain) : value;
}

function roundTrip(features: readonly FeatureDefinition[], values: readonly FeatureValue[], time = 1_000) {
  const row = encodeOnlineRow(3, time, features, values);
  const decoded = decodeOnlineRow(row);
  return {
    row,
    decoded,
    values: features.map((_, index) => decodeStoredValue(features, decoded, index)),
  };
}

describe('online codec: values', () => {
  // One example per value type, with its awkward cases; float values are float32-exact.
  const examples: Record<ValueType, FeatureValue[]> = {
    int64: [
      0n,
      1n,
      -1n,
      127n,
      -32n,
      2n ** 31n,
      2n ** 53n - 1n,
      2n ** 53n,
      -(2n ** 53n) - 1n,
      2n ** 63n - 1n,
      -(2n ** 63n),
    ],
    double: [0, 1.5, -1e300, Number.MAX_VALUE, Number.MIN_VALUE, Number.POSITIVE_INFINITY, 0.1 + 0.2],
    float: [0, Math.fround(1.1), Math.fround(-3.4e38), 0.5],
    string: ['', 'a', 'ünïcødé ✓', 'a|b\\c', 'x'.repeat(70_000)],
    bool: [true, false],
    bytes: [new Uint8Array(0), Uint8Array.of(0, 255, 1), new Uint8Array(300).fill(7)],
    timestamp: [0, 1_700_000_000_123_456, -86_400_000_000, Number.MAX_SAFE_INTEGER],
    int64_list: [[], [1n, -(2n ** 63n), 2n ** 63n - 1n, 0n]],
    double_list: [[], [1.5, -2, 0, 1e-300]],
    float_list: [
      [],
      [Math.fround(0.1), -1, 3.5, Math.fround(1e-20)],
      Array.from({ length: 768 }, (_, i) => i / 4),
    ],
    string_list: [[], ['a', '', 'ü|\\']],
    bool_list: [[], [true, false, true]],
    bytes_list: [[], [Uint8Array.of(1, 2), new Uint8Array(0)]],
  };

  for (const [type, values] of Object.entries(examples) as [ValueType, FeatureValue[]][]) {
    it(`round-trips ${type} values and null`, () => {
      for (const value of [...values, null]) {
        const { values: decoded } = roundTrip(
          [feature('int64', 'before'), feature(type), feature('bool', 'after')],
          [7n, value, true],
        );
        expect(plain(decoded), `${type} ${String(value)}`).toEqual(plain([7n, value, true]));
      }
    });
  }

  it('round-trips NaN doubles', () => {
    expect(roundTrip([feature('double')], [Number.NaN]).values[0]).toBeNaN();
  });

  it('keeps -0 for a packed double', () => {
    expect(Object.is(roundTrip([feature('double')], [-0]).values[0], -0)).toBe(true);
  });

  it('returns int64 as bigint exactly beyond 2^53', () => {
    const { values } = roundTrip([feature('int64')], [2n ** 53n + 1n]);
    expect(values[0]).toBe(2n ** 53n + 1n);
  });

  it('keeps the writing version; an index beyond its features reads as null', () => {
    const features = [feature('double')];
    const { decoded } = roundTrip(features, [2.5]);
    expect(decoded.version).toBe(3);
    expect(decodeStoredValue(features, decoded, 1)).toBeNull();
  });

  it('packs the doubles of a row into one bin: 10 doubles in 8 + 1 + 1 + 2 + 80 bytes', () => {
    const features = Array.from({ length: 10 }, (_, index) => feature('double', `f${index}`));
    const { row, values } = roundTrip(
      features,
      features.map((_, index) => index + 0.5),
    );
    // time, array header, version, bin8 header and length, 10 × 8 bytes
    expect(row.byteLength).toBe(eventTimeBytes + 1 + 1 + 2 + 80);
    expect(values).toEqual(features.map((_, index) => index + 0.5));
  });

  it('keeps null, NaN, infinities and -0 apart among packed doubles mixed with other types', () => {
    const features = [
      feature('double', 'a'),
      feature('string', 'b'),
      feature('double', 'c'),
      feature('double', 'd'),
    ];
    const { values } = roundTrip(features, [null, 'x', Number.NaN, Number.NEGATIVE_INFINITY]);
    expect(values).toEqual([null, 'x', Number.NaN, Number.NEGATIVE_INFINITY]);
    expect(roundTrip(features, [-0, null, Number.MAX_VALUE, Number.MIN_VALUE]).values).toEqual([
      -0,
      null,
      Number.MAX_VALUE,
      Number.MIN_VALUE,
    ]);
  });

  it('decodes rows that sit at an odd offset of a larger buffer', () => {
    const features = [feature('float_list'), feature('string')];
    const row = encodeOnlineRow(1, 5, features, [[1, 2, 3], 'x']);
    const shifted = new Uint8Array(row.byteLength + 3);
    shifted.set(row, 3);
    const view = shifted.subarray(3);
    const decoded = decodeOnlineRow(view);
    expect(readEventTime(view)).toBe(5);
    expect(decodeStoredValue(features, decoded, 0)).toEqual([1, 2, 3]);
  });
});

describe('online codec: event time prefix', () => {
  it('stores negative and pre-epoch times as signed big-endian int64', () => {
    for (const time of [
      0,
      1,
      -1,
      -(2 ** 32),
      -(2 ** 32) - 1,
      2 ** 32,
      -86_400_000_000,
      Number.MIN_SAFE_INTEGER,
    ]) {
      const row = encodeOnlineRow(1, time, [], []);
      expect(Buffer.from(row).readBigInt64BE(0), `time ${time}`).toBe(BigInt(time));
      expect(readEventTime(row)).toBe(time);
      expect(decodeOnlineRow(row).eventTimeMicros).toBe(time);
    }
  });

  it('round-trips every safe-integer time, and the prefix orders like the times', () => {
    const time = fc.oneof(
      fc.integer({ min: -(2 ** 40), max: 2 ** 40 }),
      fc.integer({ min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER }),
    );
    fc.assert(
      fc.property(time, time, (left, right) => {
        const leftRow = encodeOnlineRow(1, left, [], []);
        const rightRow = encodeOnlineRow(1, right, [], []);
        expect(readEventTime(leftRow)).toBe(left);
        const order = Buffer.from(leftRow).readBigInt64BE(0) - Buffer.from(rightRow).readBigInt64BE(0);
        expect(Math.sign(Number(order))).toBe(Math.sign(left - right));
      }),
    );
  });
});

describe('online codec: keys', () => {
  it('joins the view id and key parts, escaping | and \\ in string parts', () => {
    expect(encodeOnlineKey(7, ['user_000123'])).toBe('7:user_000123');
    expect(encodeOnlineKey(7, [123n, -5n])).toBe('7:123|-5');
    expect(encodeOnlineKey(7, ['a|b', 'c\\d'])).toBe('7:a\\|b|c\\\\d');
    expect(encodeOnlineKey(7, ['a\\|b'])).toBe('7:a\\\\\\|b');
    expect(encodeOnlineKey(0, [''])).toBe('0:');
    expect(encodeOnlineKey(2 ** 31, [2n ** 63n - 1n])).toBe(`${2 ** 31}:9223372036854775807`);
  });

  it('keeps composite keys apart that a naive join would merge', () => {
    expect(encodeOnlineKey(1, ['a|b', 'c'])).not.toBe(encodeOnlineKey(1, ['a', 'b|c']));
    expect(encodeOnlineKey(1, ['a\\', 'b'])).not.toBe(encodeOnlineKey(1, ['a\\|b']));
    expect(encodeOnlineKey(1, ['1'])).not.toBe(encodeOnlineKey(11, ['']));
  });

  it('maps different (view, same-typed key tuple) to different keys', () => {
    const part = fc.oneof(fc.string({ unit: fc.constantFrom('a', '|', '\\', 'b', ':') }), fc.string());
    const keys = (length: number) => fc.array(part, { minLength: length, maxLength: length });
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 3 }),
        fc.integer({ min: 1, max: 3 }).chain((length) => fc.tuple(keys(length), keys(length))),
        (viewId, [left, right]) => {
          fc.pre(left.some((value, index) => value !== right[index]));
          expect(encodeOnlineKey(viewId, left)).not.toBe(encodeOnlineKey(viewId, right));
        },
      ),
    );
  });

  it('encodes int64 parts exactly, negative and beyond 2^53', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), (value: KeyValue) => {
        expect(encodeOnlineKey(5, [value])).toBe(`5:${value.toString()}`);
      }),
    );
  });
});
