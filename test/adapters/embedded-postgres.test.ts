import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { startEmbeddedPostgres } from '../../src/adapters/postgres/embedded.js';
import { createPostgresRegistry } from '../../src/adapters/postgres/postgres-registry.js';
import type { EntityDefinition } from '../../src/domain/model.js';

const user: EntityDefinition = {
  name: 'user',
  joinKeys: [{ name: 'user_id', type: 'int64' }],
  description: 'kept across restarts',
};

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      probe.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')),
      );
    });
  });
}

/** A fresh parent directory; mkdtemp makes it private, but as root the server runs as another user. */
async function newDataDir(): Promise<string> {
  const parent = await mkdtemp(join(tmpdir(), 'fstore-embedded-pg-'));
  await chmod(parent, 0o755);
  cleanups.push(() => rm(parent, { recursive: true, force: true }));
  return join(parent, 'postgres');
}

it('starts, keeps the registry in its data directory across a restart, and stops', async () => {
  const dataDir = await newDataDir();
  const port = await freePort();

  const first = await startEmbeddedPostgres({ dataDir, port });
  cleanups.push(() => first.stop());
  expect(first.connectionString).toMatch(
    new RegExp(`^postgres://postgres:[^@]+@127\\.0\\.0\\.1:${port}/postgres$`),
  );
  const registry = await createPostgresRegistry({ connectionString: first.connectionString });
  await registry.applyEntity('demo', user, { force: false });
  await registry.close();
  await first.stop();
  await first.stop(); // a second stop is a no-op

  // Stopped means stopped: nothing accepts connections on the port any more.
  const down = await createPostgresRegistry({
    connectionString: first.connectionString,
    connectTimeoutMs: 1_000,
  }).then(
    () => undefined,
    (error: unknown) => error,
  );
  expect(down).toMatchObject({ code: 'unavailable' });

  const second = await startEmbeddedPostgres({ dataDir, port });
  cleanups.push(() => second.stop());
  expect(second.connectionString).toBe(first.connectionString);
  const reopened = await createPostgresRegistry({ connectionString: second.connectionString });
  cleanups.push(() => reopened.close());
  expect(await reopened.getEntity('demo', 'user')).toMatchObject(user);
  expect(await readFile(join(dataDir, 'pgdata', 'PG_VERSION'), 'utf8')).toMatch(/^\d+\n$/);
  await reopened.close();
  await second.stop();
});

it('refuses to use the wrong password: the server is not open to anyone on loopback', async () => {
  const dataDir = await newDataDir();
  const embedded = await startEmbeddedPostgres({ dataDir, port: await freePort() });
  cleanups.push(() => embedded.stop());
  const wrong = embedded.connectionString.replace(/:[^:@]+@/, ':wrong@');
  const error = await createPostgresRegistry({ connectionString: wrong }).then(
    () => undefined,
    (reason: unknown) => reason,
  );
  expect(error).toMatchObject({ code: 'unavailable' });
  await embedded.stop();
});
