import cluster from 'node:cluster';
import type { Logger } from 'pino';
import { AggregatorRegistry, Registry as MetricsRegistry } from 'prom-client';
import { failureReason } from '../adapters/connection-failure.js';
import { createMemoryOnlineStore } from '../adapters/memory/memory-online-store.js';
import { startEmbeddedPostgres } from '../adapters/postgres/embedded.js';
import { createPostgresOfflineStore } from '../adapters/postgres/offline/postgres-offline-store.js';
import { createPostgresProfileStore } from '../adapters/postgres/postgres-profile-store.js';
import { createPostgresRegistry } from '../adapters/postgres/postgres-registry.js';
import { createRedisOnlineStore } from '../adapters/redis/redis-online-store.js';
import type { Config } from '../config/config.js';
import { AdminService, createAdminServiceHandlers } from '../grpc/admin-service.js';
import { createFeatureServiceHandlers, FeatureService } from '../grpc/feature-service.js';
import { createMonitoringServiceHandlers, MonitoringService } from '../grpc/monitoring-service.js';
import { createRegistryServiceHandlers, RegistryService } from '../grpc/registry-service.js';
import { createServiceImplementation, startGrpcServer } from '../grpc/server.js';
import { createCallObserver } from '../observability/call-observer.js';
import { type MetricsServer, type Readiness, startMetricsServer } from '../observability/http.js';
import { instrument } from '../observability/instrument.js';
import { createServingMetrics } from '../observability/metrics.js';
import { startTracing } from '../observability/tracing.js';
import type { OnlineStore } from '../ports/online-store.js';
import type { Registry } from '../ports/registry.js';
import { type DriftCheckSink, DriftMonitor } from '../serving/drift-monitor.js';
import { HistoricalService } from '../serving/historical.js';
import { IngestService } from '../serving/ingest.js';
import { MaterializeService } from '../serving/materialize.js';
import { MonitoringService as Monitoring } from '../serving/monitoring.js';
import { OnlineFeatureService } from '../serving/online-features.js';
import { RegistryCache } from '../serving/registry-cache.js';
import { ServedValueSampler } from '../serving/served-sample.js';
import { createWorkerPool } from '../workers/pool.js';
import { createSecurity, redisTlsOptions } from './security.js';

/**
 * The composition root of `fstore serve`: the only place that picks adapters and wires them.
 * What runs where:
 *  - online store: Redis (FSTORE_REDIS_URL), Redis Cluster (FSTORE_REDIS_CLUSTER_NODES), or, with
 *    neither, an in-process store (lost at exit, one process only);
 *  - registry and offline store: PostgreSQL (FSTORE_POSTGRES_URL) or, without it, an embedded
 *    PostgreSQL server started as a child process with its data in FSTORE_EMBEDDED_POSTGRES_DIR.
 */

export interface Serving {
  readonly port: number;
  /** The /metrics, /healthz, /readyz port; undefined with metrics off or in a cluster worker. */
  readonly metricsPort: number | undefined;
  readonly postgresUrl: string;
  stop(): Promise<void>;
}

export function createOnlineStore(config: Config): { store: OnlineStore; kind: string } {
  const tls = redisTlsOptions(config);
  const common = {
    keyPrefix: config.redisKeyPrefix,
    commandTimeoutMs: config.redisCommandTimeoutMs,
    password: config.redisPassword,
    ...(tls ? { tls } : {}),
  };
  if (config.redisUrl)
    return { store: createRedisOnlineStore({ ...common, url: config.redisUrl }), kind: 'redis' };
  if (config.redisClusterNodes)
    return {
      store: createRedisOnlineStore({ ...common, clusterNodes: config.redisClusterNodes.split(',') }),
      kind: 'redis-cluster',
    };
  return { store: createMemoryOnlineStore(), kind: 'memory' };
}

