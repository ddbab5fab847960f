import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { ChainableCommander } from 'ioredis';
import { Cluster, Command, type Redis } from 'ioredis';
import { FStoreError, invalidArgument } from '../../domain/errors.js';
import { eventTimeBytes } from '../../domain/online-codec.js';
import type { OnlineEntry, OnlineStore, OnlineWriteResult } from '../../ports/online-store.js';
import { describeConnectionFailure } from '../connection-failure.js';
import { createRedisClient, type RedisClient } from './client.js';
import type { RedisOnlineStoreOptions } from './options.js';
import { validateRedisOnlineStoreOptions } from './options.js';

/**
 * The online store on Redis or Redis Cluster (DESIGN §4, §6).
 *
 * - Reads: one MGET on a single server; on a cluster one MGET per hash slot (MGET cannot cross
 *   slots), sent as ONE pipeline per master node, all nodes in parallel. ioredis writes a pipeline
 *   to its socket in one write, so a call costs one round trip per node, whatever the batch size.
 * - Writes: `lua/write-rows.lua` compares the stored 8-byte event time with the new one and sets
 *   the row atomically; many rows per EVALSHA (one slot each on a cluster), one pipeline per node.
 *   A server that lacks the script (first call, restart, SCRIPT FLUSH) answers NOSCRIPT to a call
 *   that then wrote nothing: the store loads the script and sends those calls again, once.
 * - Failure: no offline queue and no command retries, so while Redis is down every call fails at
 *   once with FStoreError 'unavailable'; the client reconnects by itself with a bounded backoff.
 */

// ioredis routes and checks pipelines with this very function, so our grouping always agrees.
const calculateSlot = createRequire(import.meta.url)('cluster-key-slot') as (key: string) => number;

/**
 * Rows per EVALSHA. The script blocks Redis while it runs: measured here at ~3 µs per row (Redis
 * 7.0, 10-double rows, no expiry; ~6 µs with one), so 128 rows keep each call under a millisecond
 * and reads of other clients interleave between the calls of a big batch. 256 or 512 rows per call
 * cost Redis no less per row (measured).
 */
const rowsPerScriptCall = 128;

/** `reason`: our own plain words (never the driver's text, which may name addresses). */
function unavailable(reason: string, cause?: unknown): FStoreError {
  return new FStoreError('unavailable', `online store (Redis) is unavailable: ${reason}`, { cause });
}

/** A driver failure: `cause` keeps its text for the server log; callers get plain words. */
const unavailableFrom = (cause: unknown): FStoreError => unavailable(describeConnectionFailure(cause), cause);

// Reply errors that say "not now" rather than "wrong request": a retry may succeed.
const transientReplyErrors = new Set([
  'CLUSTERDOWN',
  'TRYAGAIN',
  'LOADING',
  'MASTERDOWN',
  'READONLY',
  'BUSY',
  'MOVED',
  'ASK',
  'NOAUTH',
  'WRONGPASS',
]);

/** Translates anything ioredis throws into the FStoreError the rest of FStore understands. */
function translateError(error: unknown): FStoreError {
  if (error instanceof FStoreError) return error;
  const reason = error instanceof Error ? error.message : String(error);
  // Anything but a reply from Redis (refused or closed connection, timeout, exhausted retries)
  // means Redis could not answer.
  if (!(error instanceof Error) || error.name !== 'ReplyError') {
    // ioredis's wording for "the socket is gone and we do not queue" names an option of ours.
    return unavailableFrom(error);
  }
  const replyCode = reason.split(' ', 1)[0] as string;
  if (transientReplyErrors.has(replyCode)) return unavailableFrom(error);
  if (replyCode === 'OOM') {
    return new FStoreError('resource_exhausted', 'online store (Redis) is out of memory', {
      cause: error,
    });
  }
  // The gRPC edge never sends an internal error's message to the caller; the log keeps it.
  return new FStoreError('internal', `online store (Redis) failed: ${reason}`, { cause: error });
}

