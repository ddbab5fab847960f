import { FStoreError, invalidArgument } from '../../domain/errors.js';
import { eventTimeBytes } from '../../domain/online-codec.js';
import type { OnlineEntry, OnlineStore, OnlineWriteResult } from '../../ports/online-store.js';

/**
 * The online store in this process's memory, for the embedded default (DESIGN §7) and tests:
 * the same semantics as Redis (last-write-wins by the 8-byte event time prefix, equal time
 * overwrites, absolute expiry) without durability or sharing between processes.
 */
export interface MemoryOnlineStoreOptions {
  /** Clock in milliseconds since the epoch, for expiry. Default `Date.now`. */
  readonly now?: () => number;
  /** How often expired entries are swept out (they are also dropped when read). Default one minute. */
  readonly sweepIntervalMs?: number;
}

export const memoryOnlineStoreDefaults = {
  sweepIntervalMs: 60_000, // one minute
} satisfies Partial<MemoryOnlineStoreOptions>;

interface StoredRow {
  readonly value: Uint8Array;
  /** 0 means never. */
  readonly expireAtMs: number;
}

/**
 * Orders two rows by their event time prefix exactly, over the whole int64 range: signed high
 * words first, then unsigned low words (a double would round beyond 2^53).
 */
/** A copy that owns its memory (Buffer#slice would share it). */
function copyBytes(bytes: Uint8Array): Uint8Array {
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return copy;
}

function compareEventTimes(left: Uint8Array, right: Uint8Array): number {
  const leftView = new DataView(left.buffer, left.byteOffset, eventTimeBytes);
  const rightView = new DataView(right.buffer, right.byteOffset, eventTimeBytes);
  const high = leftView.getInt32(0) - rightView.getInt32(0);
  return high !== 0 ? high : leftView.getUint32(4) - rightView.getUint32(4);
}

export function createMemoryOnlineStore(options: MemoryOnlineStoreOptions = {}): OnlineStore {
  const now = options.now ?? Date.now;
  const sweepIntervalMs = options.sweepIntervalMs ?? memoryOnlineStoreDefaults.sweepIntervalMs;
  if (!Number.isInteger(sweepIntervalMs) || sweepIntervalMs <= 0) {
    throw invalidArgument('memory.sweepIntervalMs', `must be a positive integer, got ${sweepIntervalMs}`);
  }
  const rows = new Map<string, StoredRow>();
  let closed = false;

  const isExpired = (row: StoredRow, nowMs: number): boolean =>
    row.expireAtMs !== 0 && row.expireAtMs <= nowMs;

  function sweep(): void {
    const nowMs = now();
    for (const [key, row] of rows) if (isExpired(row, nowMs)) rows.delete(key);
  }
  // unref: a forgotten store must not keep the process alive.
  const sweeper = setInterval(sweep, sweepIntervalMs);
  sweeper.unref();

  function assertOpen(): void {
    if (closed) throw new FStoreError('unavailable', 'online store (memory) is closed');
  }

  /** The live row under `key`, dropping it if it has expired. */
  function liveRow(key: string, nowMs: number): StoredRow | undefined {
    const row = rows.get(key);
    if (row === undefined || !isExpired(row, nowMs)) return row;
    rows.delete(key);
    return undefined;
  }

  return {
    async readMany(keys) {
      assertOpen();
      const nowMs = now();
      // Copies, as Redis would hand out: a caller mutating a result must not change the store.
      return keys.map((key) => liveRow(key, nowMs)?.value ?? null).map((value) => value && copyBytes(value));
    },

    async writeMany(entries: readonly OnlineEntry[]): Promise<OnlineWriteResult> {
      assertOpen();
      for (let index = 0; index < entries.length; index++) {
        const entry = entries[index] as OnlineEntry;
        if (!(entry.value instanceof Uint8Array) || entry.value.byteLength < eventTimeBytes) {
          throw invalidArgument(
            `entries[${index}].value`,
            `must start with an ${eventTimeBytes}-byte event time`,
          );
        }
        if (!Number.isSafeInteger(entry.expireAtMs) || entry.expireAtMs < 0) {
          throw invalidArgument(
            `entries[${index}].expireAtMs`,
            `must be 0 or a positive integer, got ${entry.expireAtMs}`,
          );
        }
      }
      const nowMs = now();
      let written = 0;
      let stale = 0;
      for (const entry of entries) {
        const stored = liveRow(entry.key, nowMs);
        if (stored !== undefined && compareEventTimes(stored.value, entry.value) > 0) {
          stale++;
          continue;
        }
        written++;
        // Like SET ... PXAT in the past: the write happens and the key is gone at once.
        if (entry.expireAtMs !== 0 && entry.expireAtMs <= nowMs) rows.delete(entry.key);
        else rows.set(entry.key, { value: copyBytes(entry.value), expireAtMs: entry.expireAtMs });
      }
      return { written, stale };
    },

    async ping() {
      assertOpen();
    },

    async close() {
      closed = true;
      clearInterval(sweeper);
      rows.clear();
    },
  };
}
