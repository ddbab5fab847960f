import { FStoreError, invalidArgument } from '../../domain/errors.js';
import type { RateLimiter, RateLimits } from '../../ports/rate-limiter.js';

/**
 * Per-process token buckets: one per (principal, requests | rows), refilled by a monotonic clock
 * on each call (no timers). The limiter of a single serving process, and the fallback of the
 * Redis limiter while Redis is down.
 */
export interface MemoryRateLimiterOptions {
  readonly limits: RateLimits;
  /**
   * Most principals whose buckets are held. Beyond it, principals idle long enough for their
   * buckets to be full again are forgotten (a full bucket is the same as none); if that is not
   * enough, the oldest are, and start again with a full burst. Default 10,000.
   */
  readonly maxPrincipals?: number;
  /** Monotonic clock in milliseconds. Default `performance.now`; tests pin it. */
  readonly now?: () => number;
}

export const memoryRateLimiterDefaults = {
  maxPrincipals: 10_000,
} satisfies Partial<MemoryRateLimiterOptions>;

export interface MemoryRateLimiter extends RateLimiter {
  /** Principals whose buckets are held now (at most `maxPrincipals`). */
  readonly size: number;
}

/** Checks the limits, naming the offending field; returns a frozen copy. */
export function validateRateLimits(limits: RateLimits): RateLimits {
  const check = (rateField: keyof RateLimits, burstField: keyof RateLimits): void => {
    const rate = limits[rateField];
    if (typeof rate !== 'number' || !Number.isFinite(rate) || rate < 0) {
      throw invalidArgument(
        `rateLimits.${rateField}`,
        `must be 0 (unlimited) or a positive number, got ${rate}`,
      );
    }
    const burst = limits[burstField];
    if (rate > 0 && (typeof burst !== 'number' || !Number.isFinite(burst) || burst < 1)) {
      throw invalidArgument(
        `rateLimits.${burstField}`,
        `must be at least 1 when ${rateField} is set, got ${burst}`,
      );
    }
  };
  check('requestsPerSecond', 'requestBurst');
  check('rowsPerSecond', 'rowBurst');
  return Object.freeze({ ...limits });
}

/** Milliseconds until `missing` tokens have flowed in at `ratePerSecond`: at least 1. */
export const refillWaitMs = (missing: number, ratePerSecond: number): number =>
  Math.max(1, Math.ceil((missing * 1_000) / ratePerSecond));

/**
 * The refusal of a call `missingRequests` request tokens and `missingRows` row tokens short (0:
 * that bucket would do). Both short: the message names the longer wait, the hint is that wait.
 */
export function overRateLimit(
  principalId: string,
  limits: RateLimits,
  rows: number,
  missingRequests: number,
  missingRows: number,
): FStoreError {
  const requestWaitMs = missingRequests > 0 ? refillWaitMs(missingRequests, limits.requestsPerSecond) : 0;
  const rowWaitMs = missingRows > 0 ? refillWaitMs(missingRows, limits.rowsPerSecond) : 0;
  const message =
    requestWaitMs >= rowWaitMs
      ? `${principalId} is over its rate limit of ${limits.requestsPerSecond} requests/s`
      : `${principalId} is over its rate limit of ${limits.rowsPerSecond} rows/s (this call needs ${rows} rows)`;
  return new FStoreError('resource_exhausted', message, {
    retryAfterMs: Math.max(requestWaitMs, rowWaitMs),
  });
}

/**
 * Checks a call's arguments, and refuses at once a call that could never pass (more rows, or
 * requests, than the burst): no hint, since waiting does not help.
 */
