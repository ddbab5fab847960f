import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { FeatureDefinition, FeatureValue } from '../../src/domain/model.js';
import {
  decodeOnlineRow,
  decodeStoredValue,
  encodeOnlineKey,
  encodeOnlineRow,
} from '../../src/domain/online-codec.js';
import type { OnlineEntry, OnlineStore } from '../../src/ports/online-store.js';

/**
 * The behaviour every OnlineStore must show (src/ports/online-store.ts), run against each
 * implementation through a factory. The factory returns a fresh store over its own random key
 * prefix for every test, and a cleanup that closes it and deletes what the test wrote.
 */
export type OnlineStoreFactory = () => Promise<{ store: OnlineStore; cleanup: () => Promise<void> }>;

const int64Min = -(2n ** 63n);
const int64Max = 2n ** 63n - 1n;

/** A row whose 8-byte prefix is `eventTime` (any int64), followed by `payload`. */
export function rowAt(eventTime: bigint | number, payload = ''): Uint8Array {
  const body = Buffer.from(payload, 'utf8');
  const row = Buffer.alloc(8 + body.length);
  row.writeBigInt64BE(BigInt(eventTime), 0);
  body.copy(row, 8);
  return row;
}

const entry = (key: string, value: Uint8Array, expireAtMs = 0): OnlineEntry => ({ key, value, expireAtMs });

const feature = (name: string, type: FeatureDefinition['type']): FeatureDefinition => ({
  name,
  type,
  description: '',
  tags: {},
});

const toHex = (value: Uint8Array | null): string | null =>
  value === null ? null : Buffer.from(value).toString('hex');