/** Starts the embedded PostgreSQL unless one is configured; returns the URL to use. */
export async function resolvePostgres(
  config: Config,
  logger: Logger,
): Promise<{ url: string; stop: () => Promise<void> }> {
  if (config.postgresUrl) return { url: config.postgresUrl, stop: async () => {} };
  logger.info(
    { dataDir: config.embeddedPostgresDir, port: config.embeddedPostgresPort },
    'starting embedded PostgreSQL',
  );
  const embedded = await startEmbeddedPostgres({
    dataDir: config.embeddedPostgresDir,
    port: config.embeddedPostgresPort,
  });
  return { url: embedded.connectionString, stop: () => embedded.stop() };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms).unref());

/** Creates the registry, retrying while PostgreSQL is not reachable yet (start order of a deployment). */
async function connectRegistry(
  config: Config,
  url: string,
  logger: Logger,
  stopped: () => boolean,
): Promise<Registry> {
  let lastReason: string | undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      const registry = await createPostgresRegistry({ connectionString: url, schema: config.postgresSchema });
      if (lastReason !== undefined) logger.info({ attempt }, 'registry database connected');
      return registry;
    } catch (error) {
      if (stopped() || (error as { code?: string }).code !== 'unavailable') throw error;
      // The cause at warn once (and again when it changes), not at every attempt.
      const reason = failureReason(error);
      logger[reason === lastReason ? 'debug' : 'warn'](
        { attempt, reason, err: error },
        `registry database unavailable: ${reason}; retrying`,
      );
      lastReason = reason;
      await sleep(Math.min(5_000, 100 * 2 ** attempt));
    }
  }
}

/** One probe of a store: it answered, or why not (plain words) and the error for the log. */
interface Probe {
  readonly up: boolean;
  readonly reason?: string;
  readonly error?: unknown;
}

const probe = (ping: Promise<void>): Promise<Probe> =>
  ping.then(
    () => ({ up: true }),
    (error: unknown) => ({ up: false, reason: failureReason(error), error }),
  );

/** With metrics off: drift check figures are logged only. */
const silentDriftSink: DriftCheckSink = {
  recordDrift() {},
  recordAlert() {},
  recordViolations() {},
  observeCheck() {},
  setLastEventAge() {},
};

export interface ServingHooks {
  /** Where scheduled drift checks put their figures. */
  readonly driftSink?: DriftCheckSink;
}

