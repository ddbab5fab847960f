import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Cluster, Redis } from 'ioredis';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { createMemoryRateLimiter } from '../../src/adapters/memory/memory-rate-limiter.js';
import type {
  RateLimiterLogger,
  RedisRateLimiterOptions,
} from '../../src/adapters/redis/redis-rate-limiter.js';
import { createRedisRateLimiter } from '../../src/adapters/redis/redis-rate-limiter.js';
import { FStoreError } from '../../src/domain/errors.js';
import type { RateLimiter, RateLimits } from '../../src/ports/rate-limiter.js';
import { requireEnvironment } from '../support/environment.js';
import { startThrowawayRedis, type ThrowawayRedis } from '../support/throwaway-redis.js';

/**
 * Rate limiters: the per-process memory limiter on a pinned clock, and the Redis limiter against
 * the real single Redis and Redis Cluster of `scripts/servers.sh`, where two limiters with one key
 * prefix stand for two serving processes. Outages use a throwaway Redis of their own.
 */

const randomPrefix = (): string => `fstore-test:${randomBytes(6).toString('hex')}:`;

/** The refusal of `promise`, or undefined when it passed; anything but a refusal fails the test. */
async function refusalOf(promise: Promise<void>): Promise<FStoreError | undefined> {
  try {
    await promise;
    return undefined;
  } catch (error) {
    if (error instanceof FStoreError && error.code === 'resource_exhausted') return error;
    throw error;
  }
}

const limitsOf = (limits: Partial<RateLimits>): RateLimits => ({
  requestsPerSecond: 0,
  requestBurst: 0,
  rowsPerSecond: 0,
  rowBurst: 0,
  ...limits,
});

/**
 * Waits at least `ms` by the monotonic clock: a timer alone can fire up to a millisecond or so
 * early, since libuv measures it from the event loop's cached time.
 */
async function waitAtLeast(ms: number): Promise<void> {
  const until = performance.now() + ms;
  for (let left = ms; left > 0; left = until - performance.now()) await sleep(Math.ceil(left));
}

/** Takes until the first refusal; returns how many passed and the refusal. */
async function drain(limiter: RateLimiter, principalId: string, rows = 0, atMost = 10_000) {
  for (let passed = 0; passed < atMost; passed++) {
    const refusal = await refusalOf(limiter.take(principalId, rows));
    if (refusal !== undefined) return { passed, refusal };
  }
  throw new Error(`${principalId} was never refused in ${atMost} calls`);
}

