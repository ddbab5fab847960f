import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { createRedisOnlineStore } from '../../src/adapters/redis/redis-online-store.js';
import { encodeOnlineKey } from '../../src/domain/online-codec.js';
import type { OnlineEntry, OnlineStore } from '../../src/ports/online-store.js';
import { describeOnlineStoreConformance, rowAt } from '../conformance/online-store.js';

/**
 * The Redis online store against the real servers of `scripts/servers.sh`: a single Redis
 * (FSTORE_TEST_REDIS_URL) and a 3-master Redis Cluster (FSTORE_TEST_REDIS_CLUSTER_NODES).
 * Without them these tests fail rather than skip: a green run must mean Redis was exercised.
 */

function requiredEnv(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === '') {
    throw new Error(
      `${name} is not set: start the test servers with \`bash scripts/servers.sh start\` and export ` +
        'their addresses with `eval "$(bash scripts/servers.sh env)"` before running the Redis tests',
    );
  }
  return value;
}

interface NodeAddress {
  readonly host: string;
  readonly port: number;
}

const singleUrl = (): string => requiredEnv('FSTORE_TEST_REDIS_URL');
const clusterSeeds = (): string[] =>
  requiredEnv('FSTORE_TEST_REDIS_CLUSTER_NODES')
    .split(',')
    .map((node) => node.trim())
    .filter((node) => node !== '');
const singleAddress = (): NodeAddress => {
  const url = new URL(singleUrl());
  return { host: url.hostname, port: Number(url.port || 6379) };
};
const randomPrefix = (): string => `fstore-test:${randomBytes(6).toString('hex')}:`;
const entry = (key: string, value: Uint8Array): OnlineEntry => ({ key, value, expireAtMs: 0 });

// Admin connections (cleanup, MONITOR, CLUSTER SLOTS) outside the store under test.
const adminClients = new Map<string, Redis>();
function admin(address: NodeAddress): Redis {
  const key = `${address.host}:${address.port}`;
  let client = adminClients.get(key);
  if (client === undefined) {
    client = new Redis({ host: address.host, port: address.port, maxRetriesPerRequest: 1 });
    adminClients.set(key, client);
  }
  return client;
}
afterAll(async () => {
  await Promise.all(
    Array.from(adminClients.values(), (client) => client.quit().catch(() => client.disconnect())),
  );
});

/** The cluster's masters and the master port of every slot, from CLUSTER SLOTS. */
async function clusterTopology(): Promise<{ masters: NodeAddress[]; portOfSlot: Int32Array }> {
  const [host, port] = (clusterSeeds()[0] as string).split(':') as [string, string];
  const ranges = (await admin({ host, port: Number(port) }).call('CLUSTER', 'SLOTS')) as [
    number,
    number,
    [string, number, ...unknown[]],
  ][];
  const portOfSlot = new Int32Array(16_384).fill(-1);
  const masters = new Map<number, NodeAddress>();
  for (const [start, end, [masterHost, masterPort]] of ranges) {
    portOfSlot.fill(masterPort, start, end + 1);
    masters.set(masterPort, { host: masterHost, port: masterPort });
  }
  return { masters: [...masters.values()], portOfSlot };
}

async function deleteKeysWithPrefix(node: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await node.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1_000);
    cursor = next;
    if (keys.length > 0) {
      // One UNLINK per key: on a cluster node the keys of one SCAN page span many slots.
      const pipeline = node.pipeline();
      for (const key of keys) pipeline.unlink(key);
      await pipeline.exec();
    }
  } while (cursor !== '0');
}

async function createSingleStore(): Promise<{
  store: OnlineStore;
  prefix: string;
  cleanup: () => Promise<void>;
}> {
  const url = singleUrl();
  const prefix = randomPrefix();
  const store = createRedisOnlineStore({ url, keyPrefix: prefix });
  const cleanup = async (): Promise<void> => {
    await store.close();
    await deleteKeysWithPrefix(admin(singleAddress()), prefix);
  };
  return { store, prefix, cleanup };
}

async function createClusterStore(): Promise<{
  store: OnlineStore;
  prefix: string;
  cleanup: () => Promise<void>;
}> {
  const clusterNodes = clusterSeeds();
  const prefix = randomPrefix();
  const store = createRedisOnlineStore({ clusterNodes, keyPrefix: prefix });
  const cleanup = async (): Promise<void> => {
    await store.close();
    const { masters } = await clusterTopology();
    await Promise.all(masters.map((master) => deleteKeysWithPrefix(admin(master), prefix)));
  };
  return { store, prefix, cleanup };
}

