import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { JoinKey } from '../../src/domain/model.js';
import type { StreamAggregationDefinition } from '../../src/domain/stream-aggregation.js';
import type { AggregationSpec } from '../../src/domain/window-aggregator.js';
import type { SourceRecord } from '../../src/ports/event-source.js';
import { createEventDecoder } from '../../src/stream/event-decoder.js';
import { PartitionTask } from '../../src/stream/partition-task.js';

// The reason a dead letter carries (header fstore.reason) for each kind of bad record, and the
// README's words for them. `malformed`: the record is not an event — its bytes do not decode, or
// the key or the event time is missing or mistyped. `invalid`: an event (key and time read) with a
// value its aggregation cannot take — a non-numeric value for a numeric aggregation among them.

const joinKeys: JoinKey[] = [
  { name: 'user_id', type: 'string' },
  { name: 'merchant_id', type: 'int64' },
];

function definition(aggregations: AggregationSpec[]): StreamAggregationDefinition {
  return {
    name: 'payments',
    topic: 'payments',
    encoding: 'json',
    keyFields: ['user', 'merchant'],
    entities: ['user', 'merchant'],
    eventTimeField: 'ts',
    eventTimeUnit: 'epoch_millis',
    watermarkBoundMicros: 0,
    allowedLatenessMicros: 60_000_000,
    idleTimeoutMs: 60_000,
    emitFollowingEmptyWindow: false,
    aggregations,
    ttlMs: 0,
    online: true,
    owner: '',
    description: '',
    tags: {},
  };
}

const window = { sizeMicros: 10_000_000, slideMicros: 10_000_000 };
const count: AggregationSpec = { name: 'n', function: 'count', ...window };
const sum: AggregationSpec = { name: 'total', function: 'sum', field: 'amount', ...window };
const last: AggregationSpec = { name: 'last_amount', function: 'last', field: 'amount', ...window };

/** The dead-letter reason of each record (null: applied), through the partition task. */
function reasons(aggregations: AggregationSpec[], values: readonly unknown[]): (string | null)[] {
  const spec = definition(aggregations);
  const task = PartitionTask.fresh(
    0,
    { spec, boundMicros: 0, decode: createEventDecoder(spec, 7, joinKeys) },
    0n,
    0,
  );
  const records: SourceRecord[] = values.map((value, offset) => ({
    offset: String(offset),
    timestamp: '0',
    value: Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)),
  }));
  const { deadLetters } = task.process(records);
  return records.map(
    (record) => deadLetters.find((letter) => letter.offset === record.offset)?.reason ?? null,
  );
}

const event = (extra: Record<string, unknown>) => ({ user: 'u1', merchant: 1, ts: 1_000, ...extra });

describe('dead-letter reasons', () => {
  it('a record that is not an event is malformed: bytes, key or event time', () => {
    expect(
      reasons(
        [count, sum],
        [
          '{"user": "u1", "merchant": 1, "ts": ', // not JSON
          '[1, 2]', // not an object
          { merchant: 1, ts: 1_000 }, // no key field
          event({ merchant: 'one' }), // a key field of the wrong type
          { user: 'u1', merchant: 1 }, // no event time
          event({ ts: 'soon' }), // an event time of the wrong type
          event({ amount: 2 }), // an event
        ],
      ),
    ).toEqual(['malformed', 'malformed', 'malformed', 'malformed', 'malformed', 'malformed', null]);
  });

  it('a non-numeric value for a numeric aggregation is invalid, whichever the aggregation', () => {
    // sum alone, sum with last (last yields a double feature), last alone: the same word each time.
    for (const aggregations of [
      [count, sum],
      [count, sum, last],
      [count, last],
    ])
      expect(
        reasons(aggregations, [
          event({ amount: 'ten' }),
          event({ amount: { value: 1 } }),
          event({ amount: 2 }),
        ]),
        aggregations.map((aggregation) => aggregation.name).join(', '),
      ).toEqual(['invalid', 'invalid', null]);
  });

  it('the README names the reasons as the dead letters do', () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const start = readme.indexOf('### The stream tier: `fstore stream`');
    expect(start).toBeGreaterThan(-1);
    const section = readme
      .slice(start, readme.indexOf('\nSemantics worth knowing', start))
      .replace(/\s+/g, ' ');
    const sentences = section.split(/(?<=[.:])\s(?=[A-Z*`])/);
    const about = (phrase: string) => sentences.filter((sentence) => sentence.includes(phrase));
    // A non-numeric value for a numeric aggregation: said to be invalid, never malformed.
    const nonNumeric = about('non-numeric value');
    expect(nonNumeric.length).toBeGreaterThan(0);
    for (const sentence of nonNumeric) {
      expect(sentence).toMatch(/\binvalid\b/);
      expect(sentence).not.toMatch(/malformed/i);
    }
    // Records that do not decode, or lack a key or an event time: malformed.
    const notJson = about('not JSON/MessagePack');
    expect(notJson.length).toBeGreaterThan(0);
    for (const sentence of notJson) expect(sentence).toMatch(/malformed/i);
  });
});