export async function startServing(
  config: Config,
  logger: Logger,
  options: ServingHooks = {},
): Promise<Serving> {
  const postgres = await resolvePostgres(config, logger);
  let stopped = false;
  const registry = await connectRegistry(config, postgres.url, logger, () => stopped);
  if (config.insecure && config.auth === 'off')
    logger.warn(
      { grpcHost: config.grpcHost, metricsHost: config.metricsHost },
      'INSECURE: authentication is off and FSTORE_INSECURE is set: anyone who reaches this port can read and change every project',
    );
  const security = await createSecurity(config, postgres.url, logger);
  const { store: rawStore, kind } = createOnlineStore(config);
  const cache = new RegistryCache(registry, logger);
  await cache.start();

  const metrics = config.metrics === 'on' ? createServingMetrics(new MetricsRegistry()) : undefined;
  const tracing = config.otlpEndpoint
    ? startTracing({
        endpoint: config.otlpEndpoint,
        serviceName: 'fstore',
        sampleRatio: config.traceSampleRatio,
      })
    : undefined;
  const measured = { histogram: metrics?.storeDuration, tracer: tracing?.tracer };
  const store = instrument(rawStore, kind === 'memory' ? 'memory' : 'redis', measured);
  const rawOffline = await createPostgresOfflineStore({
    connectionString: postgres.url,
    schema: config.postgresSchema,
  });
  const offline = instrument(rawOffline, 'postgres', measured);
  const sampler = new ServedValueSampler({
    rate: config.servedSampleRate,
    capacity: config.servedSampleSize,
  });
  const online = new OnlineFeatureService(cache, store, {
    maxBatchRows: config.maxBatchRows,
    onlineExpiryGraceMs: config.onlineExpiryGraceMs,
    servedSampler: sampler,
    ...(metrics ? { observeRead: metrics.observeOnlineRead } : {}),
  });
  const ingest = new IngestService(cache, offline, store, {
    maxBatchRows: config.maxBatchRows,
    onlineBatchRows: config.materializeBatchRows,
    onlineExpiryGraceMs: config.onlineExpiryGraceMs,
  });
  const materialize = new MaterializeService(cache, offline, store, {
    batchRows: config.materializeBatchRows,
    onlineExpiryGraceMs: config.onlineExpiryGraceMs,
  });
  const rawWorkers = createWorkerPool({ threads: config.workerThreads });
  metrics?.watchWorkerPool(rawWorkers);
  // Worker tasks get spans only: their time is the callers' RPC time.
  const workers = instrument(rawWorkers, 'worker', tracing ? { tracer: tracing.tracer } : {});
  const historical = new HistoricalService(cache, offline, workers, {
    maxBatchRows: config.historicalChunkRows,
    blockRows: config.historicalBlockRows,
    chunkRows: config.historicalChunkRows,
    segmentRows: config.historicalSegmentRows,
  });
  const profiles = instrument(
    await createPostgresProfileStore({ connectionString: postgres.url, schema: config.postgresSchema }),
    'postgres',
    measured,
  );
  const monitoring = new Monitoring(cache, offline, profiles, workers, sampler, {
    segmentRows: config.profileSegmentRows,
  });
  const driftMonitor =
    config.driftMonitor === 'on'
      ? new DriftMonitor(
          cache,
          monitoring,
          options.driftSink ?? metrics?.driftSink ?? silentDriftSink,
          logger,
          {
            tickMs: config.driftMonitorTickMs,
          },
        )
      : undefined;
  const observer = createCallObserver({
    ...(metrics ? { metrics } : {}),
    ...(tracing ? { tracer: tracing.tracer } : {}),
    logger,
    accessLog: config.accessLog,
  });
  const server = await startGrpcServer(
    {
      host: config.grpcHost,
      port: config.grpcPort,
      maxMessageBytes: config.maxMessageBytes,
      shutdownGraceMs: config.shutdownGraceMs,
      logger,
      ...(security.grpcCredentials ? { credentials: security.grpcCredentials } : {}),
      reflection: config.reflection === 'on',
    },
    [
      {
        service: FeatureService,
        implementation: createServiceImplementation(
          FeatureService,
          createFeatureServiceHandlers(online, ingest, materialize, historical),
          logger,
          observer,
          security.gate,
          { streamIdleTimeoutMs: config.streamIdleTimeoutMs },
        ),
      },
      {
        service: RegistryService,
        implementation: createServiceImplementation(
          RegistryService,
          createRegistryServiceHandlers(registry, () => cache.refresh()),
          logger,
          observer,
          security.gate,
          { streamIdleTimeoutMs: config.streamIdleTimeoutMs },
        ),
      },
      {
        service: MonitoringService,
        implementation: createServiceImplementation(
          MonitoringService,
          createMonitoringServiceHandlers(monitoring),
          logger,
          observer,
          security.gate,
          { streamIdleTimeoutMs: config.streamIdleTimeoutMs },
        ),
      },
      {
        service: AdminService,
        implementation: createServiceImplementation(
          AdminService,
          createAdminServiceHandlers(security.admin),
          logger,
          observer,
          security.gate,
          { streamIdleTimeoutMs: config.streamIdleTimeoutMs },
        ),
      },
    ],
  );
  driftMonitor?.start();

  // Health follows the stores: NOT_SERVING while the online store does not answer; /readyz
  // also wants PostgreSQL (registry, offline store). The log says why a store does not answer
  // once per change (up → down, one cause → another, down → up), not at every probe.
  let readiness: Readiness = {
    ready: false,
    checks: { onlineStore: false, offlineStore: false, registry: false },
  };
  let onlineState: string | undefined; // 'serving' or why not
  let offlineState: string | undefined; // 'up' or why not
  let checking = false;
  const checkHealth = async () => {
    // A probe slower than the interval: the next tick checks again (no overlapping checks).
    if (checking) return;
    checking = true;
    try {
      const [online, offline] = await Promise.all([probe(rawStore.ping()), probe(rawOffline.ping())]);
      const serving = online.up && cache.loaded;
      const ready = serving && offline.up;
      const reasons: Record<string, string> = {};
      if (online.reason !== undefined) reasons.onlineStore = online.reason;
      if (offline.reason !== undefined) reasons.offlineStore = offline.reason;
      if (!cache.loaded) reasons.registry = 'not loaded';
      if (ready !== readiness.ready && cluster.isWorker) process.send?.({ fstoreReadiness: ready });
      readiness = {
        ready,
        checks: { onlineStore: online.up, offlineStore: offline.up, registry: cache.loaded },
        ...(Object.keys(reasons).length > 0 ? { reasons } : {}),
      };
      const nextOnline = serving ? 'serving' : (online.reason ?? 'registry not loaded');
      if (nextOnline !== onlineState) {
        if (serving) logger.info({ serving, onlineStore: kind }, 'serving');
        else if (online.reason !== undefined)
          logger.warn(
            { serving, onlineStore: kind, reason: online.reason, err: online.error },
            `not serving: online store unavailable: ${online.reason}`,
          );
        else
          logger.warn(
            { serving, onlineStore: kind, reason: 'registry not loaded' },
            'not serving: registry not loaded',
          );
        onlineState = nextOnline;
      }
      const nextOffline = offline.reason ?? 'up';
      if (nextOffline !== offlineState) {
        if (offline.reason !== undefined)
          logger.warn(
            { offlineStore: 'postgres', reason: offline.reason, err: offline.error },
            `offline store (PostgreSQL) unavailable: ${offline.reason}`,
          );
        else if (offlineState !== undefined)
          logger.info({ offlineStore: 'postgres' }, 'offline store (PostgreSQL) answers again');
        offlineState = nextOffline;
      }
      server.setServing(serving);
    } finally {
      checking = false;
    }
  };
  await checkHealth();
  const healthTimer = setInterval(() => void checkHealth(), config.healthCheckIntervalMs);
  healthTimer.unref();

  // In a cluster the primary serves /metrics for every process (prom-client's AggregatorRegistry).
  let metricsServer: MetricsServer | undefined;
  if (metrics && cluster.isWorker) {
    // Constructing one installs prom-client's listener that answers the primary's requests.
    new AggregatorRegistry();
    AggregatorRegistry.setRegistries([metrics.registry]);
  } else if (metrics)
    metricsServer = await startMetricsServer({
      host: config.metricsHost,
      port: config.metricsPort,
      metrics: async () => ({
        contentType: metrics.registry.contentType,
        body: await metrics.registry.metrics(),
      }),
      readiness: () => readiness,
      logger,
      ...(security.tlsFiles ? { tls: security.tlsFiles } : {}),
    });

  logger.info(
    {
      port: server.port,
      metricsPort: metricsServer?.port,
      onlineStore: kind,
      registry: config.postgresUrl ? 'postgres' : 'embedded-postgres',
    },
    'fstore serving',
  );
  return {
    port: server.port,
    metricsPort: metricsServer?.port,
    postgresUrl: postgres.url,
    stop: async () => {
      stopped = true;
      clearInterval(healthTimer);
      await driftMonitor?.stop();
      await server.shutdown();
      await metricsServer?.close();
      metrics?.close();
      await tracing?.shutdown();
      await cache.stop();
      await security.close();
      await Promise.allSettled([
        store.close(),
        offline.close(),
        registry.close(),
        profiles.close(),
        workers.destroy(),
      ]);
      await postgres.stop();
    },
  };
}