function validateEntries(entries: readonly OnlineEntry[]): void {
  for (let index = 0; index < entries.length; index++) {
    const entry = entries[index] as OnlineEntry;
    if (typeof entry.key !== 'string') throw invalidArgument(`entries[${index}].key`, 'must be a string');
    if (!(entry.value instanceof Uint8Array) || entry.value.byteLength < eventTimeBytes) {
      throw invalidArgument(
        `entries[${index}].value`,
        `must start with an ${eventTimeBytes}-byte event time (got ${entry.value?.byteLength ?? 0} bytes)`,
      );
    }
    if (!Number.isSafeInteger(entry.expireAtMs) || entry.expireAtMs < 0) {
      throw invalidArgument(
        `entries[${index}].expireAtMs`,
        `must be 0 or a positive integer (ms since the epoch), got ${entry.expireAtMs}`,
      );
    }
  }
}

/** Rejects with 'unavailable' after `timeoutMs`: the last line of defence against a hang. */
function withDeadline<T>(promise: Promise<T>, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(unavailable(`no answer within ${timeoutMs} ms`)), timeoutMs);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** Pipeline replies: the first error wins (nothing is reported as done when part of it failed). */
function repliesOf(replies: [Error | null, unknown][] | null, expected: number): unknown[] {
  if (replies === null || replies.length !== expected) throw unavailable('the pipeline was aborted');
  const values: unknown[] = new Array(expected);
  for (let index = 0; index < expected; index++) {
    const [error, value] = replies[index] as [Error | null, unknown];
    if (error) throw error;
    values[index] = value;
  }
  return values;
}

/** Indices of the input grouped by node and slot, in input order within each slot. */
type SlotGroups = Map<string, Map<number, number[]>>;

function groupBySlot(cluster: Cluster, keys: readonly string[]): SlotGroups {
  const groups: SlotGroups = new Map();
  for (let index = 0; index < keys.length; index++) {
    const slot = calculateSlot(keys[index] as string);
    const nodes = cluster.slots[slot];
    if (nodes === undefined || nodes.length === 0) throw unavailable(`no cluster node serves slot ${slot}`);
    // The whole node list (master first, then replicas), as ioredis groups a pipeline's slots: one
    // group per master, except for a moment after a MOVED, when it may split into two pipelines.
    const group = nodes.length === 1 ? (nodes[0] as string) : nodes.join(';');
    let slots = groups.get(group);
    if (slots === undefined) {
      slots = new Map();
      groups.set(group, slots);
    }
    const indices = slots.get(slot);
    if (indices === undefined) slots.set(slot, [index]);
    else indices.push(index);
  }
  return groups;
}

/** One EVALSHA of the write script: its keys (for cluster routing) and its whole RESP frame. */
interface WriteCall {
  readonly keys: string[];
  readonly frame: Buffer;
}

/** Decimal digits of a non-negative safe integer. */
function digitsOf(value: number): number {
  let digits = 1;
  for (let rest = value; rest >= 10; rest = Math.floor(rest / 10)) digits++;
  return digits;
}

/** Bytes of `$<length>\r\n<argument>\r\n`. */
const bulkBytes = (length: number): number => digitsOf(length) + length + 5;

/** Writes the decimal digits of a non-negative safe integer at `at`; returns the offset after them. */
function writeDigits(frame: Buffer, at: number, value: number): number {
  const end = at + digitsOf(value);
  let rest = value;
  for (let position = end - 1; position >= at; position--) {
    frame[position] = 0x30 + (rest % 10);
    rest = Math.floor(rest / 10);
  }
  return end;
}

function writeCrlf(frame: Buffer, at: number): number {
  frame[at] = 0x0d;
  frame[at + 1] = 0x0a;
  return at + 2;
}

