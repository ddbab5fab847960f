import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FeatureService } from '../../gen/fstore/v1/feature_service_pb.js';
import { RegistryService } from '../../gen/fstore/v1/registry_pb.js';
import { FeatureStatus } from '../../gen/fstore/v1/values_pb.js';
import { createClient } from '../../src/grpc/client.js';
import { randomName, requireEnvironment } from '../support/environment.js';
import { applyFixtures, int64s, strings, valuesOf, writePairAmount } from '../support/fixtures.js';
import { checkHealth } from '../support/grpc-probes.js';
import { dropSchema } from '../support/serving-harness.js';

/** `fstore serve` as a user runs it: a real process (or several), stopped with SIGTERM. */

const binary = join(import.meta.dirname, '../../bin/fstore.js');

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

interface Started {
  child: ChildProcess;
  output: () => string;
  exit: Promise<number | null>;
}

function run(args: string[], environment: Record<string, string>): Started {
  let output = '';
  const child = spawn(process.execPath, [binary, ...args], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      FSTORE_METRICS_PORT: '0',
      ...environment,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (data) => {
    output += data;
  });
  child.stderr?.on('data', (data) => {
    output += data;
  });
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, output: () => output, exit };
}

async function waitServing(address: string, started: Started, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (started.child.exitCode !== null) throw new Error(`fstore exited early:\n${started.output()}`);
    if ((await checkHealth(address).catch(() => 'DOWN')) === 'SERVING') return;
    if (Date.now() > deadline)
      throw new Error(`fstore not serving within ${timeoutMs} ms:\n${started.output()}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

describe('fstore serve', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  it('fails fast naming a bad setting', async () => {
    const started = run(['serve', '--port', 'abc'], {});
    expect(await started.exit).toBe(2);
    expect(started.output()).toContain('FSTORE_GRPC_PORT');
  });

  it('runs several processes on one port and drains them on SIGTERM', async () => {
    const port = await freePort();
    const schema = randomName('cli');
    const postgresUrl = requireEnvironment('FSTORE_TEST_POSTGRES_URL');
    const metricsPort = await freePort();
    const started = run(['serve', '--port', String(port), '--host', '127.0.0.1', '--processes', '2'], {
      FSTORE_METRICS_PORT: String(metricsPort),
      FSTORE_METRICS_HOST: '127.0.0.1',
      FSTORE_REDIS_URL: requireEnvironment('FSTORE_TEST_REDIS_URL'),
      FSTORE_POSTGRES_URL: postgresUrl,
      FSTORE_POSTGRES_SCHEMA: schema,
      FSTORE_REDIS_KEY_PREFIX: `${randomName('cli')}:`,
      FSTORE_SHUTDOWN_GRACE_MS: '3000',
    });
    cleanups.push(async () => {
      started.child.kill('SIGKILL');
      await dropSchema(postgresUrl, schema);
    });
    const address = `127.0.0.1:${port}`;
    await waitServing(address, started, 30_000);
    const serving = started.output().match(/"msg":"fstore serving"/g) ?? [];
    // Both workers may need a moment after the first one answers health.
    for (let wait = 0; serving.length < 2 && wait < 50; wait++)
      await new Promise((resolve) => setTimeout(resolve, 100));
    expect(started.output().match(/"msg":"fstore serving"/g)?.length).toBe(2);

    const registry = createClient(RegistryService, address);
    const features = createClient(FeatureService, address);
    const project = randomName('p');
    await applyFixtures(registry, project);
    await writePairAmount(features, project, 'c1', 3, 8);
    // A fresh connection may land on the other process: its registry cache must be current too.
    for (let attempt = 0; attempt < 6; attempt++) {
      const client = createClient(FeatureService, address, {
        channelOptions: { 'grpc.use_local_subchannel_pool': 1 },
      });
      const response = await client.getOnlineFeatures({
        project,
        features: ['pair_stats:amount'],
        entities: { user_id: strings('c1'), merchant_id: int64s(3) },
      });
      expect(valuesOf(response.features[0])).toEqual([8]);
      client.close();
    }
    registry.close();
    features.close();

    // The primary's /metrics sums both processes' figures; /readyz follows the serving processes.
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const calls = metrics
      .split('\n')
      .find(
        (line) =>
          line.startsWith('fstore_rpc_duration_seconds_count{') &&
          line.includes('method="fstore.v1.FeatureService/GetOnlineFeatures"') &&
          line.includes('code="OK"'),
      );
    expect(calls, metrics.slice(0, 2000)).toBeDefined();
    expect(Number(calls?.split(' ').pop())).toBe(6);
    expect((await fetch(`http://127.0.0.1:${metricsPort}/readyz`)).status).toBe(200);

    started.child.kill('SIGTERM');
    expect(await started.exit).toBe(0);
    expect(started.output()).toContain('shutting down');
  });

  it('serves on embedded defaults with no store configured', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'fstore-embedded-'));
    const port = await freePort();
    const started = run(['serve', '--port', String(port), '--host', '127.0.0.1'], {
      FSTORE_EMBEDDED_POSTGRES_DIR: dataDir,
      FSTORE_EMBEDDED_POSTGRES_PORT: String(await freePort()),
    });
    cleanups.push(async () => {
      started.child.kill('SIGKILL');
      await rm(dataDir, { recursive: true, force: true });
    });
    const address = `127.0.0.1:${port}`;
    await waitServing(address, started, 120_000);
    const registry = createClient(RegistryService, address);
    const features = createClient(FeatureService, address);
    const project = randomName('p');
    await applyFixtures(registry, project);
    await writePairAmount(features, project, 'e1', 1, 2);
    const response = await features.getOnlineFeatures({
      project,
      features: ['pair_stats:amount'],
      entities: { user_id: strings('e1'), merchant_id: int64s(1) },
    });
    expect(response.features[0]?.statuses).toEqual([FeatureStatus.PRESENT]);
    registry.close();
    features.close();
    started.child.kill('SIGTERM');
    expect(await started.exit).toBe(0);
  }, 180_000);
});
