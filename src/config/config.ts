import { z } from 'zod';
import { parseBindingTable } from '../domain/access.js';
import { FStoreError } from '../domain/errors.js';

/**
 * The one configuration schema. Every setting has an environment variable (`FSTORE_*`) and a
 * default here; `fstore` CLI flags override the environment. Validation fails fast with the
 * setting's name. Only the composition root calls `loadConfig` with `process.env`.
 */

export const configDefaults = {
  grpcHost: '127.0.0.1', // loopback: listening wider needs authentication or an explicit FSTORE_INSECURE
  insecure: 'false', // 'true': accept unauthenticated calls beyond loopback (logged as a warning at every start)
  grpcPort: 6566,
  processes: 1,
  redisKeyPrefix: 'fs:',
  redisCommandTimeoutMs: 1_000, // one second: a slower Redis is treated as down (UNAVAILABLE)
  postgresSchema: 'fstore',
  embeddedPostgresDir: '.fstore/postgres',
  embeddedPostgresPort: 54329,
  maxBatchRows: 1_000,
  materializeBatchRows: 10_000, // rows per offline fetch and per pipelined online write
  historicalBlockRows: 1_000_000, // entity rows joined at once by GetHistoricalFeatures (bounds its memory)
  historicalChunkRows: 10_000, // most rows per GetHistoricalFeatures message, both directions
  historicalSegmentRows: 65_536, // feature rows per point-in-time worker task (a key is never split)
  workerThreads: 0, // point-in-time join workers; 0: one per core
  maxMessageBytes: 16 * 1024 * 1024, // 16 MiB, both directions
  shutdownGraceMs: 10_000, // ten seconds of draining before in-flight calls are cut
  onlineExpiryGraceMs: 3_600_000, // keys outlive their ttl by one hour, so reads say OUTSIDE_MAX_AGE before NOT_FOUND
  healthCheckIntervalMs: 1_000, // how often store availability is probed for grpc.health.v1
  kafkaBrokers: '127.0.0.1:9092',
  streamCheckpointIntervalMs: 5_000, // window state and offsets are checkpointed together this often
  streamConcurrency: 4, // partitions one stream member processes at once
  streamFetchBytes: 1024 * 1024, // most bytes fetched per partition at once (bounds a batch)
  streamSessionTimeoutMs: 10_000, // a member silent this long leaves the group (its partitions move)
  streamStatsIntervalMs: 10_000, // how often the stream tier logs its figures
  servedSampleRate: 0, // fraction of GetOnlineFeatures reads whose values are sampled for drift; 0: off
  servedSampleSize: 100_000, // most sampled values kept per feature (a uniform reservoir)
  profileSegmentRows: 262_144, // offline rows per profile worker task
  driftMonitorTickMs: 5_000, // how often due scheduled drift checks are looked for
  driftMonitor: 'on', // 'off': this process runs no scheduled drift check
  logLevel: 'info',
  metricsHost: '127.0.0.1', // the same rule as the gRPC port
  metricsPort: 9464, // Prometheus /metrics, /healthz and /readyz; 0 picks a free port
  metrics: 'on', // 'off': no metrics recorded and no HTTP port
  accessLog: 'errors', // one log line per call: 'all', only failed calls ('errors'), or 'off'
  otlpEndpoint: undefined, // OTLP/HTTP traces URL (e.g. http://collector:4318/v1/traces); unset: no tracing
  traceSampleRatio: 1, // fraction of calls without a sampled parent that are traced (a caller's decision wins)
  reflection: 'on', // gRPC server reflection; 'off' hides the API's shape from unauthenticated callers
  auth: 'off', // 'on': every call needs an API key, a JWT or a client certificate; roles per project, default deny
  authApiKeys: 'on', // with auth on: API keys (fsk_…) are accepted
  authBindings: undefined, // role bindings of JWT groups/subjects and certificate names: name=role@project[,…][;…]
  jwtIssuer: undefined, // OpenID Connect issuer URL; with it, JWT bearer tokens are accepted
  jwtAudience: undefined, // the audience tokens must carry
  jwtJwksUrl: undefined, // default: the issuer's discovery document's jwks_uri
  jwtRolesClaim: 'roles', // claim (dotted path) holding role@project values or group names
  jwtClockSkewSeconds: 30, // tolerance on exp / nbf
  tlsCertFile: undefined, // PEM certificate chain: TLS on the gRPC and metrics ports
  tlsKeyFile: undefined,
  tlsClientCaFile: undefined, // PEM CA bundle: client certificates are requested and verified (mTLS)
  tlsClientCertificate: 'optional', // with a client CA: 'require' refuses connections without a verified certificate
  tlsReloadIntervalMs: 5_000, // certificate files are checked for changes this often (no restart needed)
  redisTls: 'auto', // 'on': TLS to Redis (and every cluster node); 'auto': on for rediss:// URLs
  redisTlsCaFile: undefined, // PEM CA bundle for Redis's certificate; default: the system's
  rateLimitRequestsPerSecond: 0, // per principal, shared by every serving process through Redis; 0: unlimited
  rateLimitRequestBurst: 0, // 0: one second's worth
  rateLimitRowsPerSecond: 0, // per principal (a 1,000-row batch costs 1,000); 0: unlimited
  rateLimitRowBurst: 0, // 0: one second's worth
  auditLog: 'on', // registry changes, key changes, writes, ingests and materializations, in PostgreSQL
  streamIdleTimeoutMs: 30_000, // a request stream silent this long is ended (DEADLINE_EXCEEDED), its transaction rolled back
  maxOfflineStreams: 8, // ingest / historical / materialize calls open at once per process (the offline pool has 10 connections)
  maxOfflineStreamsPerPrincipal: 4, // the same per caller, with authentication on (with it off every caller is one)
} as const;

