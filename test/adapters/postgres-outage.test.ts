import { afterAll, beforeAll, expect, it } from 'vitest';
import { createPostgresRegistry } from '../../src/adapters/postgres/postgres-registry.js';
import { FStoreError } from '../../src/domain/errors.js';
import type { EntityDefinition } from '../../src/domain/model.js';
import type { Registry } from '../../src/ports/registry.js';
import { startThrowawayPostgres, type ThrowawayPostgres } from '../support/throwaway-postgres.js';

// This file stops and restarts PostgreSQL, so it runs its own server instead of the shared one.
let server: ThrowawayPostgres;
let registry: Registry;

const user: EntityDefinition = {
  name: 'user',
  joinKeys: [{ name: 'user_id', type: 'int64' }],
  description: '',
};

beforeAll(async () => {
  server = await startThrowawayPostgres();
  registry = await createPostgresRegistry({
    connectionString: server.connectionString,
    schema: 'fstore',
    connectTimeoutMs: 1_000,
    watchReconnectInitialDelayMs: 50,
    watchReconnectMaxDelayMs: 500,
  });
});

afterAll(async () => {
  await registry?.close();
  await server?.destroy();
});

async function eventually(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

it('fails fast with unavailable while PostgreSQL is down and recovers by itself', async () => {
  await registry.applyEntity('p', user, { force: false });
  const events: { reconnected: boolean }[] = [];
  const stopWatching = await registry.watch((event) => events.push(event));
  // Several idle pooled connections exist when the server goes away.
  await Promise.all([registry.listEntities('p'), registry.getEntity('p', 'user'), registry.loadSnapshot()]);

  await server.stop();
  const calls: [string, () => Promise<unknown>][] = [
    ['getEntity', () => registry.getEntity('p', 'user')],
    ['listEntities', () => registry.listEntities('p')],
    ['applyEntity', () => registry.applyEntity('p', { ...user, description: 'down' }, { force: false })],
    ['loadSnapshot', () => registry.loadSnapshot()],
    ['listProjects', () => registry.listProjects()],
  ];
  for (const [name, call] of calls) {
    const started = Date.now();
    const error = await call().then(
      () => undefined,
      (reason: unknown) => reason,
    );
    expect(error, name).toBeInstanceOf(FStoreError);
    expect((error as FStoreError).code, name).toBe('unavailable');
    expect((error as FStoreError).message, name).toMatch(
      /^registry database \(PostgreSQL\) is unavailable: /,
    );
    expect(Date.now() - started, name).toBeLessThan(2_000);
  }
  expect(events.filter((event) => event.reconnected)).toEqual([]);

  await server.start();
  await eventually(
    () => events.some((event) => event.reconnected),
    10_000,
    'watch to report reconnected: true',
  );
  expect(await registry.getEntity('p', 'user')).toMatchObject(user);

  // The change feed works again after the reconnection.
  const heardBefore = events.length;
  await registry.applyEntity('p', { ...user, description: 'after restart' }, { force: false });
  await eventually(() => events.length > heardBefore, 5_000, 'a notification after the restart');
  expect(events.at(-1)).toEqual({ reconnected: false });
  await stopWatching();
});

it('closes promptly while PostgreSQL is down, even with a watch reconnecting', async () => {
  const other = await createPostgresRegistry({
    connectionString: server.connectionString,
    schema: 'fstore',
    connectTimeoutMs: 1_000,
    closeTimeoutMs: 1_000,
  });
  await other.watch(() => undefined);
  await other.listEntities('p');
  await server.stop();
  try {
    await expect(other.listEntities('p')).rejects.toMatchObject({ code: 'unavailable' });
    const started = Date.now();
    await other.close();
    expect(Date.now() - started).toBeLessThan(2_000);
    await expect(other.listEntities('p')).rejects.toMatchObject({ code: 'unavailable' });
  } finally {
    await server.start();
  }
});

it('recovers after a restart with no call in between', async () => {
  await registry.listEntities('p');
  await server.restart();
  // The first call may land on a connection the server closed: it fails as unavailable at worst,
  // and the call after it succeeds.
  const first = await registry.listEntities('p').catch((error: unknown) => error);
  if (first instanceof Error) expect((first as FStoreError).code).toBe('unavailable');
  expect((await registry.listEntities('p')).map((entity) => entity.name)).toEqual(['user']);
});
