/**
 * The composition root of `fstore stream`: one consumer-group member of one stream aggregation.
 * Reads the definition and its produced view from the registry, then runs the stream tier
 * (src/stream/stream-runner.ts) against Kafka, the online store and the offline store, logging its
 * figures every FSTORE_STREAM_STATS_INTERVAL_MS.
 */
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { Registry as MetricsRegistry } from 'prom-client';
import { createKafkaEventSource } from '../adapters/kafka/kafka-event-source.js';
import { createPostgresOfflineStore } from '../adapters/postgres/offline/postgres-offline-store.js';
import { createPostgresRegistry } from '../adapters/postgres/postgres-registry.js';
import type { Config } from '../config/config.js';
import { FStoreError } from '../domain/errors.js';
import { type MetricsServer, startMetricsServer } from '../observability/http.js';
import { registerStreamMetrics, registerStreamTimings } from '../observability/metrics.js';
import {
  createStreamRunner,
  histogramQuantile,
  type StreamRunner,
  type StreamStats,
} from '../stream/stream-runner.js';
import { createOnlineStore } from './serve.js';

export interface StreamRole {
  readonly runner: StreamRunner;
  stop(): Promise<void>;
}

export interface StreamRoleOptions {
  readonly project: string;
  readonly aggregation: string;
  /** Default: fstore.<project>.<aggregation>. */
  readonly groupId?: string;
  /** Default: <topic>.dlq. */
  readonly deadLetterTopic?: string;
  /**
   * Forget the aggregation's checkpoints before starting: every partition is read again from the
   * start of its log (after a definition change, whose old state cannot be restored).
   */
  readonly reset?: boolean;
  /**
   * Aborted: the start gives up at its next step, stops and closes what it had started (nothing
   * half-written: the reset's delete is one statement, and no batch is processed once stopping),
   * and rejects with a `cancelled` FStoreError.
   */
  readonly signal?: AbortSignal;
  readonly onFatal: (error: unknown) => void;
}

/** The figures of one stats interval, for the log (Prometheus metrics come with the metrics issue). */
export function summarizeStats(current: StreamStats, previous: StreamStats | undefined, seconds: number) {
  const delays = current.windowDelayHistogram.slice();
  if (previous)
    for (let bucket = 0; bucket < delays.length; bucket++)
      delays[bucket]! -= previous.windowDelayHistogram[bucket]!;
  return {
    eventsPerSecond: Math.round((current.records - (previous?.records ?? 0)) / seconds),
    records: current.records,
    windowsFired: current.windowsFired,
    windowsReemitted: current.windowsReemitted,
    late: current.late,
    malformed: current.malformed,
    invalid: current.invalid,
    deadLetters: current.deadLetters,
    checkpoints: current.checkpoints,
    lastCheckpointMs: Math.round(current.lastCheckpointMs),
    lastCheckpointBytes: current.lastCheckpointBytes,
    windowDelayP50Ms: histogramQuantile(delays, 0.5),
    windowDelayP99Ms: histogramQuantile(delays, 0.99),
    consumerWatermark: current.consumerWatermark,
    lag: current.partitions.reduce((sum, partition) => sum + partition.lag, 0),
    state: current.partitions.reduce(
      (sum, partition) => ({ keys: sum.keys + partition.keys, tiles: sum.tiles + partition.tiles }),
      { keys: 0, tiles: 0 },
    ),
    partitions: current.partitions.map(({ partition, lag, watermarkDelayMs }) => ({
      partition,
      lag,
      watermarkDelayMs: watermarkDelayMs === null ? null : Math.round(watermarkDelayMs),
    })),
  };
}

