/**
 * The online store port: only the operations the serving path uses. Keys and values are opaque
 * here; `src/domain/online-codec.ts` defines their layout, so every implementation stores the
 * same bytes and the conformance suite (test/conformance/online-store.ts) can hold them to the
 * same behaviour.
 */

export interface OnlineEntry {
  /** Key from `encodeOnlineKey` (the store adds its own namespace prefix). */
  readonly key: string;
  /** Encoded row from `encodeOnlineRow`: an 8-byte big-endian event time (µs) then the values. */
  readonly value: Uint8Array;
  /** Absolute expiry, milliseconds since the epoch; 0 means the key never expires. */
  readonly expireAtMs: number;
}

export interface OnlineWriteResult {
  /** Entries stored because they were at least as new as the stored row. */
  readonly written: number;
  /** Entries ignored because the stored row had a later event time. */
  readonly stale: number;
}

export interface OnlineStore {
  /**
   * Reads many keys in one round trip (one per node for a cluster), in order; null where the key
   * is absent or expired. Rejects with FStoreError 'unavailable' when the store cannot answer.
   */
  readMany(keys: readonly string[]): Promise<(Uint8Array | null)[]>;
  /**
   * Last-write-wins by event time, atomically per key: an entry older than the stored row is
   * ignored; an equal event time overwrites. Entries for the same key apply in order.
   */
  writeMany(entries: readonly OnlineEntry[]): Promise<OnlineWriteResult>;
  /** Resolves when the store answers; rejects with 'unavailable' otherwise. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
