import { describe, expect, it } from 'vitest';
import { createMemoryOnlineStore } from '../../src/adapters/memory/memory-online-store.js';
import { FStoreError } from '../../src/domain/errors.js';
import { describeOnlineStoreConformance, rowAt } from '../conformance/online-store.js';

describeOnlineStoreConformance('memory', async () => {
  const store = createMemoryOnlineStore();
  return { store, cleanup: () => store.close() };
});

describe('memory online store', () => {
  it('expires by the injected clock: a row is absent from its expiry on', async () => {
    let nowMs = 1_000;
    const store = createMemoryOnlineStore({ now: () => nowMs });
    await store.writeMany([{ key: 'k', value: rowAt(1, 'v'), expireAtMs: 2_000 }]);
    nowMs = 1_999;
    expect(await store.readMany(['k'])).toHaveLength(1);
    expect((await store.readMany(['k']))[0]).not.toBeNull();
    nowMs = 2_000;
    expect(await store.readMany(['k'])).toEqual([null]);
    // Expired rows do not take part in last-write-wins.
    expect(await store.writeMany([{ key: 'k', value: rowAt(0, 'older'), expireAtMs: 0 }])).toEqual({
      written: 1,
      stale: 0,
    });
    await store.close();
  });

  it('keeps its own copy of written rows and hands out copies', async () => {
    const store = createMemoryOnlineStore();
    const value = rowAt(1, 'abc');
    await store.writeMany([{ key: 'k', value, expireAtMs: 0 }]);
    value.fill(0);
    const [first] = await store.readMany(['k']);
    (first as Uint8Array).fill(0);
    expect(Buffer.from((await store.readMany(['k']))[0] as Uint8Array)).toEqual(Buffer.from(rowAt(1, 'abc')));
    await store.close();
  });

  it('rejects a value without an event time prefix and a bad expiry, naming the entry', async () => {
    const store = createMemoryOnlineStore();
    await expect(
      store.writeMany([{ key: 'k', value: new Uint8Array(3), expireAtMs: 0 }]),
    ).rejects.toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('entries[0].value'),
    });
    await expect(store.writeMany([{ key: 'k', value: rowAt(1), expireAtMs: -5 }])).rejects.toMatchObject({
      code: 'invalid_argument',
      message: expect.stringContaining('entries[0].expireAtMs'),
    });
    await store.close();
  });

  it("fails with 'unavailable' once closed", async () => {
    const store = createMemoryOnlineStore();
    await store.close();
    await expect(store.readMany(['k'])).rejects.toBeInstanceOf(FStoreError);
    await expect(store.ping()).rejects.toMatchObject({ code: 'unavailable' });
  });

  it('rejects an invalid sweep interval, naming the option', () => {
    expect(() => createMemoryOnlineStore({ sweepIntervalMs: 0 })).toThrow(/memory\.sweepIntervalMs/);
  });
});