describe('memory rate limiter', () => {
  const clock = () => {
    let now = 1_000;
    return {
      now: () => now,
      advance: (ms: number): void => {
        now += ms;
      },
    };
  };

  it('allows a burst, then refuses with the time until the next token, and refills', async () => {
    const time = clock();
    const limiter = createMemoryRateLimiter({
      limits: limitsOf({ requestsPerSecond: 10, requestBurst: 5 }),
      now: time.now,
    });
    const { passed, refusal } = await drain(limiter, 'key:a');
    expect(passed).toBe(5);
    expect(refusal.message).toBe('key:a is over its rate limit of 10 requests/s');
    expect(refusal.retryAfterMs).toBe(100);
    time.advance(50);
    const halfway = (await refusalOf(limiter.take('key:a', 0)))?.retryAfterMs;
    expect(halfway).toBeGreaterThanOrEqual(50);
    expect(halfway).toBeLessThanOrEqual(51); // the refill is in floating point
    time.advance(50);
    await limiter.take('key:a', 0);
    // Refilled up to the burst, never beyond.
    time.advance(60_000);
    expect((await drain(limiter, 'key:a')).passed).toBe(5);
  });

  it('charges rows, refuses what can never pass, and takes nothing when refused', async () => {
    const time = clock();
    const limiter = createMemoryRateLimiter({
      limits: limitsOf({ requestsPerSecond: 100, requestBurst: 1, rowsPerSecond: 1_000, rowBurst: 1_000 }),
      now: time.now,
    });
    await limiter.take('key:a', 1_000);
    time.advance(10); // one request and 10 rows back
    const refusal = await refusalOf(limiter.take('key:a', 500));
    expect(refusal?.message).toBe('key:a is over its rate limit of 1000 rows/s (this call needs 500 rows)');
    expect(refusal?.retryAfterMs).toBe(490);
    // The refused call took no request token: this one has it.
    await limiter.take('key:a', 10);
    expect((await refusalOf(limiter.take('key:a', 0)))?.message).toBe(
      'key:a is over its rate limit of 100 requests/s',
    );

    const tooBig = await refusalOf(limiter.take('key:b', 1_001));
    expect(tooBig?.message).toMatch(
      /needs 1001 rows, more than the burst of 1000 rows, so it can never pass/,
    );
    expect(tooBig?.retryAfterMs).toBeUndefined();
    await limiter.take('key:b', 1_000); // nothing was taken by the refusal
  });

  it('charges a stream message its rows only when told it takes no request', async () => {
    const time = clock();
    const limiter = createMemoryRateLimiter({
      limits: limitsOf({ requestsPerSecond: 1, requestBurst: 1, rowsPerSecond: 1, rowBurst: 100 }),
      now: time.now,
    });
    await limiter.take('key:a', 10);
    for (let message = 0; message < 9; message++) await limiter.take('key:a', 10, 0);
    expect((await refusalOf(limiter.take('key:a', 1, 0)))?.message).toMatch(/1 rows\/s/);
    expect((await refusalOf(limiter.take('key:b', 0, 2)))?.message).toMatch(
      /needs 2 requests, more than the burst of 1, so it can never pass/,
    );
  });

  it('keeps principals apart, and unlimited kinds cost nothing', async () => {
    const time = clock();
    const limiter = createMemoryRateLimiter({
      limits: limitsOf({ requestsPerSecond: 1, requestBurst: 2 }),
      now: time.now,
    });
    expect((await drain(limiter, 'key:a', 1_000_000)).passed).toBe(2);
    expect((await drain(limiter, 'key:b', 1_000_000)).passed).toBe(2);

    const unlimited = createMemoryRateLimiter({ limits: limitsOf({}), now: time.now });
    for (let call = 0; call < 1_000; call++) await unlimited.take('key:a', 1_000_000);
    expect(unlimited.size).toBe(0);
  });

  it('forgets idle principals first, and stays within maxPrincipals', async () => {
    const time = clock();
    const limiter = createMemoryRateLimiter({
      limits: limitsOf({ requestsPerSecond: 10, requestBurst: 10 }),
      maxPrincipals: 2,
      now: time.now,
    });
    await drain(limiter, 'key:idle');
    time.advance(1_000); // key:idle is full again: the same as forgotten
    await drain(limiter, 'key:busy');
    await limiter.take('key:new', 0);
    expect(limiter.size).toBe(2);
    // key:busy kept its (empty) bucket.
    expect(await refusalOf(limiter.take('key:busy', 0))).toBeDefined();
    for (let index = 0; index < 50; index++) await limiter.take(`key:other-${index}`, 0);
    expect(limiter.size).toBeLessThanOrEqual(2);
  });

  it('rejects invalid limits and arguments', async () => {
    expect(() => createMemoryRateLimiter({ limits: limitsOf({ requestsPerSecond: 5 }) })).toThrow(
      /rateLimits.requestBurst: must be at least 1/,
    );
    expect(() => createMemoryRateLimiter({ limits: limitsOf({ rowsPerSecond: -1 }) })).toThrow(
      /rateLimits.rowsPerSecond/,
    );
    const limiter = createMemoryRateLimiter({ limits: limitsOf({ requestsPerSecond: 1, requestBurst: 1 }) });
    await expect(limiter.take('key:a', 1.5)).rejects.toMatchObject({ code: 'invalid_argument' });
    await expect(limiter.take('', 1)).rejects.toMatchObject({ code: 'invalid_argument' });
  });
});