const integer = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
const onOff = z.enum(['on', 'off']);
const boolean = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'])
  .transform((value) => ['true', '1', 'yes'].includes(value));
const optionalText = z
  .string()
  .trim()
  .transform((value) => (value === '' ? undefined : value))
  .optional();

const settings = {
  grpcHost: { env: 'FSTORE_GRPC_HOST', schema: z.string().min(1) },
  insecure: { env: 'FSTORE_INSECURE', schema: boolean },
  grpcPort: { env: 'FSTORE_GRPC_PORT', schema: integer(0, 65_535) },
  processes: {
    env: 'FSTORE_PROCESSES',
    schema: z.union([z.literal('auto'), integer(1, 256)]),
  },
  redisUrl: { env: 'FSTORE_REDIS_URL', schema: optionalText.pipe(z.url().optional()) },
  redisClusterNodes: {
    env: 'FSTORE_REDIS_CLUSTER_NODES',
    schema: optionalText.pipe(
      z
        .string()
        .regex(/^[^,:\s]+:\d+(,[^,:\s]+:\d+)*$/, 'expected host:port[,host:port...]')
        .optional(),
    ),
  },
  redisPassword: { env: 'FSTORE_REDIS_PASSWORD', schema: optionalText },
  redisKeyPrefix: { env: 'FSTORE_REDIS_KEY_PREFIX', schema: z.string().max(64) },
  redisCommandTimeoutMs: { env: 'FSTORE_REDIS_COMMAND_TIMEOUT_MS', schema: integer(1, 60_000) },
  postgresUrl: { env: 'FSTORE_POSTGRES_URL', schema: optionalText },
  postgresSchema: { env: 'FSTORE_POSTGRES_SCHEMA', schema: z.string().regex(/^[a-z_][a-z0-9_]*$/) },
  embeddedPostgresDir: { env: 'FSTORE_EMBEDDED_POSTGRES_DIR', schema: z.string().min(1) },
  embeddedPostgresPort: { env: 'FSTORE_EMBEDDED_POSTGRES_PORT', schema: integer(1, 65_535) },
  maxBatchRows: { env: 'FSTORE_MAX_BATCH_ROWS', schema: integer(1, 100_000) },
  materializeBatchRows: { env: 'FSTORE_MATERIALIZE_BATCH_ROWS', schema: integer(1, 1_000_000) },
  historicalBlockRows: { env: 'FSTORE_HISTORICAL_BLOCK_ROWS', schema: integer(1, 50_000_000) },
  historicalChunkRows: { env: 'FSTORE_HISTORICAL_CHUNK_ROWS', schema: integer(1, 1_000_000) },
  historicalSegmentRows: { env: 'FSTORE_HISTORICAL_SEGMENT_ROWS', schema: integer(1, 10_000_000) },
  workerThreads: { env: 'FSTORE_WORKER_THREADS', schema: integer(0, 256) },
  maxMessageBytes: { env: 'FSTORE_MAX_MESSAGE_BYTES', schema: integer(1024, 1024 * 1024 * 1024) },
  shutdownGraceMs: { env: 'FSTORE_SHUTDOWN_GRACE_MS', schema: integer(0, 600_000) },
  onlineExpiryGraceMs: { env: 'FSTORE_ONLINE_EXPIRY_GRACE_MS', schema: integer(0, 365 * 24 * 3_600_000) },
  healthCheckIntervalMs: { env: 'FSTORE_HEALTH_CHECK_INTERVAL_MS', schema: integer(100, 600_000) },
  kafkaBrokers: { env: 'FSTORE_KAFKA_BROKERS', schema: z.string().regex(/^[^,\s]+(,[^,\s]+)*$/) },
  streamCheckpointIntervalMs: { env: 'FSTORE_STREAM_CHECKPOINT_INTERVAL_MS', schema: integer(0, 3_600_000) },
  streamConcurrency: { env: 'FSTORE_STREAM_CONCURRENCY', schema: integer(1, 1_000) },
  streamFetchBytes: { env: 'FSTORE_STREAM_FETCH_BYTES', schema: integer(1024, 256 * 1024 * 1024) },
  streamSessionTimeoutMs: { env: 'FSTORE_STREAM_SESSION_TIMEOUT_MS', schema: integer(6_000, 300_000) },
  streamStatsIntervalMs: { env: 'FSTORE_STREAM_STATS_INTERVAL_MS', schema: integer(100, 3_600_000) },
  servedSampleRate: { env: 'FSTORE_SERVED_SAMPLE_RATE', schema: z.coerce.number().min(0).max(1) },
  servedSampleSize: { env: 'FSTORE_SERVED_SAMPLE_SIZE', schema: integer(1, 10_000_000) },
  profileSegmentRows: { env: 'FSTORE_PROFILE_SEGMENT_ROWS', schema: integer(1, 10_000_000) },
  driftMonitorTickMs: { env: 'FSTORE_DRIFT_MONITOR_TICK_MS', schema: integer(100, 3_600_000) },
  driftMonitor: { env: 'FSTORE_DRIFT_MONITOR', schema: z.enum(['on', 'off']) },
  metricsHost: { env: 'FSTORE_METRICS_HOST', schema: z.string().min(1) },
  metricsPort: { env: 'FSTORE_METRICS_PORT', schema: integer(0, 65_535) },
  metrics: { env: 'FSTORE_METRICS', schema: z.enum(['on', 'off']) },
  accessLog: { env: 'FSTORE_ACCESS_LOG', schema: z.enum(['off', 'errors', 'all']) },
  otlpEndpoint: { env: 'FSTORE_OTLP_ENDPOINT', schema: optionalText.pipe(z.url().optional()) },
  traceSampleRatio: { env: 'FSTORE_TRACE_SAMPLE_RATIO', schema: z.coerce.number().min(0).max(1) },
  reflection: { env: 'FSTORE_REFLECTION', schema: onOff },
  auth: { env: 'FSTORE_AUTH', schema: onOff },
  authApiKeys: { env: 'FSTORE_AUTH_API_KEYS', schema: onOff },
  authBindings: {
    env: 'FSTORE_AUTH_BINDINGS',
    schema: optionalText.pipe(
      z
        .string()
        .transform((text, context) => {
          try {
            return parseBindingTable(text);
          } catch (error) {
            context.addIssue({ code: 'custom', message: (error as Error).message });
            return z.NEVER;
          }
        })
        .optional(),
    ),
  },
  jwtIssuer: { env: 'FSTORE_JWT_ISSUER', schema: optionalText.pipe(z.url().optional()) },
  jwtAudience: { env: 'FSTORE_JWT_AUDIENCE', schema: optionalText },
  jwtJwksUrl: { env: 'FSTORE_JWT_JWKS_URL', schema: optionalText.pipe(z.url().optional()) },
  jwtRolesClaim: { env: 'FSTORE_JWT_ROLES_CLAIM', schema: z.string().regex(/^[A-Za-z0-9_:/.-]+$/) },
  jwtClockSkewSeconds: { env: 'FSTORE_JWT_CLOCK_SKEW_SECONDS', schema: integer(0, 600) },
  tlsCertFile: { env: 'FSTORE_TLS_CERT_FILE', schema: optionalText },
  tlsKeyFile: { env: 'FSTORE_TLS_KEY_FILE', schema: optionalText },
  tlsClientCaFile: { env: 'FSTORE_TLS_CLIENT_CA_FILE', schema: optionalText },
  tlsClientCertificate: { env: 'FSTORE_TLS_CLIENT_CERT', schema: z.enum(['optional', 'require']) },
  tlsReloadIntervalMs: { env: 'FSTORE_TLS_RELOAD_INTERVAL_MS', schema: integer(100, 3_600_000) },
  redisTls: { env: 'FSTORE_REDIS_TLS', schema: z.enum(['auto', 'on', 'off']) },
  redisTlsCaFile: { env: 'FSTORE_REDIS_TLS_CA_FILE', schema: optionalText },
  rateLimitRequestsPerSecond: {
    env: 'FSTORE_RATE_LIMIT_REQUESTS_PER_SECOND',
    schema: integer(0, 10_000_000),
  },
  rateLimitRequestBurst: { env: 'FSTORE_RATE_LIMIT_REQUEST_BURST', schema: integer(0, 100_000_000) },
  rateLimitRowsPerSecond: { env: 'FSTORE_RATE_LIMIT_ROWS_PER_SECOND', schema: integer(0, 1_000_000_000) },
  rateLimitRowBurst: { env: 'FSTORE_RATE_LIMIT_ROW_BURST', schema: integer(0, 10_000_000_000) },
  auditLog: { env: 'FSTORE_AUDIT_LOG', schema: onOff },
  streamIdleTimeoutMs: { env: 'FSTORE_STREAM_IDLE_TIMEOUT_MS', schema: integer(0, 3_600_000) },
  maxOfflineStreams: { env: 'FSTORE_MAX_OFFLINE_STREAMS', schema: integer(1, 10_000) },
  maxOfflineStreamsPerPrincipal: {
    env: 'FSTORE_MAX_OFFLINE_STREAMS_PER_PRINCIPAL',
    schema: integer(1, 10_000),
  },
  logLevel: {
    env: 'FSTORE_LOG_LEVEL',
    schema: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
  },
} as const;