describeOnlineStoreConformance('redis (single server)', createSingleStore);
describeOnlineStoreConformance('redis (cluster)', createClusterStore);

// ------------------------------------------------------------------------------------------------
// One round trip: commands seen by MONITOR, and socket writes seen by the client process.
// ------------------------------------------------------------------------------------------------

interface LoggedCommand {
  readonly port: number;
  readonly name: string;
  readonly args: readonly string[];
}

/**
 * One MONITOR line: `+1700000000.123456 [0 127.0.0.1:50000] "mget" "key1" "key2"`. Arguments are
 * quoted with C-style escapes; the test keys are plain ASCII, so only `\"` and `\\` matter here.
 */
function parseMonitorLine(line: string): { source: string; args: string[] } | undefined {
  const header = /^\+\d+\.\d+ \[\d+ ([^\]]+)\] /.exec(line);
  if (header === null) return undefined;
  const args = Array.from(line.slice(header[0].length).matchAll(/"((?:[^"\\]|\\.)*)"/g), (match) =>
    (match[1] as string).replace(/\\(.)/g, '$1'),
  );
  return { source: header[1] as string, args };
}

/**
 * MONITOR on each node over a raw socket (ioredis's monitor() can misread a MONITOR line that
 * arrives in the same packet as its +OK), keeping client commands that touch `marker`; the calls a
 * script makes itself (source `lua`) are left out.
 */
async function monitorCommands(nodes: readonly NodeAddress[], marker: string) {
  const commands: LoggedCommand[] = [];
  const sockets = await Promise.all(
    nodes.map(
      (node) =>
        new Promise<net.Socket>((resolve, reject) => {
          const socket = net.connect(node.port, node.host);
          let buffered = '';
          let started = false;
          socket.setEncoding('latin1');
          socket.once('error', reject);
          socket.on('data', (chunk: string) => {
            buffered += chunk;
            let end = buffered.indexOf('\r\n');
            while (end >= 0) {
              const line = buffered.slice(0, end);
              buffered = buffered.slice(end + 2);
              end = buffered.indexOf('\r\n');
              if (!started) {
                started = line === '+OK';
                if (started) resolve(socket);
                else reject(new Error(`MONITOR on port ${node.port} answered ${line}`));
                continue;
              }
              const parsed = parseMonitorLine(line);
              if (parsed === undefined || parsed.source === 'lua') continue;
              if (!parsed.args.some((arg) => arg.includes(marker))) continue;
              const [name = '', ...args] = parsed.args;
              commands.push({ port: node.port, name: name.toLowerCase(), args });
            }
          });
          socket.write('MONITOR\r\n');
        }),
    ),
  );
  return {
    /** Waits until at least `count` commands arrived, then a little longer to catch any extra. */
    async settle(count: number): Promise<LoggedCommand[]> {
      const deadline = Date.now() + 3_000;
      while (commands.length < count && Date.now() < deadline) await sleep(10);
      await sleep(150);
      return commands.splice(0);
    },
    async stop(): Promise<void> {
      for (const socket of sockets) socket.destroy();
    },
  };
}

