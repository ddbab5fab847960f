import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import type { JoinKey } from '../../src/domain/model.js';
import { encodeOnlineKey } from '../../src/domain/online-codec.js';
import type { StreamAggregationDefinition } from '../../src/domain/stream-aggregation.js';
import { createEventDecoder } from '../../src/stream/event-decoder.js';

const joinKeys: JoinKey[] = [
  { name: 'user_id', type: 'string' },
  { name: 'merchant_id', type: 'int64' },
];

function definition(extra: Partial<StreamAggregationDefinition> = {}): StreamAggregationDefinition {
  return {
    name: 'payments',
    topic: 'payments',
    encoding: 'json',
    keyFields: ['user', 'merchant'],
    entities: ['user', 'merchant'],
    eventTimeField: 'ts',
    eventTimeUnit: 'epoch_millis',
    watermarkBoundMicros: 0,
    allowedLatenessMicros: 0,
    idleTimeoutMs: 60_000,
    emitFollowingEmptyWindow: false,
    aggregations: [
      { name: 'n', function: 'count', sizeMicros: 10, slideMicros: 10 },
      { name: 'total', function: 'sum', field: 'amount', sizeMicros: 10, slideMicros: 10 },
      { name: 'last_amount', function: 'last', field: 'amount', sizeMicros: 10, slideMicros: 10 },
      { name: 'items', function: 'distinct_count', field: 'item', sizeMicros: 10, slideMicros: 10 },
    ],
    ttlMs: 0,
    online: true,
    owner: '',
    description: '',
    tags: {},
    ...extra,
  };
}

const json = (value: unknown) => Buffer.from(JSON.stringify(value));
const decodeJson = createEventDecoder(definition(), 7, joinKeys);
const key = (user: string, merchant: bigint) => encodeOnlineKey(7, [user, merchant]);

describe('event decoder', () => {
  it('reads keys, the event time and only the fields the aggregations read', () => {
    expect(
      decodeJson(json({ user: 'u1', merchant: 42, ts: 1_700_000_000_123, amount: 2.5, item: 'a', other: 1 })),
    ).toEqual({
      ok: true,
      event: { key: key('u1', 42n), time: 1_700_000_000_123_000, fields: { amount: 2.5, item: 'a' } },
    });
    // int64 keys as decimal strings (JSON cannot carry 2^63 − 1 as a number); nulls are absent values.
    expect(decodeJson(json({ user: 'u|2', merchant: '9223372036854775807', ts: 0, amount: null }))).toEqual({
      ok: true,
      event: { key: key('u|2', 9_223_372_036_854_775_807n), time: 0, fields: {} },
    });
  });

  it('reads every event time unit, keeping microseconds', () => {
    const at = (unit: StreamAggregationDefinition['eventTimeUnit'], ts: unknown) => {
      const decoded = createEventDecoder(
        definition({ eventTimeUnit: unit }),
        7,
        joinKeys,
      )(json({ user: 'u', merchant: 1, ts }));
      return decoded.ok ? decoded.event.time : decoded.problem;
    };
    expect(at('epoch_micros', 1_700_000_000_000_001)).toBe(1_700_000_000_000_001);
    expect(at('epoch_seconds', 1_700_000_000.25)).toBe(1_700_000_000_250_000);
    expect(at('iso8601', '2026-01-02T03:04:05.123456Z')).toBe(Date.UTC(2026, 0, 2, 3, 4, 5) * 1000 + 123_456);
    expect(at('iso8601', '2026-01-02 04:04:05+01:00')).toBe(Date.UTC(2026, 0, 2, 3, 4, 5) * 1000);
    expect(at('iso8601', 'yesterday')).toBe('event time field ts: "yesterday" is not an ISO 8601 time');
    expect(at('epoch_millis', '1700000000000')).toBe(
      'event time field ts: a number (epoch_millis) is required, got string',
    );
    expect(at('epoch_seconds', 1e300)).toMatch(/out of range/);
  });

  it('reads MessagePack maps, with 64-bit integers as such', () => {
    const packr = new Packr({ useRecords: false, int64AsType: 'bigint' });
    const decode = createEventDecoder(definition({ encoding: 'msgpack' }), 7, joinKeys);
    expect(decode(packr.pack({ user: 'u1', merchant: 2n ** 62n, ts: 5, amount: 3n, item: true }))).toEqual({
      ok: true,
      event: { key: key('u1', 2n ** 62n), time: 5000, fields: { amount: 3n, item: true } },
    });
    expect(decode(Buffer.from([0x82, 0xa1]))).toMatchObject({
      ok: false,
      problem: expect.stringMatching(/^not msgpack/),
    });
    expect(decode(packr.pack([1, 2]))).toEqual({
      ok: false,
      problem: 'the record must be a msgpack map, got list',
    });
  });

  it('says what is wrong and where for records that are not events', () => {
    const problem = (bytes: Buffer | null) => {
      const decoded = decodeJson(bytes);
      return decoded.ok ? 'ok' : decoded.problem;
    };
    expect(problem(null)).toBe('the record has no value');
    expect(problem(Buffer.from('{"user": '))).toMatch(/^not json: /);
    expect(problem(json('text'))).toBe('the record must be a JSON object, got string');
    expect(problem(json({ merchant: 1, ts: 0 }))).toBe('key field user: missing');
    expect(problem(json({ user: 5, merchant: 1, ts: 0 }))).toBe(
      'key field user: a string is required, got number',
    );
    expect(problem(json({ user: 'u', merchant: 1.5, ts: 0 }))).toBe(
      'key field merchant: an int64 is required (an integer, or its decimal string), got number',
    );
    expect(problem(json({ user: 'u', merchant: '9223372036854775808', ts: 0 }))).toMatch(
      /^key field merchant: an int64 is required .*got "9223372036854775808"/,
    );
    expect(problem(json({ user: 'u', merchant: 1 }))).toBe('event time field ts: missing');
    expect(problem(json({ user: 'u', merchant: 1, ts: 0, amount: { value: 1 } }))).toBe(
      'field amount: a scalar is required, got object',
    );
    // `last` yields the view's double feature: a string cannot be its value.
    expect(problem(json({ user: 'u', merchant: 1, ts: 0, amount: 'ten' }))).toBe(
      'field amount: a number is required (last yields a double feature), got string',
    );
    // distinct_count takes any scalar.
    expect(problem(json({ user: 'u', merchant: 1, ts: 0, item: false }))).toBe('ok');
  });
});