type Settings = typeof settings;
export type Config = { [K in keyof Settings]: z.output<Settings[K]['schema']> };
export type ConfigKey = keyof Settings;

/** The environment variable of each setting, for documentation and error messages. */
export const configEnvironmentNames: Record<ConfigKey, string> = Object.fromEntries(
  Object.entries(settings).map(([key, setting]) => [key, setting.env]),
) as Record<ConfigKey, string>;

/**
 * Builds the configuration from environment variables, then `overrides` (CLI flags, already
 * named by setting). Throws FStoreError('invalid_argument') naming the first bad setting.
 */
export function loadConfig(
  environment: Readonly<Record<string, string | undefined>>,
  overrides: Partial<Record<ConfigKey, string | number | undefined>> = {},
): Config {
  const config: Record<string, unknown> = {};
  for (const [key, setting] of Object.entries(settings) as [ConfigKey, Settings[ConfigKey]][]) {
    const raw =
      overrides[key] ?? environment[setting.env] ?? (configDefaults as Record<string, unknown>)[key];
    const result = setting.schema.safeParse(raw);
    if (!result.success) {
      const problem = result.error.issues[0]?.message ?? 'invalid value';
      throw new FStoreError(
        'invalid_argument',
        `setting ${setting.env} (${JSON.stringify(raw)}): ${problem}`,
      );
    }
    config[key] = result.data;
  }
  const checked = config as Config;
  if (checked.redisUrl && checked.redisClusterNodes)
    throw new FStoreError(
      'invalid_argument',
      'settings FSTORE_REDIS_URL and FSTORE_REDIS_CLUSTER_NODES are exclusive: give one or the other',
    );
  if (!checked.redisUrl && !checked.redisClusterNodes && checked.processes !== 1)
    throw new FStoreError(
      'invalid_argument',
      'setting FSTORE_PROCESSES: several serving processes need a shared online store; set FSTORE_REDIS_URL or FSTORE_REDIS_CLUSTER_NODES (the embedded store lives inside one process)',
    );
  const both = (a: ConfigKey, b: ConfigKey) => {
    if ((checked[a] === undefined) !== (checked[b] === undefined))
      throw new FStoreError(
        'invalid_argument',
        `settings ${configEnvironmentNames[a]} and ${configEnvironmentNames[b]} go together: give both or neither`,
      );
  };
  both('tlsCertFile', 'tlsKeyFile');
  both('jwtIssuer', 'jwtAudience');
  if (checked.tlsClientCaFile && !checked.tlsCertFile)
    throw new FStoreError(
      'invalid_argument',
      'setting FSTORE_TLS_CLIENT_CA_FILE: client certificates need TLS; set FSTORE_TLS_CERT_FILE and FSTORE_TLS_KEY_FILE',
    );
  if (checked.jwtJwksUrl && !checked.jwtIssuer)
    throw new FStoreError(
      'invalid_argument',
      'setting FSTORE_JWT_JWKS_URL: needs FSTORE_JWT_ISSUER and FSTORE_JWT_AUDIENCE',
    );
  if (
    checked.auth === 'on' &&
    checked.authApiKeys === 'off' &&
    !checked.jwtIssuer &&
    !checked.tlsClientCaFile
  )
    throw new FStoreError(
      'invalid_argument',
      'setting FSTORE_AUTH=on with FSTORE_AUTH_API_KEYS=off: no way to authenticate is left; set FSTORE_JWT_ISSUER or FSTORE_TLS_CLIENT_CA_FILE',
    );
  return checked;
}

