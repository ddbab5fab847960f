import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import { FStoreError, invalidArgument } from '../../domain/errors.js';
import type { RateLimiter, RateLimits } from '../../ports/rate-limiter.js';
import {
  checkTake,
  createMemoryRateLimiter,
  makeRoom,
  overRateLimit,
  validateRateLimits,
} from '../memory/memory-rate-limiter.js';
import { createRedisClient } from './client.js';
import type { RedisOnlineStoreOptions } from './options.js';
import { validateRedisOnlineStoreOptions } from './options.js';

/**
 * Rate limits shared by every serving process and replica through token buckets in Redis, at a
 * fraction of a round trip per call: LEASES.
 *
 * - Each process keeps, per (principal, requests | rows), a local stock of tokens leased from the
 *   shared bucket `<prefix>rl:{<principal>}:req` / `:rows` (one hash tag: one cluster slot, so
 *   both buckets are taken in ONE atomic script call). A call that the local stock covers costs
 *   no I/O. Otherwise one EVALSHA of `lua/take-tokens.lua` refills the shared bucket by the time
 *   elapsed on Redis's clock and grants min(available, want), want = max(needed, lease size),
 *   or refuses and takes nothing; calls of one principal waiting for a lease share it.
 * - A lease is what this process used of that kind in the last `leaseWindowMs` (50 ms), at most
 *   that long at the full rate and a quarter of the burst: ~20 script calls per second per busy
 *   principal and process whatever its pace (both kinds in one call), and a process that uses
 *   little leases little.
 * - Leased tokens unused for `leaseTtlMs` are dropped, not returned: tokens only ever leave the
 *   shared bucket, so the sum granted to all processes never exceeds rate × time + burst. The
 *   price is a little under-use (about a lease per process when its pace drops).
 * - Each reply also tells how many tokens the shared bucket kept, so until at least `want` can
 *   have flowed in again a process refuses locally (with that wait as the hint) instead of asking:
 *   an over-limit principal costs a few round trips per second, not one per call.
 * - While the local stock runs low, the next lease is fetched in the background, so a principal
 *   under its limit does not wait for Redis at all.
 * - Redis down (any failure, timeout included): each process limits on its own with the same
 *   limits (the memory limiter), logs one warning per outage, and tries Redis again at most every
 *   `redisRetryIntervalMs`; its first answer ends the outage.
 */

export interface RateLimiterLogger {
  warn(object: object, message: string): void;
  info?(object: object, message: string): void;
}

export interface RedisRateLimiterOptions
  extends Pick<
    RedisOnlineStoreOptions,
    'url' | 'clusterNodes' | 'password' | 'keyPrefix' | 'connectTimeoutMs' | 'maxReconnectDelayMs'
  > {
  /** The limits of every principal. */
  readonly limits: RateLimits;
  /**
   * Longest wait for a lease before falling back to per-process limits. Shorter than the online
   * store's: a limiter that waits longer than a serving deadline is worse than none. Default 200 ms.
   */
  readonly commandTimeoutMs?: number;
  /** TLS options passed to ioredis as `tls` (for every node of a cluster). Default none. */
  readonly tls?: ConnectionOptions;
  /** Where the outage warning goes (and, with `info`, its end). Default: nowhere. */
  readonly logger?: RateLimiterLogger;
  /**
   * A lease is this long's worth of tokens at the pace the process used them lately, at least 1,
   * at most this long at the full rate and a quarter of the burst. 50 ms: ~20 round trips per
   * second per busy principal and process, while a lease stays small next to a second's worth, so
   * what processes hold unused stays small (and is used well within `leaseTtlMs`). The quarter of
   * the burst lets four processes hold a lease before one drains the bucket. Default 50 ms.
   */
  readonly leaseWindowMs?: number;
  /** Leased tokens unused this long are dropped, so an idle process hoards nothing. Default 250 ms. */
  readonly leaseTtlMs?: number;
  /** While Redis is down, how often a call tries it again. Default one second. */
  readonly redisRetryIntervalMs?: number;
  /** Most principals whose leases this process holds (idle ones are dropped first). Default 10,000. */
  readonly maxPrincipals?: number;
}

export const redisRateLimiterDefaults = {
  commandTimeoutMs: 200, // 200 ms
  leaseWindowMs: 50, // 50 ms
  leaseTtlMs: 250, // 250 ms
  redisRetryIntervalMs: 1_000, // one second
  maxPrincipals: 10_000,
} satisfies Partial<RedisRateLimiterOptions>;