interface LoopResult {
  /** Calls that passed, per principal. */
  readonly passed: Map<string, number>;
  readonly elapsedMs: number;
  readonly refusals: number;
}

/**
 * A closed loop: `workers` callers per limiter and principal, each taking again as soon as a call
 * passes, or after the refusal's retry hint, for `durationMs`.
 */
async function closedLoop(
  limiters: readonly RateLimiter[],
  calls: readonly { principalId: string; rows: number }[],
  durationMs: number,
  workers = 4,
): Promise<LoopResult> {
  const passed = new Map(calls.map((call) => [call.principalId, 0]));
  let refusals = 0;
  const start = performance.now();
  const end = start + durationMs;
  const worker = async (limiter: RateLimiter, principalId: string, rows: number) => {
    while (performance.now() < end) {
      const refusal = await refusalOf(limiter.take(principalId, rows));
      if (refusal === undefined) {
        passed.set(principalId, (passed.get(principalId) ?? 0) + 1);
      } else {
        refusals++;
        expect(refusal.retryAfterMs).toBeGreaterThan(0);
        await sleep(Math.max(1, Math.min(refusal.retryAfterMs ?? 1, end - performance.now())));
      }
    }
  };
  await Promise.all(
    limiters.flatMap((limiter) =>
      calls.flatMap((call) =>
        Array.from({ length: workers }, () => worker(limiter, call.principalId, call.rows)),
      ),
    ),
  );
  return { passed, refusals, elapsedMs: performance.now() - start };
}

const limiters: RateLimiter[] = [];
afterEach(async () => {
  await Promise.all(limiters.splice(0).map((limiter) => limiter.close()));
});
const track = (limiter: RateLimiter): RateLimiter => {
  limiters.push(limiter);
  return limiter;
};

type Connection = Pick<RedisRateLimiterOptions, 'url' | 'clusterNodes'>;
const single = (): Connection => ({ url: requireEnvironment('FSTORE_TEST_REDIS_URL') });
const cluster = (): Connection => ({
  clusterNodes: requireEnvironment('FSTORE_TEST_REDIS_CLUSTER_NODES').split(','),
});

const admins: (Redis | Cluster)[] = [];
afterAll(async () => {
  await Promise.all(admins.map((admin) => admin.quit().catch(() => admin.disconnect())));
});
function adminOf(connection: Connection): Redis | Cluster {
  const admin =
    connection.url !== undefined
      ? new Redis(connection.url)
      : new Cluster(
          (connection.clusterNodes ?? []).map((node) => {
            const [host, port] = node.split(':');
            return { host: host as string, port: Number(port) };
          }),
        );
  admins.push(admin);
  return admin;
}

