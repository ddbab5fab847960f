import pg from 'pg';
import { type Logger, pino } from 'pino';
import { FeatureService } from '../../gen/fstore/v1/feature_service_pb.js';
import { MonitoringService } from '../../gen/fstore/v1/monitoring_pb.js';
import { RegistryService } from '../../gen/fstore/v1/registry_pb.js';
import { type ServingHooks, startServing } from '../../src/app/serve.js';
import { type Config, type ConfigKey, loadConfig } from '../../src/config/config.js';
import { createClient, type ServiceClient } from '../../src/grpc/client.js';
import { randomName, requireEnvironment } from './environment.js';

export type OnlineStoreKind = 'memory' | 'redis' | 'redis-cluster';

export interface TestServer {
  readonly address: string;
  /** http://127.0.0.1:<port> of /metrics, /healthz, /readyz; undefined with metrics off. */
  readonly metricsUrl: string | undefined;
  readonly config: Config;
  readonly features: ServiceClient<typeof FeatureService>;
  readonly registry: ServiceClient<typeof RegistryService>;
  readonly monitoring: ServiceClient<typeof MonitoringService>;
  stop(): Promise<void>;
}

/**
 * Starts `fstore serve` in this process on a free loopback port, against the real test
 * PostgreSQL (a schema of its own, dropped at stop unless shared) and the chosen online store
 * (a key prefix of its own).
 */
export async function startTestServer(
  kind: OnlineStoreKind,
  overrides: Partial<Record<ConfigKey, string | number>> = {},
  options: { keepSchema?: boolean; hooks?: ServingHooks; logger?: Logger } = {},
): Promise<TestServer> {
  const environment: Record<string, string> = {
    FSTORE_POSTGRES_URL: requireEnvironment('FSTORE_TEST_POSTGRES_URL'),
    FSTORE_POSTGRES_SCHEMA: randomName('test'),
    FSTORE_REDIS_KEY_PREFIX: `${randomName('t')}:`,
    FSTORE_GRPC_HOST: '127.0.0.1',
    FSTORE_GRPC_PORT: '0',
    FSTORE_SHUTDOWN_GRACE_MS: '2000',
    FSTORE_HEALTH_CHECK_INTERVAL_MS: '200',
    FSTORE_METRICS_HOST: '127.0.0.1',
    FSTORE_METRICS_PORT: '0',
  };
  if (kind === 'redis') environment.FSTORE_REDIS_URL = requireEnvironment('FSTORE_TEST_REDIS_URL');
  if (kind === 'redis-cluster')
    environment.FSTORE_REDIS_CLUSTER_NODES = requireEnvironment('FSTORE_TEST_REDIS_CLUSTER_NODES');
  const config = loadConfig(environment, overrides);
  const serving = await startServing(
    config,
    options.logger ?? pino({ level: process.env.FSTORE_TEST_LOG_LEVEL ?? 'silent' }),
    options.hooks,
  );
  const address = `127.0.0.1:${serving.port}`;
  const features = createClient(FeatureService, address);
  const registry = createClient(RegistryService, address);
  const monitoring = createClient(MonitoringService, address);
  let stopped: Promise<void> | undefined;
  return {
    address,
    metricsUrl: serving.metricsPort === undefined ? undefined : `http://127.0.0.1:${serving.metricsPort}`,
    config,
    features,
    registry,
    monitoring,
    stop() {
      stopped ??= (async () => {
        features.close();
        registry.close();
        monitoring.close();
        await serving.stop();
        if (!options.keepSchema) await dropSchema(serving.postgresUrl, config.postgresSchema);
      })();
      return stopped;
    },
  };
}

export async function dropSchema(url: string, schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await client.end();
  }
}