function unavailable(reason: string): FStoreError {
  return new FStoreError('unavailable', `rate limiter (Redis) is unavailable: ${reason}`);
}

/** One kind of bucket (requests or rows) as configured. */
interface Kind {
  readonly limited: boolean;
  readonly rate: number;
  readonly burst: number;
  /** The largest lease: `leaseWindowMs` at the rate, at most a quarter of the burst, at least 1. */
  readonly maxLease: number;
  /** The PEXPIRE of the shared bucket: the time to refill it completely, plus a second. */
  readonly idleTtlMs: number;
}

/** One process's view of one shared bucket of one principal. */
interface Stock {
  /** Leased tokens not used yet (whole tokens). */
  tokens: number;
  /** When they are dropped (performance.now() ms). */
  expiresAt: number;
  /** Tokens the shared bucket kept at `knownAt` by its last reply; Infinity: no reply yet. */
  known: number;
  knownAt: number;
  /** The size of the last lease asked for (see leaseSizeOf). */
  leaseSize: number;
  /** Tokens this process used since `leasedAt`, when it last asked for a lease (undefined: never). */
  used: number;
  leasedAt: number | undefined;
}

interface PrincipalState {
  /** The shared buckets' keys: requests, rows. */
  readonly keys: readonly [string, string];
  readonly stocks: readonly [Stock, Stock];
  /** The lease on its way, if any: every call lacking tokens waits for it, then looks again. */
  inflight: Promise<void> | undefined;
}

type LeaseOutcome = 'granted' | 'failed' | FStoreError;

interface ScriptReply {
  readonly granted: boolean;
  /** Per kind (requests, rows): tokens granted, and tokens the shared bucket kept. */
  readonly tokens: [number, number];
  readonly remaining: [number, number];
}

/** What a background lease tops the stock up to: the lease, plus the quarter kept in reserve. */
const stockTarget = (leaseSize: number): number => leaseSize + Math.floor(leaseSize / 4);

/** Requests, rows: the indices of every per-kind pair. */
const kindIndices = [0, 1] as const;

const newStock = (): Stock => ({
  tokens: 0,
  expiresAt: 0,
  known: Number.POSITIVE_INFINITY,
  knownAt: 0,
  leaseSize: 1,
  used: 0,
  leasedAt: undefined,
});

function assertDuration(name: string, value: number): void {
  if (!Number.isFinite(value) || value <= 0) {
    throw invalidArgument(`rateLimiter.${name}`, `must be a positive number of milliseconds, got ${value}`);
  }
}