describe.each([
  ['a single Redis', single],
  ['a Redis Cluster', cluster],
])('Redis rate limiter on %s', (_, connection) => {
  const twoProcesses = (limits: RateLimits, keyPrefix = randomPrefix()) =>
    [0, 1].map(() => track(createRedisRateLimiter({ ...connection(), keyPrefix, limits })));

  it('shares the limits between processes: granted ≤ rate × time + burst, and most of it', async () => {
    const limits = { requestsPerSecond: 400, requestBurst: 100, rowsPerSecond: 4_000, rowBurst: 1_000 };
    const processes = twoProcesses(limits);
    // Two principals at once: one held by its request rate (1 row per call, 400 rows/s), the
    // other by its row rate (20 rows per call: 200 calls/s at most).
    const result = await closedLoop(
      processes,
      [
        { principalId: 'key:requests', rows: 1 },
        { principalId: 'key:rows', rows: 20 },
      ],
      2_000,
    );
    const seconds = result.elapsedMs / 1_000;
    // Redis grants whole tokens out of one bucket refilled by Redis's clock between the first and
    // the last script call, both within the loop: rate × time + burst exactly. One token of slack
    // covers the floating-point refill (tokens + elapsed × rate in doubles). Leases only ever
    // make it less: tokens leased and not used by the end (or dropped) are granted to nobody.
    const requestCeiling = limits.requestsPerSecond * seconds + limits.requestBurst + 1;
    const rowCeiling = limits.rowsPerSecond * seconds + limits.rowBurst + 1;
    const requestsPassed = result.passed.get('key:requests') ?? 0;
    const rowsPassed = (result.passed.get('key:rows') ?? 0) * 20;
    expect(requestsPassed).toBeLessThanOrEqual(requestCeiling);
    expect(requestsPassed).toBeGreaterThanOrEqual(0.7 * requestCeiling);
    expect(rowsPassed).toBeLessThanOrEqual(rowCeiling);
    expect(rowsPassed).toBeGreaterThanOrEqual(0.7 * rowCeiling);
    expect(result.refusals).toBeGreaterThan(0);
  });

  it('never refuses processes that are together well under the limit (leases follow their pace)', async () => {
    // Eight processes at ~25 calls/s each: half the rate together. Leases sized by the rate (20
    // tokens, dropped after 250 ms mostly unused) would draw 80 tokens/s per process, 640/s in
    // all, and refuse calls within half a second.
    const keyPrefix = randomPrefix();
    const limits = limitsOf({ requestsPerSecond: 400, requestBurst: 100 });
    const processes = Array.from({ length: 8 }, () =>
      track(createRedisRateLimiter({ ...connection(), keyPrefix, limits })),
    );
    const end = performance.now() + 1_500;
    let calls = 0;
    await Promise.all(
      processes.map(async (limiter) => {
        while (performance.now() < end) {
          await limiter.take('key:a', 0);
          calls++;
          await sleep(40);
        }
      }),
    );
    expect(calls).toBeGreaterThan(200);
  });

  it('refuses with a retry hint in every process, and passes again after waiting it', async () => {
    const [first, second] = twoProcesses(limitsOf({ requestsPerSecond: 10, requestBurst: 3 })) as [
      RateLimiter,
      RateLimiter,
    ];
    const { passed, refusal } = await drain(first, 'key:a');
    expect(passed).toBe(3);
    expect(refusal.message).toBe('key:a is over its rate limit of 10 requests/s');
    expect(refusal.retryAfterMs).toBeGreaterThan(0);
    expect(refusal.retryAfterMs).toBeLessThanOrEqual(100);
    // The other process shares the bucket: refused too, from Redis.
    const shared = await refusalOf(second.take('key:a', 0));
    expect(shared?.retryAfterMs).toBeGreaterThan(0);
    await waitAtLeast(shared?.retryAfterMs ?? 0);
    await second.take('key:a', 0);
    // Another principal is untouched.
    expect((await drain(second, 'key:b')).passed).toBe(3);
  });

  it('charges a batch its rows, and refuses at once a batch larger than the burst', async () => {
    const prefix = randomPrefix();
    const [limiter] = twoProcesses(limitsOf({ rowsPerSecond: 100, rowBurst: 2_000 }), prefix) as [
      RateLimiter,
    ];
    await limiter.take('key:a', 1_000);
    await limiter.take('key:a', 1_000);
    const refusal = await refusalOf(limiter.take('key:a', 1_000));
    expect(refusal?.message).toBe('key:a is over its rate limit of 100 rows/s (this call needs 1000 rows)');
    // ~1,000 rows at 100 rows/s.
    expect(refusal?.retryAfterMs).toBeGreaterThan(9_000);
    expect(refusal?.retryAfterMs).toBeLessThanOrEqual(10_000);
    await limiter.take('key:b', 1_000);

    const tooBig = await refusalOf(limiter.take('key:c', 2_001));
    expect(tooBig?.message).toMatch(
      /needs 2001 rows, more than the burst of 2000 rows, so it can never pass/,
    );
    expect(tooBig?.retryAfterMs).toBeUndefined();
    await limiter.take('key:c', 2_000);

    // Only the rows bucket is kept (requests are unlimited), emptied, and set to expire.
    const admin = adminOf(connection());
    const rowsKey = `${prefix}rl:{key:a}:rows`;
    expect(Number(await admin.hget(rowsKey, 'tokens'))).toBeLessThan(1);
    expect(await admin.pttl(rowsKey)).toBeGreaterThan(0);
    expect(await admin.exists(`${prefix}rl:{key:a}:req`)).toBe(0);
  });

  it('takes requests and rows together in one script call, or neither', async () => {
    const prefix = randomPrefix();
    const [first, second] = twoProcesses(
      limitsOf({ requestsPerSecond: 1, requestBurst: 2, rowsPerSecond: 1, rowBurst: 1_000 }),
      prefix,
    ) as [RateLimiter, RateLimiter];
    await first.take('key:a', 600);
    // The second process holds no lease of either kind: one script call for both buckets, where
    // the rows refuse, so the request token stays too.
    const refusal = await refusalOf(second.take('key:a', 600));
    expect(refusal?.message).toBe('key:a is over its rate limit of 1 rows/s (this call needs 600 rows)');
    await second.take('key:a', 400);
    expect((await refusalOf(first.take('key:a', 0)))?.message).toBe(
      'key:a is over its rate limit of 1 requests/s',
    );
    const admin = adminOf(connection());
    expect(Number(await admin.hget(`${prefix}rl:{key:a}:req`, 'tokens'))).toBeLessThan(1);
    expect(Number(await admin.hget(`${prefix}rl:{key:a}:rows`, 'tokens'))).toBeLessThan(1);
  });

  it('charges the later messages of a stream their rows only', async () => {
    const [first, second] = twoProcesses(
      limitsOf({ requestsPerSecond: 1, requestBurst: 1, rowsPerSecond: 1, rowBurst: 100 }),
    ) as [RateLimiter, RateLimiter];
    await first.take('key:a', 10);
    for (let message = 0; message < 4; message++) await second.take('key:a', 10, 0);
    expect((await refusalOf(second.take('key:a', 0)))?.message).toBe(
      'key:a is over its rate limit of 1 requests/s',
    );
    await first.take('key:a', 50, 0);
    expect((await refusalOf(second.take('key:a', 10, 0)))?.message).toMatch(/1 rows\/s/);
  });

  it('keeps both buckets of a principal whose id has braces in one slot', async () => {
    const prefix = randomPrefix();
    const [limiter] = twoProcesses(
      limitsOf({ requestsPerSecond: 10, requestBurst: 10, rowsPerSecond: 10, rowBurst: 10 }),
      prefix,
    ) as [RateLimiter];
    for (const principalId of ['cert:CN={a},O=b', 'jwt:}{', 'key:{x}']) await limiter.take(principalId, 10);
    const admin = adminOf(connection());
    expect(await admin.exists(`${prefix}rl:{cert:CN={a},O=b}:rows`)).toBe(1);
  });
});

