import { readFileSync } from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import type { ServerCredentials } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { createMemoryRateLimiter } from '../adapters/memory/memory-rate-limiter.js';
import { startEmbeddedPostgres } from '../adapters/postgres/embedded.js';
import { createPostgresApiKeyStore } from '../adapters/postgres/postgres-api-key-store.js';
import { createPostgresAuditLog } from '../adapters/postgres/postgres-audit-log.js';
import { createRedisRateLimiter } from '../adapters/redis/redis-rate-limiter.js';
import type { Config } from '../config/config.js';
import type { RoleBinding } from '../domain/access.js';
import { FStoreError } from '../domain/errors.js';
import { createCallGate } from '../grpc/call-gate.js';
import type { CallGate } from '../grpc/server.js';
import { certificatePrincipalNames, createServerCredentials, type TlsFiles } from '../grpc/tls.js';
import type { ApiKeyStore } from '../ports/api-key-store.js';
import type { AuditLog } from '../ports/audit-log.js';
import type { RateLimiter, RateLimits } from '../ports/rate-limiter.js';
import { createApiKeyVerifier } from '../security/api-key-verifier.js';
import { createAuthenticator } from '../security/authenticator.js';
import { createJwtVerifier } from '../security/jwt-verifier.js';
import { AccessAdmin } from '../serving/access-admin.js';

/**
 * The security side of `fstore serve`, wired from the configuration: TLS credentials (reloaded
 * from their files), the authenticator (API keys, JWT, client certificates), rate limits (shared
 * through Redis when there is one), the audit log, and the admin service behind AdminService.
 */

export interface Security {
  readonly gate: CallGate;
  readonly admin: AccessAdmin;
  /** Undefined: plaintext. */
  readonly grpcCredentials: ServerCredentials | undefined;
  /** The same files for the metrics port's HTTPS. */
  readonly tlsFiles: TlsFiles | undefined;
  readonly auditLog: AuditLog | undefined;
  close(): Promise<void>;
}

/** Redis TLS options from the settings: on for rediss:// URLs unless off, with an optional CA file. */
export function redisTlsOptions(config: Config): ConnectionOptions | undefined {
  const on =
    config.redisTls === 'on' ||
    (config.redisTls === 'auto' && config.redisUrl?.startsWith('rediss:') === true);
  if (!on) return undefined;
  if (!config.redisTlsCaFile) return {};
  try {
    return { ca: readFileSync(config.redisTlsCaFile) };
  } catch (error) {
    throw new FStoreError(
      'invalid_argument',
      `setting FSTORE_REDIS_TLS_CA_FILE (${config.redisTlsCaFile}): cannot read it: ${(error as Error).message}`,
    );
  }
}

export function rateLimitsOf(config: Config): RateLimits | undefined {
  if (config.rateLimitRequestsPerSecond === 0 && config.rateLimitRowsPerSecond === 0) return undefined;
  return {
    requestsPerSecond: config.rateLimitRequestsPerSecond,
    requestBurst:
      config.rateLimitRequestsPerSecond === 0
        ? 0
        : config.rateLimitRequestBurst || config.rateLimitRequestsPerSecond,
    rowsPerSecond: config.rateLimitRowsPerSecond,
    rowBurst:
      config.rateLimitRowsPerSecond === 0 ? 0 : config.rateLimitRowBurst || config.rateLimitRowsPerSecond,
  };
}

function createRateLimiter(config: Config, logger: Logger): RateLimiter | undefined {
  const limits = rateLimitsOf(config);
  if (!limits) return undefined;
  if (!config.redisUrl && !config.redisClusterNodes) return createMemoryRateLimiter({ limits });
  const tls = redisTlsOptions(config);
  return createRedisRateLimiter({
    limits,
    keyPrefix: config.redisKeyPrefix,
    ...(config.redisUrl ? { url: config.redisUrl } : { clusterNodes: config.redisClusterNodes?.split(',') }),
    ...(config.redisPassword ? { password: config.redisPassword } : {}),
    ...(tls ? { tls } : {}),
    logger,
  });
}

/** The TLS files of the gRPC and metrics ports; undefined: plaintext. */
export function tlsFilesOf(config: Config): TlsFiles | undefined {
  if (!config.tlsCertFile || !config.tlsKeyFile) return undefined;
  return {
    certFile: config.tlsCertFile,
    keyFile: config.tlsKeyFile,
    ...(config.tlsClientCaFile
      ? { clientCaFile: config.tlsClientCaFile, clientCertificate: config.tlsClientCertificate }
      : {}),
    reloadIntervalMs: config.tlsReloadIntervalMs,
  };
}