export function createRedisRateLimiter(options: RedisRateLimiterOptions): RateLimiter {
  const limits = validateRateLimits(options.limits);
  const redis = validateRedisOnlineStoreOptions({
    ...options,
    commandTimeoutMs: options.commandTimeoutMs ?? redisRateLimiterDefaults.commandTimeoutMs,
  });
  const leaseWindowMs = options.leaseWindowMs ?? redisRateLimiterDefaults.leaseWindowMs;
  const leaseTtlMs = options.leaseTtlMs ?? redisRateLimiterDefaults.leaseTtlMs;
  const retryIntervalMs = options.redisRetryIntervalMs ?? redisRateLimiterDefaults.redisRetryIntervalMs;
  const maxPrincipals = options.maxPrincipals ?? redisRateLimiterDefaults.maxPrincipals;
  assertDuration('leaseWindowMs', leaseWindowMs);
  assertDuration('leaseTtlMs', leaseTtlMs);
  assertDuration('redisRetryIntervalMs', retryIntervalMs);
  if (!Number.isSafeInteger(maxPrincipals) || maxPrincipals < 1) {
    throw invalidArgument('rateLimiter.maxPrincipals', `must be a positive integer, got ${maxPrincipals}`);
  }
  const { logger } = options;
  const script = readFileSync(new URL('./lua/take-tokens.lua', import.meta.url), 'utf8');
  const scriptSha = createHash('sha1').update(script).digest('hex');
  const { keyPrefix, commandTimeoutMs, connectTimeoutMs } = redis;

  const kindOf = (rate: number, burst: number): Kind => {
    return {
      limited: rate > 0,
      rate,
      burst,
      maxLease: Math.max(1, Math.min(Math.ceil((rate * leaseWindowMs) / 1_000), Math.floor(burst / 4))),
      idleTtlMs: rate > 0 ? Math.ceil((burst * 1_000) / rate) + 1_000 : 0,
    };
  };
  const kinds: readonly [Kind, Kind] = [
    kindOf(limits.requestsPerSecond, limits.requestBurst),
    kindOf(limits.rowsPerSecond, limits.rowBurst),
  ];
  const anyLimited = kinds[0].limited || kinds[1].limited;

  const fallback = createMemoryRateLimiter({ limits, maxPrincipals });
  // The same connection rules as the online store's, on a connection of its own.
  const client = createRedisClient({ ...redis, tls: options.tls }, 'fstore-rate-limiter');
  const states = new Map<string, PrincipalState>();
  let closed = false;
  let outage = false;
  /** During an outage: the earliest time a call may try Redis again. */
  let retryRedisAt = 0;
  /** During an outage: a call is trying Redis (the others keep to the fallback meanwhile). */
  let probing = false;

  // The first connection attempt: calls before it ends wait for it (bounded by the connect
  // timeout) rather than report an outage at start-up.
  let lastError: string | undefined;
  let firstAttemptOver = false;
  const firstAttempt = new Promise<void>((resolve) => {
    const settle = (): void => {
      firstAttemptOver = true;
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(settle, connectTimeoutMs);
    timer.unref();
    client.once('ready', settle);
    client.once('close', settle);
    client.once('end', settle);
  });
  // Listening also keeps ioredis from printing every failed reconnect attempt.
  client.on('error', (error: unknown) => {
    lastError = error instanceof Error ? error.message : String(error);
  });
  client.on('ready', () => {
    lastError = undefined;
  });
  const isReady = (): boolean => client.status === 'ready';

  async function sendScript(keys: string[], args: (string | number)[]): Promise<unknown> {
    if (!isReady()) {
      if (!firstAttemptOver) await firstAttempt;
      if (!isReady()) throw unavailable(lastError ?? `not connected (${client.status})`);
    }
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(unavailable(`no answer within ${commandTimeoutMs} ms`)),
        commandTimeoutMs,
      );
    });
    const run = async (): Promise<unknown> => {
      try {
        return await client.evalsha(scriptSha, keys.length, ...keys, ...args);
      } catch (error) {
        // NOSCRIPT ran nothing: EVAL runs the script and caches it for the next EVALSHA.
        if (error instanceof Error && error.message.startsWith('NOSCRIPT')) {
          return client.eval(script, keys.length, ...keys, ...args);
        }
        throw error;
      }
    };
    try {
      return await Promise.race([run(), deadline]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** One script call for the kinds with `wants[i] > 0`. */
  async function lease(
    state: PrincipalState,
    needs: readonly [number, number],
    wants: readonly [number, number],
  ): Promise<ScriptReply> {
    const keys: string[] = [];
    const args: (string | number)[] = [];
    for (const index of kindIndices) {
      const want = wants[index];
      if (want <= 0) continue;
      const kind = kinds[index];
      keys.push(state.keys[index]);
      args.push(kind.rate, kind.burst, needs[index], want, kind.idleTtlMs);
    }
    const raw = await sendScript(keys, args);
    if (!Array.isArray(raw) || raw.length !== 1 + 2 * keys.length) {
      throw new Error(`take-tokens.lua answered ${JSON.stringify(raw)}`);
    }
    const reply: ScriptReply = { granted: raw[0] === 1, tokens: [0, 0], remaining: [0, 0] };
    let position = 1;
    for (const index of kindIndices) {
      if (wants[index] <= 0) continue;
      reply.tokens[index] = Number(raw[position]);
      reply.remaining[index] = Number(raw[position + 1]);
      position += 2;
    }
    return reply;
  }

  /** Records what a reply says of the shared buckets, and adds what it granted to the stocks. */
  function learn(
    state: PrincipalState,
    wants: readonly [number, number],
    reply: ScriptReply,
    sentAt: number,
  ) {
    const now = performance.now();
    for (const index of kindIndices) {
      if (wants[index] <= 0) continue;
      const stock = state.stocks[index];
      // The bucket's count at the script's run, dated to when the call was sent (earlier): the
      // refill since is then over- not underestimated, so a local refusal is never a wrong one.
      stock.known = reply.remaining[index];
      stock.knownAt = sentAt;
      const granted = reply.tokens[index];
      if (granted > 0) {
        stock.tokens += granted;
        stock.expiresAt = now + leaseTtlMs;
      }
    }
  }

  /**
   * The next lease of a kind: what this process used in `leaseWindowMs` lately (since its last
   * lease, with this call's `cost`), within 1..maxLease. Sized by the process's own pace, not the
   * rate: a process that uses a tenth of the rate would otherwise lease 50 ms of the rate every
   * 250 ms and drop most of it, and five such processes would starve each other under the limit.
   */
  function leaseSizeOf(kind: Kind, stock: Stock, now: number, cost: number): number {
    if (stock.leasedAt === undefined) return 1;
    const perWindow = ((stock.used + cost) * leaseWindowMs) / Math.max(now - stock.leasedAt, 1);
    return Math.max(1, Math.min(kind.maxLease, Math.ceil(perWindow)));
  }

  /** Records the lease sizes of the kinds asked for, and starts counting their use anew. */
  function markLeased(
    state: PrincipalState,
    wants: readonly [number, number],
    sizes: readonly [number, number],
    now: number,
  ): void {
    for (const index of kindIndices) {
      if (wants[index] <= 0) continue;
      const stock = state.stocks[index];
      stock.leaseSize = sizes[index];
      stock.used = 0;
      stock.leasedAt = now;
    }
  }

  /** The most tokens the shared bucket can hold now, by its last reply (others may have taken some). */
  function bound(kind: Kind, stock: Stock, now: number): number {
    if (stock.known === Number.POSITIVE_INFINITY) return stock.known;
    return Math.min(kind.burst, stock.known + ((now - stock.knownAt) * kind.rate) / 1_000);
  }

  function enterOutage(error: unknown): void {
    retryRedisAt = performance.now() + retryIntervalMs;
    if (outage || closed) return;
    outage = true;
    // Stocks and what we knew of the shared buckets are stale after an outage (a restarted
    // Redis starts with full buckets).
    states.clear();
    logger?.warn(
      { err: error },
      'rate limiter: Redis is unavailable; each process now enforces the rate limits on its own until it answers again',
    );
  }

  function endOutage(): void {
    if (!outage) return;
    outage = false;
    logger?.info?.({}, 'rate limiter: Redis answers again; the rate limits are shared again');
  }

  function stateOf(principalId: string, now: number): PrincipalState {
    let state = states.get(principalId);
    if (state === undefined) {
      makeRoom(
        states,
        maxPrincipals,
        (idle) =>
          idle.inflight === undefined && now >= idle.stocks[0].expiresAt && now >= idle.stocks[1].expiresAt,
      );
      const tagged = `${keyPrefix}rl:{${principalId}}`;
      state = {
        keys: [`${tagged}:req`, `${tagged}:rows`],
        stocks: [newStock(), newStock()],
        inflight: undefined,
      };
      states.set(principalId, state);
    }
    return state;
  }

  /** Fetches the next lease in the background for the kinds this call used that run low. */
  function prefetch(state: PrincipalState, costs: readonly [number, number], now: number): void {
    // A kind below a quarter of its last lease is fetched in the background (~12 ms ahead at
    // full pace), up to a lease and that quarter. Every kind the call used is topped up in the
    // same script call, so the kinds run low together again and keep sharing one call.
    if (
      !(costs[0] > 0 && state.stocks[0].tokens < state.stocks[0].leaseSize / 4) &&
      !(costs[1] > 0 && state.stocks[1].tokens < state.stocks[1].leaseSize / 4)
    )
      return;
    const wants: [number, number] = [0, 0];
    const sizes: [number, number] = [0, 0];
    for (const index of kindIndices) {
      const stock = state.stocks[index];
      if (costs[index] === 0) continue;
      sizes[index] = leaseSizeOf(kinds[index], stock, now, 0);
      const want = stockTarget(sizes[index]) - stock.tokens;
      if (want > 0 && bound(kinds[index], stock, now) >= want) wants[index] = want;
    }
    if (wants[0] === 0 && wants[1] === 0) return;
    const asked = wants;
    markLeased(state, asked, sizes, now);
    state.inflight = (async () => {
      try {
        learn(state, asked, await lease(state, [0, 0], asked), now);
        endOutage();
      } catch (error) {
        enterOutage(error);
      } finally {
        state.inflight = undefined;
      }
    })();
  }

  /**
   * Leases what this call lacks (and tops up what it leaves low), or refuses it. The call's own
   * tokens are set aside first, so the calls served from the stock meanwhile cannot spend them.
   */
  async function leaseFor(
    state: PrincipalState,
    principalId: string,
    rows: number,
    costs: readonly [number, number],
    now: number,
  ): Promise<LeaseOutcome> {
    const needs: [number, number] = [0, 0];
    const wants: [number, number] = [0, 0];
    const sizes: [number, number] = [0, 0];
    const missing: [number, number] = [0, 0];
    for (const index of kindIndices) {
      const kind = kinds[index];
      const cost = costs[index];
      if (!kind.limited || cost === 0) continue;
      const stock = state.stocks[index];
      const available = bound(kind, stock, now);
      const size = leaseSizeOf(kind, stock, now, cost);
      sizes[index] = size;
      if (stock.tokens < cost) {
        needs[index] = cost - stock.tokens;
        wants[index] = Math.max(needs[index], size);
        // Ask again only once a whole lease may be there: near empty, a principal at its limit
        // would otherwise cost one round trip per token.
        if (available < wants[index]) missing[index] = wants[index] - available;
      } else if (stock.tokens - cost < size && available >= stockTarget(size) - (stock.tokens - cost)) {
        // Topped up along with the other kind (see prefetch).
        wants[index] = stockTarget(size) - (stock.tokens - cost);
      }
    }
    if (missing[0] > 0 || missing[1] > 0)
      return overRateLimit(principalId, limits, rows, missing[0], missing[1]);

    const reserved: [number, number] = [0, 0];
    for (const index of kindIndices) {
      const stock = state.stocks[index];
      reserved[index] = Math.min(stock.tokens, costs[index]);
      stock.tokens -= reserved[index];
    }
    markLeased(state, wants, sizes, now);
    const giveBack = (): void => {
      state.stocks[0].tokens += reserved[0];
      state.stocks[1].tokens += reserved[1];
    };
    let done: () => void = () => {};
    state.inflight = new Promise<void>((resolve) => {
      done = resolve;
    });
    try {
      const reply = await lease(state, needs, wants);
      endOutage();
      if (!reply.granted) {
        giveBack();
        learn(state, wants, reply, now);
        for (const index of kindIndices) {
          const remaining = reply.remaining[index];
          missing[index] = remaining < needs[index] ? wants[index] - remaining : 0;
        }
        return overRateLimit(principalId, limits, rows, missing[0], missing[1]);
      }
      // This call's share first (its needs), the rest to the stock.
      reply.tokens[0] -= needs[0];
      reply.tokens[1] -= needs[1];
      state.stocks[0].used += costs[0];
      state.stocks[1].used += costs[1];
      learn(state, wants, reply, now);
      return 'granted';
    } catch (error) {
      giveBack();
      enterOutage(error);
      return 'failed';
    } finally {
      state.inflight = undefined;
      done();
    }
  }

  async function takeShared(principalId: string, rows: number, requests: number): Promise<void> {
    const costs: [number, number] = [kinds[0].limited ? requests : 0, kinds[1].limited ? rows : 0];
    if (costs[0] === 0 && costs[1] === 0) return;
    let state = stateOf(principalId, performance.now());
    for (;;) {
      const now = performance.now();
      const [requestStock, rowStock] = state.stocks;
      if (now >= requestStock.expiresAt) requestStock.tokens = 0;
      if (now >= rowStock.expiresAt) rowStock.tokens = 0;
      if (requestStock.tokens >= costs[0] && rowStock.tokens >= costs[1]) {
        requestStock.tokens -= costs[0];
        rowStock.tokens -= costs[1];
        requestStock.used += costs[0];
        rowStock.used += costs[1];
        if (state.inflight === undefined) prefetch(state, costs, now);
        return;
      }
      if (state.inflight !== undefined) {
        await state.inflight;
        if (outage) return fallback.take(principalId, rows, requests);
        // The state may have been dropped meanwhile (outage, eviction): use the current one.
        state = stateOf(principalId, performance.now());
        continue;
      }
      const outcome = await leaseFor(state, principalId, rows, costs, now);
      if (outcome === 'granted') return;
      if (outcome === 'failed') return fallback.take(principalId, rows, requests);
      throw outcome;
    }
  }

  return {
    async take(principalId, rows, requests = 1) {
      if (closed) throw new FStoreError('unavailable', 'the rate limiter is closed');
      checkTake(principalId, rows, requests, limits);
      if (!anyLimited) return;
      if (outage) {
        if (probing || performance.now() < retryRedisAt) return fallback.take(principalId, rows, requests);
        probing = true;
        try {
          return await takeShared(principalId, rows, requests);
        } finally {
          probing = false;
        }
      }
      return takeShared(principalId, rows, requests);
    },

    async close() {
      if (closed) return;
      closed = true;
      states.clear();
      await fallback.close();
      try {
        if (isReady()) {
          let timer: NodeJS.Timeout | undefined;
          await Promise.race([
            client.quit(),
            new Promise((resolve) => {
              timer = setTimeout(resolve, commandTimeoutMs);
            }),
          ]).finally(() => clearTimeout(timer));
        }
      } catch {
        // Closing anyway: a failed QUIT only means the server is already gone.
      } finally {
        client.disconnect();
      }
    },
  };
}