/** Writes `<prefix><value>\r\n` (a RESP array or bulk length); returns the offset after it. */
function writeLength(frame: Buffer, at: number, prefix: number, value: number): number {
  frame[at] = prefix;
  return writeCrlf(frame, writeDigits(frame, at + 1, value));
}

const arrayPrefix = 0x2a; // '*'
const bulkPrefix = 0x24; // '$'

/**
 * The RESP frame of `EVALSHA sha n key… row expiry row expiry…` for entries[indices[start..end)],
 * written straight into one buffer. ioredis's own encoder (the arguments spread, flattened,
 * measured twice and copied through a string per argument) took more CPU than encoding the rows
 * themselves: ~3 µs per row of ~11 in a --cpu-prof of materialization; this takes under 1 µs.
 */
function encodeWriteCall(
  sha: string,
  keys: readonly string[],
  entries: readonly OnlineEntry[],
  indices: readonly number[],
  start: number,
  end: number,
): WriteCall {
  const count = end - start;
  const callKeys: string[] = new Array(count);
  const keyBytes = new Int32Array(count);
  let size =
    1 + digitsOf(3 + 3 * count) + 2 + bulkBytes(7) + bulkBytes(sha.length) + bulkBytes(digitsOf(count));
  for (let position = 0; position < count; position++) {
    const index = indices[start + position] as number;
    const entry = entries[index] as OnlineEntry;
    const key = keys[index] as string;
    callKeys[position] = key;
    const length = Buffer.byteLength(key);
    keyBytes[position] = length;
    size += bulkBytes(length) + bulkBytes(entry.value.byteLength) + bulkBytes(digitsOf(entry.expireAtMs));
  }
  const frame = Buffer.allocUnsafe(size);
  let at = writeLength(frame, 0, arrayPrefix, 3 + 3 * count);
  at = writeLength(frame, at, bulkPrefix, 7);
  at += frame.write('EVALSHA', at, 'latin1');
  at = writeCrlf(frame, at);
  at = writeLength(frame, at, bulkPrefix, sha.length);
  at += frame.write(sha, at, 'latin1');
  at = writeCrlf(frame, at);
  at = writeLength(frame, at, bulkPrefix, digitsOf(count));
  at = writeCrlf(frame, writeDigits(frame, at, count));
  for (let position = 0; position < count; position++) {
    at = writeLength(frame, at, bulkPrefix, keyBytes[position] as number);
    at += frame.write(callKeys[position] as string, at, 'utf8');
    at = writeCrlf(frame, at);
  }
  for (let position = 0; position < count; position++) {
    const entry = entries[indices[start + position] as number] as OnlineEntry;
    at = writeLength(frame, at, bulkPrefix, entry.value.byteLength);
    frame.set(entry.value, at);
    at = writeCrlf(frame, at + entry.value.byteLength);
    at = writeLength(frame, at, bulkPrefix, digitsOf(entry.expireAtMs));
    at = writeCrlf(frame, writeDigits(frame, at, entry.expireAtMs));
  }
  if (at !== size) throw new Error(`write call frame: wrote ${at} of ${size} bytes`);
  return { keys: callKeys, frame };
}

/**
 * An ioredis command whose bytes are a prepared frame. ioredis reads only `args` besides them:
 * the keys, to route a cluster pipeline (EVALSHA's key positions follow its key count).
 */
class PreparedCommand extends Command {
  readonly #frame: Buffer;

  constructor(sha: string, call: WriteCall) {
    super('evalsha', [sha, String(call.keys.length), call.keys]); // flattened by Command
    this.#frame = call.frame;
  }

  override toWritable(): Buffer {
    return this.#frame;
  }
}

/** The write calls of `indices` (input order kept), at most `rowsPerScriptCall` rows each. */
function planWriteCalls(
  sha: string,
  keys: readonly string[],
  entries: readonly OnlineEntry[],
  indices: readonly number[],
  calls: WriteCall[],
): void {
  for (let start = 0; start < indices.length; start += rowsPerScriptCall)
    calls.push(
      encodeWriteCall(
        sha,
        keys,
        entries,
        indices,
        start,
        Math.min(start + rowsPerScriptCall, indices.length),
      ),
    );
}