export function checkTake(principalId: string, rows: number, requests: number, limits: RateLimits): void {
  if (typeof principalId !== 'string' || principalId === '') {
    throw invalidArgument('principalId', 'must be a non-empty string');
  }
  if (!Number.isSafeInteger(rows) || rows < 0) {
    throw invalidArgument('rows', `must be a non-negative integer, got ${rows}`);
  }
  if (!Number.isSafeInteger(requests) || requests < 0) {
    throw invalidArgument('requests', `must be a non-negative integer, got ${requests}`);
  }
  if (limits.requestsPerSecond > 0 && requests > limits.requestBurst) {
    throw new FStoreError(
      'resource_exhausted',
      `${principalId} is over its rate limit of ${limits.requestsPerSecond} requests/s (this call needs ` +
        `${requests} requests, more than the burst of ${limits.requestBurst}, so it can never pass)`,
    );
  }
  if (limits.rowsPerSecond > 0 && rows > limits.rowBurst) {
    throw new FStoreError(
      'resource_exhausted',
      `${principalId} is over its rate limit of ${limits.rowsPerSecond} rows/s (this call needs ${rows} rows, ` +
        `more than the burst of ${limits.rowBurst} rows, so it can never pass: split it into smaller calls)`,
    );
  }
}

/**
 * Keeps `map` under `max` entries before one is added: drops the idle ones, then, if at least
 * 90% remain, the oldest (insertion order) down to 90%, so the O(n) sweep runs at most once per
 * max/10 additions.
 */
export function makeRoom<V>(map: Map<string, V>, max: number, isIdle: (value: V) => boolean): void {
  if (map.size < max) return;
  for (const [key, value] of map) if (isIdle(value)) map.delete(key);
  const keep = Math.floor(max * 0.9);
  let excess = map.size - keep;
  if (excess <= 0) return;
  for (const key of map.keys()) {
    map.delete(key);
    if (--excess === 0) break;
  }
}

interface Buckets {
  requests: number;
  rows: number;
  /** Clock reading of the last refill. */
  at: number;
}

export function createMemoryRateLimiter(options: MemoryRateLimiterOptions): MemoryRateLimiter {
  const limits = validateRateLimits(options.limits);
  const maxPrincipals = options.maxPrincipals ?? memoryRateLimiterDefaults.maxPrincipals;
  if (!Number.isSafeInteger(maxPrincipals) || maxPrincipals < 1) {
    throw invalidArgument('maxPrincipals', `must be a positive integer, got ${maxPrincipals}`);
  }
  const now = options.now ?? (() => performance.now());
  const { requestsPerSecond, requestBurst, rowsPerSecond, rowBurst } = limits;
  const requestsLimited = requestsPerSecond > 0;
  const rowsLimited = rowsPerSecond > 0;
  // Per millisecond, so a refill is one multiplication.
  const requestsPerMs = requestsPerSecond / 1_000;
  const rowsPerMs = rowsPerSecond / 1_000;
  const buckets = new Map<string, Buckets>();

  const refill = (bucket: Buckets, at: number): void => {
    const elapsed = at - bucket.at;
    if (elapsed <= 0) return;
    if (requestsLimited) bucket.requests = Math.min(requestBurst, bucket.requests + elapsed * requestsPerMs);
    if (rowsLimited) bucket.rows = Math.min(rowBurst, bucket.rows + elapsed * rowsPerMs);
    bucket.at = at;
  };

  const isFull = (bucket: Buckets, at: number): boolean => {
    refill(bucket, at);
    return (!requestsLimited || bucket.requests >= requestBurst) && (!rowsLimited || bucket.rows >= rowBurst);
  };

  return {
    get size() {
      return buckets.size;
    },

    async take(principalId, rows, requests = 1) {
      checkTake(principalId, rows, requests, limits);
      if (!requestsLimited && !rowsLimited) return;
      const at = now();
      let bucket = buckets.get(principalId);
      if (bucket === undefined) {
        makeRoom(buckets, maxPrincipals, (idle) => isFull(idle, at));
        bucket = { requests: requestBurst, rows: rowBurst, at };
        buckets.set(principalId, bucket);
      } else {
        refill(bucket, at);
      }
      const missingRequests = requestsLimited && bucket.requests < requests ? requests - bucket.requests : 0;
      const missingRows = rowsLimited && bucket.rows < rows ? rows - bucket.rows : 0;
      if (missingRequests > 0 || missingRows > 0) {
        throw overRateLimit(principalId, limits, rows, missingRequests, missingRows);
      }
      if (requestsLimited) bucket.requests -= requests;
      if (rowsLimited) bucket.rows -= rows;
    },

    async close() {
      buckets.clear();
    },
  };
}