export function describeOnlineStoreConformance(name: string, createStore: OnlineStoreFactory): void {
  describe(`OnlineStore conformance: ${name}`, () => {
    let store: OnlineStore;
    let cleanup: (() => Promise<void>) | undefined;

    beforeEach(async () => {
      ({ store, cleanup } = await createStore());
    });

    afterEach(async () => {
      // Unset when the factory failed (e.g. no server configured): that error is the one to see.
      await cleanup?.();
      cleanup = undefined;
    });

    it('answers ping', async () => {
      await expect(store.ping()).resolves.toBeUndefined();
    });

    it('reads absent keys as null and an empty read as an empty list', async () => {
      expect(await store.readMany(['absent:1', 'absent:2'])).toEqual([null, null]);
      expect(await store.readMany([])).toEqual([]);
      expect(await store.writeMany([])).toEqual({ written: 0, stale: 0 });
    });

    it('round-trips rows encoded by the real codec', async () => {
      const features = [
        feature('clicks', 'int64'),
        feature('ctr', 'double'),
        feature('country', 'string'),
        feature('active', 'bool'),
        feature('embedding', 'float_list'),
        feature('missing', 'double'),
      ];
      const rows: { key: string; values: FeatureValue[]; time: number }[] = [
        {
          key: encodeOnlineKey(3, ['user_000123']),
          values: [12n, 0.25, 'FR', true, [0.5, -1], null],
          time: 1,
        },
        {
          key: encodeOnlineKey(3, ['a|b\\c', 42n]),
          values: [2n ** 62n, -1e300, 'ünï|cødé', false, [], 1.5],
          time: 1_700_000_000_000_000,
        },
        {
          key: encodeOnlineKey(4, [-7n]),
          values: [-(2n ** 63n), 0, '', true, [3.25], null],
          time: -86_400_000_000,
        },
      ];
      const entries = rows.map((row) => entry(row.key, encodeOnlineRow(2, row.time, features, row.values)));
      expect(await store.writeMany(entries)).toEqual({ written: 3, stale: 0 });

      const read = await store.readMany(rows.map((row) => row.key));
      for (const [index, row] of rows.entries()) {
        const value = read[index] ?? null;
        expect(toHex(value)).toBe(toHex((entries[index] as OnlineEntry).value));
        const decoded = decodeOnlineRow(value as Uint8Array);
        expect(decoded.eventTimeMicros).toBe(row.time);
        expect(decoded.version).toBe(2);
        expect(features.map((_, position) => decodeStoredValue(features, decoded, position))).toEqual(
          row.values,
        );
      }
    });

    it('returns results in input order, duplicates included', async () => {
      await store.writeMany([entry('k1', rowAt(1, 'one')), entry('k2', rowAt(1, 'two'))]);
      const read = await store.readMany(['k2', 'nope', 'k1', 'k2', 'k1', 'nope']);
      expect(read.map(toHex)).toEqual(
        [rowAt(1, 'two'), null, rowAt(1, 'one'), rowAt(1, 'two'), rowAt(1, 'one'), null].map(toHex),
      );
    });

    describe('last-write-wins by event time', () => {
      it('ignores an older write and counts it stale', async () => {
        await store.writeMany([entry('k', rowAt(10, 'new'))]);
        expect(await store.writeMany([entry('k', rowAt(9, 'old'))])).toEqual({ written: 0, stale: 1 });
        expect((await store.readMany(['k'])).map(toHex)).toEqual([toHex(rowAt(10, 'new'))]);
      });

      it('overwrites on an equal event time', async () => {
        await store.writeMany([entry('k', rowAt(10, 'first'))]);
        expect(await store.writeMany([entry('k', rowAt(10, 'second'))])).toEqual({ written: 1, stale: 0 });
        expect((await store.readMany(['k'])).map(toHex)).toEqual([toHex(rowAt(10, 'second'))]);
      });

      it('lets a newer write win', async () => {
        await store.writeMany([entry('k', rowAt(10, 'old'))]);
        expect(await store.writeMany([entry('k', rowAt(11, 'new'))])).toEqual({ written: 1, stale: 0 });
        expect((await store.readMany(['k'])).map(toHex)).toEqual([toHex(rowAt(11, 'new'))]);
      });

      it('applies several writes to one key in one batch in order', async () => {
        const result = await store.writeMany([
          entry('k', rowAt(5, 'a')),
          entry('other', rowAt(1, 'x')),
          entry('k', rowAt(3, 'b')), // stale
          entry('k', rowAt(5, 'c')), // equal: overwrites a
          entry('k', rowAt(7, 'd')),
          entry('k', rowAt(6, 'e')), // stale
        ]);
        expect(result).toEqual({ written: 4, stale: 2 });
        expect((await store.readMany(['k', 'other'])).map(toHex)).toEqual(
          [rowAt(7, 'd'), rowAt(1, 'x')].map(toHex),
        );
      });

      it('keeps the order of hundreds of writes to a few keys in one batch', async () => {
        // Large enough that an implementation cutting batches into pieces must keep their order.
        const latest = new Map<string, number>();
        let written = 0;
        const entries = Array.from({ length: 600 }, (_, index) => {
          const key = `k${index % 3}`;
          const time = index % 4 === 3 ? index - 5 : index; // every fourth write is older
          const stored = latest.get(key);
          if (stored === undefined || stored <= time) {
            latest.set(key, time);
            written++;
          }
          return entry(key, rowAt(time, `#${index}`));
        });
        expect(await store.writeMany(entries)).toEqual({ written, stale: entries.length - written });
        const read = await store.readMany(['k0', 'k1', 'k2']);
        expect(read.map((value) => (value === null ? null : Buffer.from(value).readBigInt64BE(0)))).toEqual(
          ['k0', 'k1', 'k2'].map((key) => BigInt(latest.get(key) as number)),
        );
      });

      it('compares negative, pre-epoch and extreme event times as signed 64-bit integers', async () => {
        // Each step: (time, expected outcome). Byte-wise, -1 (0xff...) sorts after 1; it must not.
        const steps: [bigint, 'written' | 'stale'][] = [
          [-1n, 'written'],
          [-2n, 'stale'],
          [1n, 'written'],
          [-1n, 'stale'],
          [2n ** 32n - 1n, 'written'], // low word all ones, high word 0
          [2n ** 32n, 'written'], // high word 1, low word 0
          [2n ** 32n - 1n, 'stale'],
          [2n ** 53n + 1n, 'written'], // beyond a double's exact integers
          [2n ** 53n, 'stale'],
          [2n ** 53n + 1n, 'written'],
          [int64Max, 'written'],
          [int64Max - 1n, 'stale'],
        ];
        for (const [index, [time, outcome]] of steps.entries()) {
          const result = await store.writeMany([entry('k', rowAt(time, `step ${index}`))]);
          expect(result, `step ${index}: time ${time}`).toEqual(
            outcome === 'written' ? { written: 1, stale: 0 } : { written: 0, stale: 1 },
          );
        }

        const preEpoch: [bigint, 'written' | 'stale'][] = [
          [int64Min, 'written'],
          [-86_400_000_001n, 'written'],
          [-86_400_000_000n, 'written'], // 1969-12-31
          [-86_400_000_001n, 'stale'],
          [-(2n ** 32n) - 1n, 'written'], // high word -2, low word all ones
          [-(2n ** 32n), 'written'], // high word -1, low word 0
          [-(2n ** 32n) - 1n, 'stale'],
        ];
        for (const [index, [time, outcome]] of preEpoch.entries()) {
          const result = await store.writeMany([entry('p', rowAt(time, `pre ${index}`))]);
          expect(result, `pre-epoch step ${index}: time ${time}`).toEqual(
            outcome === 'written' ? { written: 1, stale: 0 } : { written: 0, stale: 1 },
          );
        }
        expect((await store.readMany(['k', 'p'])).map(toHex)).toEqual(
          [rowAt(int64Max, 'step 10'), rowAt(-(2n ** 32n), 'pre 5')].map(toHex),
        );
      });
    });

    describe('expiry', () => {
      it('treats an expiry in the past as absent (the write still counts)', async () => {
        const result = await store.writeMany([
          entry('past', rowAt(1, 'gone'), Date.now() - 1_000),
          entry('epoch', rowAt(1, 'gone'), 1),
          entry('future', rowAt(1, 'kept'), Date.now() + 3_600_000),
          entry('never', rowAt(1, 'kept'), 0),
        ]);
        expect(result).toEqual({ written: 4, stale: 0 });
        expect((await store.readMany(['past', 'epoch', 'future', 'never'])).map(toHex)).toEqual(
          [null, null, rowAt(1, 'kept'), rowAt(1, 'kept')].map(toHex),
        );
      });

      it('drops a row once its expiry has passed, after which an older write is accepted', async () => {
        const expireAtMs = Date.now() + 300;
        await store.writeMany([entry('short', rowAt(10, 'short'), expireAtMs)]);
        expect((await store.readMany(['short'])).map(toHex)).toEqual([toHex(rowAt(10, 'short'))]);
        expect(await store.writeMany([entry('short', rowAt(9, 'older'), expireAtMs)])).toEqual({
          written: 0,
          stale: 1,
        });

        await sleep(expireAtMs - Date.now() + 50);
        expect(await store.readMany(['short'])).toEqual([null]);
        expect(await store.writeMany([entry('short', rowAt(9, 'older'))])).toEqual({ written: 1, stale: 0 });
        expect((await store.readMany(['short'])).map(toHex)).toEqual([toHex(rowAt(9, 'older'))]);
      });

      it('keeps the order of writes with and without expiry to one key in one batch', async () => {
        const later = Date.now() + 3_600_000;
        const result = await store.writeMany([
          entry('m', rowAt(1, 'a'), 0),
          entry('m', rowAt(2, 'b'), later), // newer, expiring: replaces a
          entry('n', rowAt(1, 'c'), later),
          entry('n', rowAt(2, 'd'), 0), // newer, not expiring: replaces c
          entry('n', rowAt(1, 'e'), 0), // stale
        ]);
        expect(result).toEqual({ written: 4, stale: 1 });
        expect((await store.readMany(['m', 'n'])).map(toHex)).toEqual(
          [rowAt(2, 'b'), rowAt(2, 'd')].map(toHex),
        );
      });

      it('gives a row the expiry of the write that stored it; a stale write changes nothing', async () => {
        const soon = Date.now() + 300;
        await store.writeMany([entry('renewed', rowAt(1, 'v1'), soon), entry('kept', rowAt(5, 'v1'), 0)]);
        const result = await store.writeMany([
          entry('renewed', rowAt(2, 'v2'), 0), // newer, no expiry: the row no longer expires
          entry('kept', rowAt(4, 'stale'), Date.now() - 1_000), // stale: must not delete the row
        ]);
        expect(result).toEqual({ written: 1, stale: 1 });

        await sleep(soon - Date.now() + 50);
        expect((await store.readMany(['renewed', 'kept'])).map(toHex)).toEqual(
          [rowAt(2, 'v2'), rowAt(5, 'v1')].map(toHex),
        );
      });
    });

    it('handles large batches across many slots (5,000 keys)', { timeout: 30_000 }, async () => {
      const count = 5_000;
      const keys = Array.from({ length: count }, (_, index) =>
        encodeOnlineKey(7, [`user_${String(index).padStart(6, '0')}`]),
      );
      const first = keys.map((key, index) => entry(key, rowAt(100, `v${index}`)));
      expect(await store.writeMany(first)).toEqual({ written: count, stale: 0 });

      // Every other key gets an older row (stale), the rest a newer one.
      const second = keys.map((key, index) => entry(key, rowAt(index % 2 === 0 ? 99 : 101, `w${index}`)));
      expect(await store.writeMany(second)).toEqual({ written: count / 2, stale: count / 2 });

      const read = await store.readMany([...keys, 'absent']);
      expect(read).toHaveLength(count + 1);
      const expected = keys.map((_, index) =>
        index % 2 === 0 ? rowAt(100, `v${index}`) : rowAt(101, `w${index}`),
      );
      expect(read.map(toHex)).toEqual([...expected, null].map(toHex));
    });

    it('matches a last-write-wins oracle on random write sequences', { timeout: 60_000 }, async () => {
      const eventTime = fc.oneof(
        { weight: 4, arbitrary: fc.integer({ min: -3, max: 3 }).map(BigInt) }, // ties and signs
        {
          weight: 1,
          arbitrary: fc.constantFrom(int64Min, int64Max, -(2n ** 32n), 2n ** 32n - 1n, 2n ** 53n + 1n),
        },
        { weight: 1, arbitrary: fc.bigInt({ min: int64Min, max: int64Max }) },
      );
      const write = fc.record({ key: fc.integer({ min: 0, max: 4 }), time: eventTime });
      const batches = fc.array(fc.array(write, { minLength: 1, maxLength: 8 }), {
        minLength: 1,
        maxLength: 6,
      });

      let run = 0;
      await fc.assert(
        fc.asyncProperty(batches, async (batchList) => {
          run++;
          const keyOf = (key: number): string => `run${run}:k${key}`;
          const oracle = new Map<string, { time: bigint; value: Uint8Array }>();
          for (const [batchIndex, batch] of batchList.entries()) {
            let written = 0;
            let stale = 0;
            const entries = batch.map((item, index) => {
              const value = rowAt(item.time, `${batchIndex}.${index}`);
              const key = keyOf(item.key);
              const stored = oracle.get(key);
              if (stored !== undefined && stored.time > item.time) stale++;
              else {
                written++;
                oracle.set(key, { time: item.time, value });
              }
              return entry(key, value);
            });
            expect(await store.writeMany(entries)).toEqual({ written, stale });
          }
          const keys = [0, 1, 2, 3, 4].map(keyOf);
          const read = await store.readMany(keys);
          expect(read.map(toHex)).toEqual(keys.map((key) => toHex(oracle.get(key)?.value ?? null)));
        }),
        { numRuns: 100 },
      );
    });
  });
}