const isNoScript = (error: Error | null): boolean => error?.message.startsWith('NOSCRIPT') === true;

function sumWriteResults(results: unknown[]): OnlineWriteResult {
  let written = 0;
  let stale = 0;
  for (const result of results) {
    const [callWritten, callStale] = result as [number, number];
    written += callWritten;
    stale += callStale;
  }
  return { written, stale };
}

interface ConnectionWatch {
  /** Resolves when the first connection attempt has ended (ready, failed or timed out). */
  readonly firstAttempt: Promise<void>;
  isFirstAttemptOver(): boolean;
  /**
   * The last connection failure since the last 'ready', as ioredis reported it: the error itself,
   * so its `code` (ECONNREFUSED on an AggregateError with an empty message, …) still names the cause.
   */
  lastError(): unknown;
}

function watchConnection(client: RedisClient, connectTimeoutMs: number): ConnectionWatch {
  let over = false;
  let lastError: unknown;
  let endFirstAttempt: () => void = () => {};
  const firstAttempt = new Promise<void>((resolve) => {
    endFirstAttempt = resolve;
  });
  const settle = (): void => {
    if (over) return;
    over = true;
    clearTimeout(timer);
    endFirstAttempt();
  };
  const timer = setTimeout(settle, connectTimeoutMs);
  timer.unref();
  client.on('ready', () => {
    lastError = undefined;
    settle();
  });
  // Listening to 'error' also keeps ioredis from printing every failed reconnect attempt.
  client.on('error', (error: unknown) => {
    lastError = error ?? new Error('unknown connection error');
  });
  client.on('close', settle);
  client.on('end', settle);
  return { firstAttempt, isFirstAttemptOver: () => over, lastError: () => lastError };
}

