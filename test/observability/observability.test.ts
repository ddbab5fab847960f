import { createServer, type Server } from 'node:http';
import { Writable } from 'node:stream';
import { Metadata } from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomName } from '../support/environment.js';
import { applyFixtures, failureOf, int64s, strings, writePairAmount } from '../support/fixtures.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { startThrowawayRedis, type ThrowawayRedis } from '../support/throwaway-redis.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The value of one sample line `name{labels} value` of a Prometheus text exposition. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const body = line.slice(name.length);
    if (Object.entries(labels).every(([key, value]) => body.includes(`${key}="${value}"`)))
      return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}

const online = 'fstore.v1.FeatureService/GetOnlineFeatures';

function metadataOf(entries: Record<string, string>): Metadata {
  const metadata = new Metadata();
  for (const [key, value] of Object.entries(entries)) metadata.set(key, value);
  return metadata;
}

/** Metrics, /healthz and /readyz, access logs: a serving process on a Redis this file owns. */
describe('metrics and health endpoints', () => {
  let redis: ThrowawayRedis;
  let server: TestServer;
  const logLines: Record<string, unknown>[] = [];
  const project = randomName('p');
  const read = (users: string[]) =>
    server.features.getOnlineFeatures(
      {
        project,
        features: ['pair_stats:amount'],
        entities: { user_id: strings(...users), merchant_id: int64s(...users.map(() => 1)) },
      },
      { metadata: metadataOf({ 'x-request-id': 'req-42' }) },
    );

  beforeAll(async () => {
    redis = await startThrowawayRedis();
    const sink = new Writable({
      write(chunk, _encoding, done) {
        for (const line of String(chunk).split('\n').filter(Boolean)) logLines.push(JSON.parse(line));
        done();
      },
    });
    server = await startTestServer(
      'redis',
      { redisUrl: redis.url, accessLog: 'all' },
      { logger: pino({ level: 'info' }, sink) },
    );
    await applyFixtures(server.registry, project);
    await writePairAmount(server.features, project, 'a', 1, 4242.125);
  });
  afterAll(async () => {
    await server?.stop();
    await redis?.stop();
  });

  const scrape = async () => {
    const response = await fetch(`${server.metricsUrl}/metrics`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain/);
    return response.text();
  };

  it('counts calls by method and status, values by status, batch sizes and store calls', async () => {
    const before = await scrape();
    const okBefore = sample(before, 'fstore_rpc_duration_seconds_count', { method: online, code: 'OK' }) ?? 0;
    const notFoundBefore = sample(before, 'fstore_online_values_total', { status: 'not_found' }) ?? 0;
    const presentBefore = sample(before, 'fstore_online_values_total', { status: 'present' }) ?? 0;
    for (let i = 0; i < 3; i++) await read(['a', 'nobody', 'nobody-else']);
    const bad = await failureOf(
      server.features.getOnlineFeatures({
        project,
        features: ['pair_stats:nope'],
        entities: { user_id: strings('a') },
      }),
    );
    const after = await scrape();
    expect(sample(after, 'fstore_rpc_duration_seconds_count', { method: online, code: 'OK' })).toBe(
      okBefore + 3,
    );
    expect(
      sample(after, 'fstore_rpc_duration_seconds_count', { method: online, code: bad.code.toUpperCase() }),
    ).toBeGreaterThanOrEqual(1);
    expect(sample(after, 'fstore_online_values_total', { status: 'not_found' })).toBe(notFoundBefore + 6);
    expect(sample(after, 'fstore_online_values_total', { status: 'present' })).toBe(presentBefore + 3);
    // Three entity rows per read: the histogram's le="5" bucket holds them, le="2" does not.
    expect(
      sample(after, 'fstore_online_request_entities_bucket', { le: '5' })! -
        sample(after, 'fstore_online_request_entities_bucket', { le: '2' })!,
    ).toBeGreaterThanOrEqual(3);
    expect(
      sample(after, 'fstore_online_served_age_seconds_count', { project, view: 'pair_stats' }),
    ).toBeGreaterThanOrEqual(3);
    expect(
      sample(after, 'fstore_store_operation_duration_seconds_count', {
        store: 'redis',
        operation: 'readMany',
        outcome: 'ok',
      }),
    ).toBeGreaterThanOrEqual(3);
    expect(sample(after, 'fstore_worker_pool_queue_depth')).toBe(0);
    expect(sample(after, 'fstore_worker_pool_utilization_ratio')).toBeGreaterThanOrEqual(0);
    expect(sample(after, 'fstore_eventloop_delay_p99_seconds')).toBeGreaterThanOrEqual(0);
    expect(sample(after, 'nodejs_eventloop_lag_p99_seconds')).toBeGreaterThanOrEqual(0);
  });

  it('logs each call with its request id, method, status and duration, and no feature values', async () => {
    await read(['a']);
    await sleep(50);
    const line = logLines.findLast((entry) => entry.msg === 'rpc' && entry.method === online);
    expect(line).toMatchObject({ requestId: 'req-42', method: online, code: 'OK' });
    expect(typeof line?.durationMs).toBe('number');
    const failed = logLines.find((entry) => entry.msg === 'rpc' && entry.code === 'NOT_FOUND');
    expect(failed?.level).toBe(40); // warn
    expect(JSON.stringify(logLines)).not.toContain('4242');
  });

  it('answers /healthz always and /readyz only while the stores answer, without holding gRPC calls', async () => {
    expect((await fetch(`${server.metricsUrl}/healthz`)).status).toBe(200);
    const ready = await fetch(`${server.metricsUrl}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({
      ready: true,
      checks: { onlineStore: true, offlineStore: true, registry: true },
    });
    // Scrapes while reads run: every read answers.
    const scrapes = Array.from({ length: 20 }, () =>
      fetch(`${server.metricsUrl}/metrics`).then((response) => response.text()),
    );
    const reads = await Promise.all(Array.from({ length: 20 }, () => read(['a'])));
    expect(reads.every((response) => response.features[0]?.statuses[0] === 1)).toBe(true);
    await Promise.all(scrapes);
    await redis.stop();
    const deadline = Date.now() + 10_000;
    let status = 0;
    let body: unknown;
    while (Date.now() < deadline) {
      const response = await fetch(`${server.metricsUrl}/readyz`);
      status = response.status;
      body = await response.json();
      if (status === 503) break;
      await sleep(100);
    }
    expect(status).toBe(503);
    expect(body).toMatchObject({ ready: false, checks: { onlineStore: false, offlineStore: true } });
    expect((await fetch(`${server.metricsUrl}/healthz`)).status).toBe(200);
    await redis.start();
    const back = Date.now() + 10_000;
    while (Date.now() < back && (await fetch(`${server.metricsUrl}/readyz`)).status !== 200) await sleep(100);
    expect((await fetch(`${server.metricsUrl}/readyz`)).status).toBe(200);
    expect((await fetch(`${server.metricsUrl}/nope`)).status).toBe(404);
  });
});

interface ReceivedSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
}

/** Tracing: spans exported over OTLP/HTTP to a receiver in this test, parented by the caller's. */
describe('tracing', () => {
  let server: TestServer;
  let unsampled: TestServer;
  let receiver: Server;
  const spans: ReceivedSpan[] = [];
  const project = randomName('p');

  beforeAll(async () => {
    receiver = createServer((request, response) => {
      let body = '';
      request.on('data', (chunk) => {
        body += chunk;
      });
      request.on('end', () => {
        const message = JSON.parse(body) as {
          resourceSpans: { scopeSpans: { spans: ReceivedSpan[] }[] }[];
        };
        for (const resource of message.resourceSpans)
          for (const scope of resource.scopeSpans) spans.push(...scope.spans);
        response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    const address = receiver.address() as { port: number };
    const otlpEndpoint = `http://127.0.0.1:${address.port}/v1/traces`;
    server = await startTestServer('redis', { otlpEndpoint });
    unsampled = await startTestServer('redis', { otlpEndpoint, traceSampleRatio: 0 });
    for (const serving of [server, unsampled]) {
      await applyFixtures(serving.registry, project);
      await writePairAmount(serving.features, project, 'a', 1, 9.5);
    }
  });
  afterAll(async () => {
    await server?.stop();
    await unsampled?.stop();
    await new Promise((resolve) => receiver?.close(resolve));
  });

  it('makes a server span per call, child of the incoming traceparent, with a Redis child span', async () => {
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const callerSpan = '00f067aa0ba902b7';
    await server.features.getOnlineFeatures(
      {
        project,
        features: ['pair_stats:amount'],
        entities: { user_id: strings('a'), merchant_id: int64s(1) },
      },
      { metadata: metadataOf({ traceparent: `00-${traceId}-${callerSpan}-01` }) },
    );
    const deadline = Date.now() + 10_000;
    while (
      Date.now() < deadline &&
      !spans.some((span) => span.traceId === traceId && span.name === 'redis readMany')
    )
      await sleep(100);
    const serverSpan = spans.find((span) => span.traceId === traceId && span.name === online);
    expect(serverSpan?.parentSpanId).toBe(callerSpan);
    const redisSpan = spans.find((span) => span.traceId === traceId && span.name === 'redis readMany');
    expect(redisSpan?.parentSpanId).toBe(serverSpan?.spanId);
  });

  it('traces no call at ratio 0 unless the caller sampled it', async () => {
    const sampledTrace = '5bf92f3577b34da6a3ce929d0e0e4737';
    const unsampledTrace = '6bf92f3577b34da6a3ce929d0e0e4738';
    const request = {
      project,
      features: ['pair_stats:amount'],
      entities: { user_id: strings('a'), merchant_id: int64s(1) },
    };
    const before = spans.length;
    await unsampled.features.getOnlineFeatures(request);
    await unsampled.features.getOnlineFeatures(request, {
      metadata: metadataOf({ traceparent: `00-${unsampledTrace}-00f067aa0ba902b7-00` }),
    });
    await unsampled.features.getOnlineFeatures(request, {
      metadata: metadataOf({ traceparent: `00-${sampledTrace}-00f067aa0ba902b7-01` }),
    });
    const deadline = Date.now() + 10_000;
    while (
      Date.now() < deadline &&
      !spans.some((span) => span.traceId === sampledTrace && span.name === 'redis readMany')
    )
      await sleep(100);
    expect(
      spans
        .filter((span) => span.traceId === sampledTrace)
        .map((span) => span.name)
        .sort(),
    ).toEqual(['redis readMany', online].sort());
    // The batch that carried the sampled trace was exported; no span of the other two calls came
    // (spans of the previous test's trace may still be arriving).
    const previousTrace = '4bf92f3577b34da6a3ce929d0e0e4736';
    const others = spans
      .slice(before)
      .filter((span) => span.traceId !== sampledTrace && span.traceId !== previousTrace);
    expect(others).toEqual([]);
  });
});
