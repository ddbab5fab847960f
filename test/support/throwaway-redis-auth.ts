import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';

/**
 * A redis-server of its own that requires a password (`--requirepass`), for tests of refused
 * credentials. No persistence. Unlike the shared test Redis, its password can be changed while it
 * runs (CONFIG SET requirepass), as when an operator rotates it.
 */
export interface ThrowawayAuthRedis {
  readonly port: number;
  /** Without the password: pass it separately (FSTORE_REDIS_PASSWORD). */
  readonly url: string;
  /** Changes the password the server requires; open connections stay authenticated. */
  setPassword(password: string): Promise<void>;
  /** SIGKILL and wait for the exit. */
  stop(): Promise<void>;
}

/** A port nothing listens on at 127.0.0.1 (as of now). */
export async function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

export async function startThrowawayAuthRedis(password: string): Promise<ThrowawayAuthRedis> {
  const port = await freeLoopbackPort();
  const child: ChildProcess = spawn(
    'redis-server',
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--requirepass',
      password,
    ],
    { stdio: 'ignore' },
  );
  let exited = false;
  child.once('exit', () => {
    exited = true;
  });
  child.once('error', () => {
    exited = true;
  });
  let current = password;
  // One admin connection, authenticated with whatever password is current.
  const admin = () => {
    const client = new Redis({
      host: '127.0.0.1',
      port,
      password: current,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    // connect() rejects with the same error; without a listener ioredis would print it.
    client.on('error', () => {});
    return client;
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    const client = admin();
    try {
      await client.connect();
      if ((await client.ping()) === 'PONG') break;
    } catch {
      // not listening yet
    } finally {
      client.disconnect();
    }
    if (exited) throw new Error(`redis-server on port ${port} exited at start (is redis-server installed?)`);
    if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not answer within 10 s`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    async setPassword(next) {
      const client = admin();
      try {
        await client.connect();
        await client.config('SET', 'requirepass', next);
        current = next;
      } finally {
        client.disconnect();
      }
    },
    async stop() {
      if (exited || child.exitCode !== null) return;
      await new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      });
    },
  };
}
