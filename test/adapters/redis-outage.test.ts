import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { createRedisOnlineStore } from '../../src/adapters/redis/redis-online-store.js';
import { FStoreError } from '../../src/domain/errors.js';
import type { OnlineStore } from '../../src/ports/online-store.js';
import { rowAt } from '../conformance/online-store.js';

/**
 * Outages of the online store (DESIGN §5: degrade to UNAVAILABLE, recover by itself). Each test
 * runs its own throwaway redis-server on a free loopback port, so killing it disturbs no other
 * test file running in parallel against the shared servers.
 */

const host = '127.0.0.1';
const failFastMs = 1_500;
const recoveryMs = 10_000;

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function answersPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, host);
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('error', () => done(false));
    socket.once('data', (data) => done(data.toString().startsWith('+PONG')));
    socket.once('connect', () => socket.write('PING\r\n'));
  });
}

const servers = new Set<ChildProcess>();

async function startRedisServer(port: number): Promise<ChildProcess> {
  const child = spawn(
    'redis-server',
    ['--bind', host, '--port', String(port), '--save', '', '--appendonly', 'no', '--daemonize', 'no'],
    { stdio: 'ignore' },
  );
  servers.add(child);
  let exited = false;
  child.once('exit', () => {
    exited = true;
    servers.delete(child);
  });
  child.once('error', () => {
    exited = true;
  });
  const deadline = Date.now() + 10_000;
  while (!(await answersPing(port))) {
    if (exited) throw new Error(`redis-server on port ${port} exited at start (is redis-server installed?)`);
    if (Date.now() > deadline)
      throw new Error(`redis-server on port ${port} did not answer PING within 10 s`);
    await sleep(25);
  }
  return child;
}

async function killRedisServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL'); // a crash, not a clean shutdown
  await exited;
}

afterEach(async () => {
  await Promise.all(Array.from(servers, killRedisServer));
});

/** Runs `call`, expecting FStoreError 'unavailable' within the fail-fast bound; returns the time. */
async function expectUnavailableQuickly(what: string, call: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  const error = await call().then(
    () => undefined,
    (reason: unknown) => reason,
  );
  const elapsed = performance.now() - started;
  expect(error, `${what} should reject`).toBeInstanceOf(FStoreError);
  expect((error as FStoreError).code, `${what}: ${(error as Error).message}`).toBe('unavailable');
  expect((error as FStoreError).message).toMatch(/^online store \(Redis\) is unavailable: /);
  expect(elapsed, `${what} took ${elapsed.toFixed(0)} ms`).toBeLessThan(failFastMs);
  return elapsed;
}

async function pollUntilReadable(store: OnlineStore, key: string, within: number): Promise<number> {
  const started = performance.now();
  for (;;) {
    try {
      await store.readMany([key]);
      return performance.now() - started;
    } catch (error) {
      if (performance.now() - started > within) throw error;
      await sleep(50);
    }
  }
}

const entry = (key: string, time: number) => ({ key, value: rowAt(time, key), expireAtMs: 0 });
const keyPrefix = (): string => `fstore-outage:${randomBytes(4).toString('hex')}:`;

describe('redis online store: outages', () => {
  it("rejects every call with 'unavailable' at once while Redis is down, and recovers when it is back", {
    timeout: 30_000,
  }, async () => {
    const port = await freePort();
    const server = await startRedisServer(port);
    const store = createRedisOnlineStore({ url: `redis://${host}:${port}`, keyPrefix: keyPrefix() });
    try {
      expect(await store.writeMany([entry('k', 1)])).toEqual({ written: 1, stale: 0 });
      expect(await store.readMany(['k'])).toHaveLength(1);

      await killRedisServer(server);
      // Over a second of calls, so they meet the client in every state of its reconnect loop.
      for (let attempt = 0; attempt < 6; attempt++) {
        await expectUnavailableQuickly(`readMany #${attempt}`, () => store.readMany(['k']));
        await expectUnavailableQuickly(`writeMany #${attempt}`, () => store.writeMany([entry('k', 2)]));
        await expectUnavailableQuickly(`ping #${attempt}`, () => store.ping());
        await sleep(200);
      }

      await startRedisServer(port);
      const recoveredAfter = await pollUntilReadable(store, 'k', recoveryMs);
      expect(recoveredAfter).toBeLessThan(recoveryMs);
      // A fresh server without persistence: the row is gone, and the script is loaded again.
      expect(await store.readMany(['k'])).toEqual([null]);
      expect(await store.writeMany([entry('k', 3)])).toEqual({ written: 1, stale: 0 });
      expect(await store.writeMany([entry('k', 2)])).toEqual({ written: 0, stale: 1 });
      await store.ping();
    } finally {
      await store.close();
    }
  });

  it("fails fast with 'unavailable' when Redis was never reachable, and close does not hang", async () => {
    const port = await freePort(); // nothing listens there
    const store = createRedisOnlineStore({ url: `redis://${host}:${port}`, keyPrefix: keyPrefix() });
    await expectUnavailableQuickly('first readMany', () => store.readMany(['k']));
    await expectUnavailableQuickly('first writeMany', () => store.writeMany([entry('k', 1)]));
    const started = performance.now();
    await store.close();
    expect(performance.now() - started).toBeLessThan(failFastMs);
  });

  it("maps a hung Redis (SIGSTOP) to 'unavailable' after the command timeout, then recovers", {
    timeout: 30_000,
  }, async () => {
    const port = await freePort();
    const server = await startRedisServer(port);
    const store = createRedisOnlineStore({
      url: `redis://${host}:${port}`,
      keyPrefix: keyPrefix(),
      commandTimeoutMs: 300,
    });
    try {
      await store.writeMany([entry('k', 1)]);
      server.kill('SIGSTOP');
      try {
        const elapsed = await expectUnavailableQuickly('readMany on a hung server', () =>
          store.readMany(['k']),
        );
        expect(elapsed).toBeGreaterThanOrEqual(250);
        await expectUnavailableQuickly('writeMany on a hung server', () => store.writeMany([entry('k', 2)]));
      } finally {
        server.kill('SIGCONT');
      }
      await pollUntilReadable(store, 'k', recoveryMs);
      // The timed-out write may or may not have been applied once the server resumed: both are fine.
      expect(await store.writeMany([entry('k', 3)])).toEqual({ written: 1, stale: 0 });
      const [value] = await store.readMany(['k']);
      expect(Buffer.from(value as Uint8Array)).toEqual(Buffer.from(rowAt(3, 'k')));
    } finally {
      await store.close();
    }
  });
});