export async function startStreamRole(
  config: Config,
  options: StreamRoleOptions,
  logger: Logger,
): Promise<StreamRole> {
  if (!config.postgresUrl)
    throw new FStoreError(
      'invalid_argument',
      'fstore stream needs the shared registry and offline store: set FSTORE_POSTGRES_URL (or --postgres-url)',
    );
  if (!config.redisUrl && !config.redisClusterNodes)
    throw new FStoreError(
      'invalid_argument',
      'fstore stream writes to the shared online store: set FSTORE_REDIS_URL or FSTORE_REDIS_CLUSTER_NODES',
    );
  const { signal } = options;
  const stoppedWhileStarting = () =>
    new FStoreError(
      'cancelled',
      `fstore stream ${options.project}/${options.aggregation}: stopped while it started`,
    );
  /** Between the steps of the start: gives up once the signal is aborted. */
  const checkStop = () => {
    if (signal?.aborted) throw stoppedWhileStarting();
  };
  checkStop();
  const closers: (() => Promise<void>)[] = [];
  const closeAll = async () => {
    for (const close of closers.reverse()) await close().catch(() => {});
    closers.length = 0;
  };
  try {
    const registry = await createPostgresRegistry({
      connectionString: config.postgresUrl,
      schema: config.postgresSchema,
    });
    closers.push(async () => registry.close());
    checkStop();
    const aggregation = await registry.getStreamAggregation(options.project, options.aggregation);
    const view = await registry.getFeatureView(options.project, aggregation.name);
    checkStop();
    const { store: online } = createOnlineStore(config);
    closers.push(() => online.close());
    const offline = await createPostgresOfflineStore({
      connectionString: config.postgresUrl,
      schema: config.postgresSchema,
    });
    closers.push(() => offline.close());
    checkStop();
    if (options.reset) {
      const scope = { project: options.project, aggregation: aggregation.name, topic: aggregation.topic };
      const forgotten = await offline.deleteStreamCheckpoints(scope);
      logger.warn(
        { ...scope, partitions: forgotten },
        'checkpoints deleted: every partition is read from its start',
      );
      checkStop();
    }
    const source = createKafkaEventSource({
      brokers: config.kafkaBrokers.split(','),
      clientId: `fstore-stream-${hostname()}-${process.pid}`,
      groupId: options.groupId ?? `fstore.${options.project}.${aggregation.name}`,
      topic: aggregation.topic,
      deadLetterTopic: options.deadLetterTopic ?? `${aggregation.topic}.dlq`,
      partitionsConsumedConcurrently: config.streamConcurrency,
      maxBytesPerPartition: config.streamFetchBytes,
      sessionTimeoutMs: config.streamSessionTimeoutMs,
      logger,
    });
    // Metrics read the runner's figures at each scrape; the checkpoint histogram is fed as they commit.
    const metricsRegistry = config.metrics === 'on' ? new MetricsRegistry() : undefined;
    let current: StreamRunner | undefined;
    const observeCheckpoint = metricsRegistry
      ? registerStreamTimings(
          metricsRegistry,
          aggregation.name,
          () => current?.stats().windowDelayHistogram ?? new Uint32Array(0),
          histogramQuantile,
        )
      : undefined;
    const runner = createStreamRunner({
      ...(observeCheckpoint ? { onCheckpoint: observeCheckpoint } : {}),
      project: options.project,
      aggregation,
      view,
      source,
      online,
      offline,
      logger,
      checkpointIntervalMs: config.streamCheckpointIntervalMs,
      onlineExpiryGraceMs: config.onlineExpiryGraceMs,
      onFatal: options.onFatal,
    });
    current = runner;
    // Stopping the runner stops the source too, a start in progress included (it settles first).
    closers.push(() => runner.stop());
    let started = false;
    let metricsServer: MetricsServer | undefined;
    if (metricsRegistry) {
      registerStreamMetrics(metricsRegistry, aggregation.name, () => runner.stats());
      metricsServer = await startMetricsServer({
        host: config.metricsHost,
        port: config.metricsPort,
        metrics: async () => ({
          contentType: metricsRegistry.contentType,
          body: await metricsRegistry.metrics(),
        }),
        // Ready once this member has joined its group and owns partitions (or there is none to own).
        readiness: () => ({ ready: started, checks: { consumer: started } }),
        logger,
      });
      const server = metricsServer;
      closers.push(() => server.close());
      checkStop();
    }
    // Told to stop while the runner starts (connecting to Kafka, joining the group): the runner
    // is stopped at once, so its start gives up at its next step instead of going on.
    const stopRunner = () => {
      runner.stop().catch(() => {});
    };
    signal?.addEventListener('abort', stopRunner, { once: true });
    try {
      await runner.start();
    } finally {
      signal?.removeEventListener('abort', stopRunner);
    }
    checkStop();
    started = true;
    let previous: StreamStats | undefined;
    let previousAt = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      const current = runner.stats();
      logger.info({ stream: summarizeStats(current, previous, (now - previousAt) / 1000) }, 'stream figures');
      previous = current;
      previousAt = now;
    }, config.streamStatsIntervalMs);
    timer.unref();
    return {
      runner,
      async stop() {
        clearInterval(timer);
        await runner.stop();
        await closeAll();
      },
    };
  } catch (error) {
    await closeAll();
    // Whatever failed once the stop was asked for failed because of it (a start cut short).
    if (signal?.aborted) throw stoppedWhileStarting();
    throw error;
  }
}