/** Whether `host` only accepts connections from this machine. */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '').toLowerCase();
  return bare === 'localhost' || bare === '::1' || /^127(\.\d{1,3}){3}$/.test(bare);
}

/**
 * Safe by default: without authentication, `fstore serve` listens on loopback only. A wider
 * address needs FSTORE_AUTH=on, or FSTORE_INSECURE=true (`--insecure`) as the operator's explicit
 * choice. The metrics port carries no feature values but follows the same rule.
 */
export function assertSafeListeners(config: Config, metricsOn = config.metrics === 'on'): void {
  if (config.auth === 'on' || config.insecure) return;
  const listeners: [ConfigKey, string][] = [['grpcHost', config.grpcHost]];
  if (metricsOn) listeners.push(['metricsHost', config.metricsHost]);
  for (const [key, host] of listeners)
    if (!isLoopbackHost(host))
      throw new FStoreError(
        'failed_precondition',
        `setting ${configEnvironmentNames[key]} (${host}): listening beyond loopback without authentication is refused; ` +
          'set FSTORE_AUTH=on (API keys, FSTORE_JWT_ISSUER or FSTORE_TLS_CLIENT_CA_FILE), ' +
          'or FSTORE_INSECURE=true (--insecure) to accept unauthenticated calls from the network',
      );
}
