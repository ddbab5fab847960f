import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { ServiceError } from '@grpc/grpc-js';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FStoreError } from '../../src/domain/errors.js';
import { randomName } from '../support/environment.js';
import { applyFixtures, doubles, failureOf, nowMicros, strings } from '../support/fixtures.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { createTestPki, type TestPki } from '../support/test-certificates.js';

/**
 * Rate limits through real serving processes sharing one Redis, and the online store and rate
 * limiter over TLS to Redis (rediss://) with a CA file.
 */

const project = 'limits';
const readRequest = (rows: number) => ({
  project,
  features: ['pair_stats:amount'],
  entities: {
    user_id: strings(...Array.from({ length: rows }, (_, index) => `u${index}`)),
    merchant_id: {
      values: { case: 'int64Values' as const, value: { values: Array.from({ length: rows }, () => 1n) } },
    },
  },
});

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  server.close();
  await once(server, 'close');
  return port;
}

describe('rate limits across two serving processes', () => {
  const rate = 20;
  let first: TestServer;
  let second: TestServer;

  beforeAll(async () => {
    const shared = {
      postgresSchema: randomName('limits'),
      redisKeyPrefix: `${randomName('rl')}:`,
      rateLimitRequestsPerSecond: rate,
      rateLimitRequestBurst: rate,
      rateLimitRowsPerSecond: 1_000,
      rateLimitRowBurst: 500,
    };
    first = await startTestServer('redis', shared, { keepSchema: true });
    second = await startTestServer('redis', shared);
    // Registry changes are calls too: make them before the load, then wait for a full bucket.
    await applyFixtures(first.registry, project);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
  });

  afterAll(async () => {
    await second?.stop();
    await first?.stop();
  });

  it('keeps the sum of both processes under the limit, says when to retry, and recovers', async () => {
    let ok = 0;
    let refused = 0;
    let retryAfterMs = 0;
    const started = Date.now();
    const runFor = 2_000;
    const loop = async (server: TestServer) => {
      while (Date.now() - started < runFor) {
        try {
          await server.features.getOnlineFeatures(readRequest(1));
          ok += 1;
        } catch (error) {
          expect(error).toBeInstanceOf(FStoreError);
          expect((error as FStoreError).code).toBe('resource_exhausted');
          expect((error as FStoreError).message).toMatch(/over its rate limit of 20 requests\/s/);
          const hint = Number((error as { cause?: ServiceError }).cause?.metadata.get('retry-after-ms')[0]);
          expect(hint).toBeGreaterThan(0);
          retryAfterMs = Math.max(retryAfterMs, hint);
          refused += 1;
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      }
    };
    await Promise.all([loop(first), loop(second), loop(first), loop(second)]);
    const elapsedSeconds = (Date.now() - started) / 1000;
    const ceiling = rate * elapsedSeconds + rate; // the burst, then the rate
    expect(refused).toBeGreaterThan(0);
    expect(ok).toBeLessThanOrEqual(Math.ceil(ceiling) + 1);
    // The limit lets calls through at about its rate, not far below it.
    expect(ok).toBeGreaterThanOrEqual(Math.floor(rate * elapsedSeconds * 0.6));
    // Recovery: after the hinted wait, a call passes again on either process.
    await new Promise((resolve) => setTimeout(resolve, Math.min(retryAfterMs, 2_000) + 300));
    await expect(second.features.getOnlineFeatures(readRequest(1))).resolves.toBeDefined();
  });

  it('charges rows: a batch above the row burst can never pass, and says so', async () => {
    const failure = await failureOf(first.features.getOnlineFeatures(readRequest(600)));
    expect(failure.code).toBe('resource_exhausted');
    expect(failure.message).toMatch(/600 rows.*500|500.*600/);
    expect(failure.message).toMatch(/never pass/);
  });
});

describe('Redis over TLS (rediss://)', () => {
  let pki: TestPki;
  let redis: ChildProcess;
  let port: number;
  let server: TestServer;

  beforeAll(async () => {
    pki = await createTestPki();
    port = await freePort();
    redis = spawn(
      'redis-server',
      [
        '--port',
        '0',
        '--tls-port',
        String(port),
        '--bind',
        '127.0.0.1',
        '--tls-cert-file',
        pki.serverCert,
        '--tls-key-file',
        pki.serverKey,
        '--tls-ca-cert-file',
        pki.caCert,
        '--tls-auth-clients',
        'no',
        '--save',
        '',
        '--appendonly',
        'no',
      ],
      { stdio: 'ignore' },
    );
    const client = new Redis(`rediss://127.0.0.1:${port}`, {
      tls: { ca: readFileSync(pki.caCert) },
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    client.on('error', () => undefined); // refused until redis-server listens: retried below
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await client.connect();
        await client.ping();
        break;
      } catch (error) {
        client.disconnect();
        if (Date.now() > deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    client.disconnect();
    server = await startTestServer('redis', {
      redisUrl: `rediss://127.0.0.1:${port}`,
      redisTlsCaFile: pki.caCert,
      rateLimitRequestsPerSecond: 1_000,
    });
    await applyFixtures(server.registry, project);
  });

  afterAll(async () => {
    await server?.stop();
    redis?.kill('SIGTERM');
    await pki?.remove();
  });

  it('writes and reads online features, and keeps the rate-limit buckets, through TLS', async () => {
    await server.features.writeOnlineFeatures({
      project,
      featureView: 'pair_stats',
      entities: readRequest(1).entities,
      eventTimestamps: [BigInt(nowMicros())],
      features: [{ name: 'amount', values: doubles(42.5) }],
    });
    const response = await server.features.getOnlineFeatures(readRequest(1));
    const values = response.features[0]?.values?.values;
    expect(values?.case === 'doubleValues' ? values.value.values : undefined).toEqual([42.5]);
    const client = new Redis(`rediss://127.0.0.1:${port}`, { tls: { ca: readFileSync(pki.caCert) } });
    try {
      const keys = await client.keys(`${server.config.redisKeyPrefix}rl:*`);
      expect(keys.length).toBeGreaterThan(0);
    } finally {
      client.disconnect();
    }
  });
});