/** Counts socket writes carrying `marker`, per remote port, while `action` runs. */
async function countSocketWrites(
  marker: string,
  action: () => Promise<unknown>,
): Promise<Map<number, number>> {
  const prototype = net.Socket.prototype;
  const hadOwnWrite = Object.hasOwn(prototype, 'write');
  const originalWrite = prototype.write;
  const counts = new Map<number, number>();
  prototype.write = function (this: net.Socket, chunk: unknown, ...rest: unknown[]) {
    const text = typeof chunk === 'string' ? chunk : Buffer.isBuffer(chunk) ? chunk.toString('latin1') : '';
    if (text.includes(marker)) {
      const port = this.remotePort ?? -1;
      counts.set(port, (counts.get(port) ?? 0) + 1);
    }
    return (originalWrite as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
  } as typeof originalWrite;
  try {
    await action();
  } finally {
    if (hadOwnWrite) prototype.write = originalWrite;
    else delete (prototype as { write?: unknown }).write;
  }
  return counts;
}

const countBy = <T>(items: readonly T[], keyOf: (item: T) => number): Map<number, number> => {
  const counts = new Map<number, number>();
  for (const item of items) counts.set(keyOf(item), (counts.get(keyOf(item)) ?? 0) + 1);
  return counts;
};

describe('redis online store: one round trip per call', () => {
  const keys = Array.from({ length: 300 }, (_, index) =>
    encodeOnlineKey(1, [`user_${String(index).padStart(6, '0')}`]),
  );

  it('single server: 300 keys are read with one MGET and written in one pipeline, one socket write each', async () => {
    const { store, prefix, cleanup } = await createSingleStore();
    const address = singleAddress();
    const monitor = await monitorCommands([address], prefix);
    try {
      // Warm-up: ioredis sends the script with EVAL once per connection, EVALSHA afterwards.
      await store.writeMany(keys.map((key) => entry(key, rowAt(1, key))));
      await monitor.settle(1);

      const writeSockets = await countSocketWrites(prefix, () =>
        store.writeMany(keys.map((key) => entry(key, rowAt(2, key)))),
      );
      const writes = await monitor.settle(1);
      // A few script calls of at most 128 rows each (bounding how long each blocks Redis), all in
      // one pipeline: one socket write.
      expect(new Set(writes.map((command) => command.name))).toEqual(new Set(['evalsha']));
      expect(writes.reduce((total, command) => total + Number(command.args[1]), 0)).toBe(keys.length);
      expect([...writeSockets]).toEqual([[address.port, 1]]);

      let read: (Uint8Array | null)[] = [];
      const readSockets = await countSocketWrites(prefix, async () => {
        read = await store.readMany(keys);
      });
      const reads = await monitor.settle(1);
      expect(reads.map((command) => command.name)).toEqual(['mget']);
      expect(reads[0]?.args).toHaveLength(300);
      expect([...readSockets]).toEqual([[address.port, 1]]);
      expect(read.every((value) => value !== null)).toBe(true);
    } finally {
      await monitor.stop();
      await cleanup();
    }
  });

  it('cluster: one MGET / EVALSHA per slot, in one pipeline (one socket write) per master', async () => {
    const { store, prefix, cleanup } = await createClusterStore();
    const { masters, portOfSlot } = await clusterTopology();
    // The server's own slot for each key, to check the client's grouping against.
    const slotQueries = admin(masters[0] as NodeAddress).pipeline();
    for (const key of keys) slotQueries.call('CLUSTER', 'KEYSLOT', prefix + key);
    const slots = ((await slotQueries.exec()) ?? []).map(([, slot]) => slot as number);
    const slotsPerPort = new Map<number, Set<number>>();
    for (const slot of slots) {
      const port = portOfSlot[slot] as number;
      slotsPerPort.set(port, (slotsPerPort.get(port) ?? new Set()).add(slot));
    }
    const expectedCalls = new Map([...slotsPerPort].map(([port, portSlots]) => [port, portSlots.size]));
    const expectedSockets = new Map([...slotsPerPort.keys()].map((port) => [port, 1]));
    expect(slotsPerPort.size).toBe(masters.length); // 300 keys reach every master

    const monitor = await monitorCommands(masters, prefix);
    try {
      await store.writeMany(keys.map((key) => entry(key, rowAt(1, key))));
      await monitor.settle(new Set(slots).size);

      const writeSockets = await countSocketWrites(prefix, () =>
        store.writeMany(keys.map((key) => entry(key, rowAt(2, key)))),
      );
      const writes = await monitor.settle(new Set(slots).size);
      expect(new Set(writes.map((command) => command.name))).toEqual(new Set(['evalsha']));
      expect(countBy(writes, (command) => command.port)).toEqual(expectedCalls);
      expect(writeSockets).toEqual(expectedSockets);

      let read: (Uint8Array | null)[] = [];
      const readSockets = await countSocketWrites(prefix, async () => {
        read = await store.readMany(keys);
      });
      const reads = await monitor.settle(new Set(slots).size);
      expect(new Set(reads.map((command) => command.name))).toEqual(new Set(['mget']));
      expect(countBy(reads, (command) => command.port)).toEqual(expectedCalls);
      expect(reads.reduce((total, command) => total + command.args.length, 0)).toBe(keys.length);
      for (const command of reads) {
        const commandSlots = new Set(
          command.args.map((key) => slots[keys.indexOf(key.slice(prefix.length))]),
        );
        expect(commandSlots.size).toBe(1); // one slot per MGET ...
        expect(portOfSlot[[...commandSlots][0] as number]).toBe(command.port); // ... sent to its master
      }
      expect(readSockets).toEqual(expectedSockets);
      expect(read.map((value) => (value === null ? null : Buffer.from(value)))).toEqual(
        keys.map((key) => Buffer.from(rowAt(2, key))),
      );
    } finally {
      await monitor.stop();
      await cleanup();
    }
  });
});

describe('redis online store: errors and options', () => {
  it('rejects malformed entries before sending anything, naming the entry', async () => {
    const { store, cleanup } = await createSingleStore();
    try {
      await expect(store.writeMany([entry('k', new Uint8Array(7))])).rejects.toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('entries[0].value'),
      });
      await expect(store.writeMany([{ key: 'k', value: rowAt(1), expireAtMs: 1.5 }])).rejects.toMatchObject({
        code: 'invalid_argument',
        message: expect.stringContaining('entries[0].expireAtMs'),
      });
    } finally {
      await cleanup();
    }
  });

  it("translates a Redis error reply into FStoreError 'internal'", async () => {
    const { store, prefix, cleanup } = await createSingleStore();
    try {
      await admin(singleAddress()).hset(`${prefix}not-a-string`, 'field', 'value');
      await expect(store.writeMany([entry('not-a-string', rowAt(1))])).rejects.toMatchObject({
        name: 'FStoreError',
        code: 'internal',
        message: expect.stringMatching(/^online store \(Redis\) failed: .*WRONGTYPE/),
      });
      // The script call that met the foreign key wrote none of its rows.
      await expect(
        store.writeMany([
          entry('before', rowAt(1)),
          entry('not-a-string', rowAt(1)),
          entry('after', rowAt(1)),
        ]),
      ).rejects.toMatchObject({ code: 'internal' });
      expect(await store.readMany(['before', 'after'])).toEqual([null, null]);
      expect(await admin(singleAddress()).type(`${prefix}not-a-string`)).toBe('hash');
    } finally {
      await cleanup();
    }
  });

  it('loads the write script again when the server lost it (SCRIPT FLUSH), single server and cluster', async () => {
    const single = await createSingleStore();
    const cluster = await createClusterStore();
    try {
      const keys = Array.from({ length: 300 }, (_, index) => `flush:${index}`);
      for (const [round, { store }] of [single, cluster].entries()) {
        expect(await store.writeMany(keys.map((key) => entry(key, rowAt(1))))).toEqual({
          written: 300,
          stale: 0,
        });
        const { masters } = await clusterTopology();
        const servers = round === 0 ? [singleAddress()] : masters;
        await Promise.all(servers.map((server) => admin(server).script('FLUSH')));
        expect(
          await store.writeMany(keys.map((key) => entry(key, rowAt(key.endsWith('0') ? 0 : 2)))),
        ).toEqual({
          written: 270,
          stale: 30,
        });
        const read = await store.readMany(keys);
        expect(read.map((value) => Buffer.from(value as Uint8Array).readBigInt64BE(0))).toEqual(
          keys.map((key) => (key.endsWith('0') ? 1n : 2n)),
        );
      }
    } finally {
      await single.cleanup();
      await cluster.cleanup();
    }
  });

  it('fails after close with unavailable, and close is idempotent', async () => {
    const { store, cleanup } = await createSingleStore();
    await store.ping();
    await store.close();
    await expect(store.readMany(['k'])).rejects.toMatchObject({ code: 'unavailable' });
    await cleanup();
  });

  it('validates its options, naming the offending one', () => {
    expect(() => createRedisOnlineStore({})).toThrow(/redis: set exactly one of url/);
    expect(() =>
      createRedisOnlineStore({ url: 'redis://127.0.0.1:1', clusterNodes: ['127.0.0.1:2'] }),
    ).toThrow(/exactly one/);
    expect(() => createRedisOnlineStore({ url: 'http://127.0.0.1:6379' })).toThrow(/redis\.url/);
    expect(() => createRedisOnlineStore({ clusterNodes: ['127.0.0.1'] })).toThrow(/redis\.clusterNodes\[0\]/);
    expect(() => createRedisOnlineStore({ url: 'redis://127.0.0.1:1', commandTimeoutMs: 0 })).toThrow(
      /redis\.commandTimeoutMs/,
    );
  });
});