describe('Redis rate limiter on a throwaway Redis', () => {
  const servers: ThrowawayRedis[] = [];
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((server) => server.stop()));
  });
  const throwaway = async (): Promise<ThrowawayRedis> => {
    const server = await startThrowawayRedis();
    servers.push(server);
    return server;
  };
  const scriptCalls = async (server: ThrowawayRedis): Promise<number> => {
    const stats = await server.command('INFO', 'commandstats');
    let calls = 0;
    for (const match of stats.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)) calls += Number(match[1]);
    return calls;
  };

  it('costs one script call per lease, not per call (3,000 calls at ~3,000 calls/s)', async () => {
    const server = await throwaway();
    const limiter = track(
      createRedisRateLimiter({
        url: server.url,
        keyPrefix: randomPrefix(),
        limits: { requestsPerSecond: 3_000, requestBurst: 3_000, rowsPerSecond: 30_000, rowBurst: 30_000 },
      }),
    );
    const before = await scriptCalls(server);
    // 30 calls every 10 ms: the pace of a serving process at ~3,000 calls/s, batch 1.
    for (let tick = 0; tick < 100; tick++) {
      await Promise.all(Array.from({ length: 30 }, () => limiter.take('key:a', 1)));
      await sleep(10);
    }
    const calls = (await scriptCalls(server)) - before;
    // Leases of 150 requests (50 ms at 3,000/s) and 1,500 rows: ~20 for 3,000 calls, whatever
    // the background top-ups add; the first EVALSHA meets NOSCRIPT and is sent again as EVAL.
    expect(calls).toBeGreaterThan(0);
    expect(calls).toBeLessThanOrEqual(30);
  });

  it('falls back to per-process limits while Redis is down, warns once, and shares again after', async () => {
    const server = await throwaway();
    const logs = [0, 1].map(() => ({ warnings: [] as string[], infos: [] as string[] }));
    const loggers: RateLimiterLogger[] = logs.map((log) => ({
      warn: (_, message) => log.warnings.push(message),
      info: (_, message) => log.infos.push(message),
    }));
    const keyPrefix = randomPrefix();
    const [first, second] = loggers.map((logger) =>
      track(
        createRedisRateLimiter({
          url: server.url,
          keyPrefix,
          logger,
          limits: limitsOf({ requestsPerSecond: 5, requestBurst: 5 }),
        }),
      ),
    ) as [RateLimiter, RateLimiter];
    expect((await drain(first, 'key:before')).passed).toBe(5);
    expect(await refusalOf(second.take('key:before', 0))).toBeDefined();

    await server.stop();
    // Each process now has a bucket of its own (5 each, where Redis gave 5 to both together):
    // still limited, per process.
    const during = [await drain(first, 'key:during'), await drain(second, 'key:during')];
    for (const { passed, refusal } of during) {
      expect(passed).toBeGreaterThanOrEqual(5);
      expect(passed).toBeLessThanOrEqual(6);
      expect(refusal.retryAfterMs).toBeGreaterThan(0);
    }
    expect(logs.map((log) => log.warnings.length)).toEqual([1, 1]);
    expect(logs[0]?.warnings[0]).toMatch(/Redis is unavailable/);
    // More calls during the outage, across at least one retry of Redis (every second): no more
    // warnings.
    const outageEnds = performance.now() + 1_500;
    while (performance.now() < outageEnds) {
      await refusalOf(first.take('key:during', 0));
      await refusalOf(second.take('key:during', 0));
      await sleep(50);
    }

    await server.start();
    const deadline = performance.now() + 15_000;
    while (logs.some((log) => log.infos.length === 0)) {
      if (performance.now() > deadline) throw new Error('the limiters did not return to Redis within 15 s');
      await refusalOf(first.take('key:probe', 0));
      await refusalOf(second.take('key:probe', 0));
      await sleep(50);
    }
    expect(logs.map((log) => log.warnings.length)).toEqual([1, 1]);
    expect(logs[0]?.infos[0]).toMatch(/shared again/);
    // Shared again: what one process takes, the other cannot.
    expect((await drain(first, 'key:after')).passed).toBe(5);
    expect((await refusalOf(second.take('key:after', 0)))?.retryAfterMs).toBeGreaterThan(0);
  });

  it('loads its script again after SCRIPT FLUSH without an outage', async () => {
    const server = await throwaway();
    const warnings: string[] = [];
    const limiter = track(
      createRedisRateLimiter({
        url: server.url,
        keyPrefix: randomPrefix(),
        logger: { warn: (_, message) => warnings.push(message) },
        limits: limitsOf({ requestsPerSecond: 1, requestBurst: 2 }),
      }),
    );
    await limiter.take('key:a', 0);
    expect(await server.command('SCRIPT', 'FLUSH')).toMatch(/^\+OK/);
    await limiter.take('key:a', 0);
    expect(await refusalOf(limiter.take('key:a', 0))).toBeDefined();
    expect(warnings).toEqual([]);
  });

  it('refuses calls after close', async () => {
    const server = await throwaway();
    const limiter = createRedisRateLimiter({
      url: server.url,
      limits: limitsOf({ requestsPerSecond: 1, requestBurst: 1 }),
    });
    await limiter.close();
    await limiter.close();
    await expect(limiter.take('key:a', 0)).rejects.toMatchObject({ code: 'unavailable' });
  });
});
