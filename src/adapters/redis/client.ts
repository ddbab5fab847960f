import { Cluster, Redis } from 'ioredis';
import type { ResolvedRedisOnlineStoreOptions } from './options.js';

/**
 * The one way FStore connects to Redis or a Redis Cluster: fail fast (a command is never
 * retried or resent after a reconnect, the caller decides), no offline queue (without a
 * connection, reject at once instead of queueing without bound), bounded reconnect backoff.
 */

export type RedisClient = Redis | Cluster;

function reconnectDelay(attempt: number, maxDelayMs: number): number {
  return Math.min(50 * 2 ** Math.min(attempt - 1, 10), maxDelayMs);
}

export function createRedisClient(
  options: ResolvedRedisOnlineStoreOptions,
  connectionName: string,
): RedisClient {
  const connectionOptions = {
    connectTimeout: options.connectTimeoutMs,
    commandTimeout: options.commandTimeoutMs,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    connectionName,
    ...(options.password === undefined ? {} : { password: options.password }),
    ...(options.tls === undefined ? {} : { tls: options.tls }),
  };
  if (options.url !== undefined) {
    return new Redis(options.url, {
      ...connectionOptions,
      enableOfflineQueue: false,
      retryStrategy: (attempt) => reconnectDelay(attempt, options.maxReconnectDelayMs),
    });
  }
  return new Cluster(
    options.clusterNodes.map((node) => ({ host: node.host, port: node.port })),
    {
      enableOfflineQueue: false,
      clusterRetryStrategy: (attempt) => reconnectDelay(attempt, options.maxReconnectDelayMs),
      slotsRefreshTimeout: options.connectTimeoutMs,
      redisOptions: connectionOptions,
    },
  );
}