export function createRedisOnlineStore(options: RedisOnlineStoreOptions): OnlineStore {
  const resolved = validateRedisOnlineStoreOptions(options);
  const lua = readFileSync(new URL('./lua/write-rows.lua', import.meta.url), 'utf8');
  const sha = createHash('sha1').update(lua).digest('hex');
  const { keyPrefix, commandTimeoutMs } = resolved;
  const client = createRedisClient(resolved, 'fstore-online');
  const connection = watchConnection(client, resolved.connectTimeoutMs);
  let closed = false;
  // A function, not an inline check: the status changes across an await, which TS cannot see.
  const isReady = (): boolean => client.status === 'ready';

  async function whenReady(): Promise<void> {
    if (closed) throw unavailable('the store is closed');
    if (isReady()) return;
    if (!connection.isFirstAttemptOver()) await connection.firstAttempt;
    if (!isReady()) {
      const lastError = connection.lastError();
      throw lastError === undefined
        ? unavailable(`not connected (${client.status})`)
        : unavailableFrom(lastError);
    }
  }

  /** Runs `operation` once Redis is ready, bounded in time, with errors translated. */
  async function call<T>(operation: () => Promise<T>): Promise<T> {
    try {
      await whenReady();
      return await withDeadline(operation(), commandTimeoutMs);
    } catch (error) {
      throw translateError(error);
    }
  }

  const prefixed = (key: string): string => keyPrefix + key;

  async function readSingle(redis: Redis, keys: string[]): Promise<(Uint8Array | null)[]> {
    return redis.mgetBuffer(keys);
  }

  async function readCluster(cluster: Cluster, keys: string[]): Promise<(Uint8Array | null)[]> {
    const results: (Uint8Array | null)[] = new Array(keys.length).fill(null);
    const groups = groupBySlot(cluster, keys);
    await Promise.all(
      Array.from(groups.values(), async (slots) => {
        const pipeline = cluster.pipeline();
        for (const indices of slots.values())
          pipeline.mgetBuffer(indices.map((index) => keys[index] as string));
        const replies = repliesOf(await pipeline.exec(), slots.size);
        let reply = 0;
        for (const indices of slots.values()) {
          const values = replies[reply++] as (Buffer | null)[];
          for (let position = 0; position < indices.length; position++) {
            results[indices[position] as number] = values[position] ?? null;
          }
        }
      }),
    );
    return results;
  }

  async function loadScript(): Promise<void> {
    const nodes = client instanceof Cluster ? client.nodes('master') : [client];
    await Promise.all(nodes.map((node) => node.script('LOAD', lua)));
  }

  /**
   * Sends the calls in one pipeline (`newPipeline` picks the node); calls refused with NOSCRIPT
   * wrote nothing, so they are sent once more after loading the script. Replies in call order.
   */
  async function sendWriteCalls(newPipeline: () => ChainableCommander, calls: readonly WriteCall[]) {
    const send = async (batch: readonly WriteCall[]) => {
      const pipeline = newPipeline() as ChainableCommander & { sendCommand(command: Command): unknown };
      for (const call of batch) pipeline.sendCommand(new PreparedCommand(sha, call));
      const replies = await pipeline.exec();
      if (replies === null || replies.length !== batch.length) throw unavailable('the pipeline was aborted');
      return replies;
    };
    const replies = await send(calls);
    const refused = replies.flatMap(([error], index) => (isNoScript(error) ? [index] : []));
    if (refused.length > 0) {
      await loadScript();
      const again = await send(refused.map((index) => calls[index] as WriteCall));
      refused.forEach((index, position) => {
        replies[index] = again[position] as [Error | null, unknown];
      });
    }
    return repliesOf(replies, calls.length);
  }

  async function writeSingle(redis: Redis, keys: string[], entries: readonly OnlineEntry[]) {
    const calls: WriteCall[] = [];
    planWriteCalls(
      sha,
      keys,
      entries,
      Array.from(keys, (_, index) => index),
      calls,
    );
    return sumWriteResults(await sendWriteCalls(() => redis.pipeline(), calls));
  }

  async function writeCluster(cluster: Cluster, keys: string[], entries: readonly OnlineEntry[]) {
    const groups = groupBySlot(cluster, keys);
    const perNode = await Promise.all(
      Array.from(groups.values(), async (slots) => {
        const calls: WriteCall[] = [];
        for (const indices of slots.values()) planWriteCalls(sha, keys, entries, indices, calls);
        return sendWriteCalls(() => cluster.pipeline(), calls);
      }),
    );
    return sumWriteResults(perNode.flat());
  }

  return {
    async readMany(keys) {
      if (keys.length === 0) return [];
      const fullKeys = keys.map(prefixed);
      return call(() =>
        client instanceof Cluster ? readCluster(client, fullKeys) : readSingle(client, fullKeys),
      );
    },

    async writeMany(entries) {
      validateEntries(entries);
      if (entries.length === 0) return { written: 0, stale: 0 };
      const fullKeys = entries.map((entry) => prefixed(entry.key));
      return call(() =>
        client instanceof Cluster
          ? writeCluster(client, fullKeys, entries)
          : writeSingle(client, fullKeys, entries),
      );
    },

    async ping() {
      await call(async () => {
        if (client instanceof Cluster) {
          const masters = client.nodes('master');
          if (masters.length === 0) throw unavailable('no cluster master is known');
          await Promise.all(masters.map((node) => node.ping()));
        } else {
          await client.ping();
        }
      });
    },

    async close() {
      if (closed) return;
      closed = true;
      try {
        if (client.status === 'ready') await withDeadline(client.quit(), commandTimeoutMs);
      } catch {
        // Closing anyway: a failed QUIT only means the server is already gone.
      } finally {
        client.disconnect();
      }
    },
  };
}