export async function createSecurity(config: Config, postgresUrl: string, logger: Logger): Promise<Security> {
  const closers: (() => Promise<void> | void)[] = [];
  const close = async () => {
    for (const closer of closers.reverse()) await Promise.resolve(closer()).catch(() => undefined);
  };
  try {
    const tlsFiles = tlsFilesOf(config);
    const tls = tlsFiles
      ? await createServerCredentials(tlsFiles, {
          reloaded: () => logger.info({ certFile: tlsFiles.certFile }, 'TLS certificate reloaded'),
          rejected: (error) =>
            logger.warn(
              { err: error },
              'TLS files changed but are not usable yet; keeping the last good ones',
            ),
        })
      : undefined;
    if (tls) closers.push(() => tls.close());

    const postgres = { connectionString: postgresUrl, schema: config.postgresSchema };
    const keyStore: ApiKeyStore = await createPostgresApiKeyStore({ ...postgres, poolSize: 2, logger });
    closers.push(() => keyStore.close());
    const auditLog =
      config.auditLog === 'on' ? await createPostgresAuditLog({ ...postgres, logger }) : undefined;
    if (auditLog) closers.push(() => auditLog.close());

    const bindingTable = config.authBindings ?? new Map<string, RoleBinding[]>();
    const lookupBindings = (name: string): readonly RoleBinding[] => bindingTable.get(name) ?? [];
    let reloadKeys: () => Promise<void> = async () => {};
    let authenticator: ReturnType<typeof createAuthenticator> | undefined;
    if (config.auth === 'on') {
      const apiKeys =
        config.authApiKeys === 'on' ? await createApiKeyVerifier(keyStore, { logger }) : undefined;
      if (apiKeys) {
        closers.push(() => apiKeys.stop());
        reloadKeys = () => apiKeys.reload();
      }
      const jwt =
        config.jwtIssuer && config.jwtAudience
          ? createJwtVerifier({
              issuer: config.jwtIssuer,
              audience: config.jwtAudience,
              ...(config.jwtJwksUrl ? { jwksUrl: config.jwtJwksUrl } : {}),
              rolesClaim: config.jwtRolesClaim,
              clockSkewSeconds: config.jwtClockSkewSeconds,
              lookupBindings,
            })
          : undefined;
      authenticator = createAuthenticator({
        ...(apiKeys ? { apiKeys } : {}),
        ...(jwt ? { jwt } : {}),
        ...(config.tlsClientCaFile ? { certificates: { names: certificatePrincipalNames } } : {}),
        lookupBindings,
      });
    }
    const rateLimiter = createRateLimiter(config, logger);
    if (rateLimiter) closers.push(() => rateLimiter.close());

    return {
      gate: createCallGate({
        maxOfflineStreams: config.maxOfflineStreams,
        // With authentication off every caller is `anonymous`: only the process cap applies.
        ...(authenticator
          ? { authenticator, maxOfflineStreamsPerPrincipal: config.maxOfflineStreamsPerPrincipal }
          : {}),
        ...(rateLimiter ? { rateLimiter } : {}),
        ...(auditLog ? { auditLog } : {}),
      }),
      admin: new AccessAdmin(keyStore, auditLog, () => reloadKeys()),
      grpcCredentials: tls?.credentials,
      tlsFiles,
      auditLog,
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}

/**
 * Creates an API key straight in the database, without a running server or a credential: the
 * first admin key of an installation (`fstore keys create --bootstrap`). Whoever can reach the
 * database can do this anyway; the key is recorded as created by `local:bootstrap`.
 */
export async function createKeyInDatabase(
  config: Config,
  request: { name: string; bindings: readonly RoleBinding[]; expiresAt: Date | undefined },
): Promise<{ key: string; id: string }> {
  // Without FSTORE_POSTGRES_URL: the embedded PostgreSQL of `fstore serve`'s embedded defaults,
  // started for the write and stopped again (so run it before the server, which owns it then).
  const embedded = config.postgresUrl
    ? undefined
    : await startEmbeddedPostgres({ dataDir: config.embeddedPostgresDir, port: config.embeddedPostgresPort });
  try {
    const store = await createPostgresApiKeyStore({
      connectionString: config.postgresUrl ?? embedded?.connectionString ?? '',
      schema: config.postgresSchema,
      poolSize: 1,
    });
    try {
      const created = await new AccessAdmin(store, undefined).createKey(
        { id: 'local:bootstrap', method: 'none', bindings: [{ role: 'admin', project: '*' }] },
        request,
      );
      return { key: created.key, id: created.info.id };
    } finally {
      await store.close();
    }
  } finally {
    await embedded?.stop();
  }
}
