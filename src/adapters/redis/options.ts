import type { ConnectionOptions } from 'node:tls';
import { invalidArgument } from '../../domain/errors.js';

/** How to reach the online store's Redis. Give exactly one of `url` and `clusterNodes`. */
export interface RedisOnlineStoreOptions {
  /**
   * One Redis server, e.g. `redis://127.0.0.1:6379/0` (`rediss://` for TLS); the path selects the
   * database. Mutually exclusive with `clusterNodes`.
   */
  readonly url?: string;
  /**
   * Seed nodes of a Redis Cluster as `host:port`; the rest of the cluster is discovered from them.
   * Mutually exclusive with `url`.
   */
  readonly clusterNodes?: readonly string[];
  /**
   * Namespace prepended to every key (several deployments or tests can share one Redis). It is
   * stored in every key, so keep it short. It should not contain a `{...}` hash tag: that would put
   * every key of a cluster in one slot. Default `fs:`.
   */
  readonly keyPrefix?: string;
  /**
   * Longest wait for one call's answer before it fails with 'unavailable' (the caller's deadline
   * is usually shorter; this bounds a hung server). Default one second.
   */
  readonly commandTimeoutMs?: number;
  /** Longest wait for a TCP connection (and, at start, for the first one). Default one second. */
  readonly connectTimeoutMs?: number;
  /**
   * Upper bound of the reconnect backoff after the connection is lost (the delay doubles from 50 ms
   * up to this), so the store recovers at most this long after Redis is back. Default one second.
   */
  readonly maxReconnectDelayMs?: number;
  /** Password (Redis AUTH); overrides a password in `url`. Default none. */
  readonly password?: string;
  /**
   * TLS to Redis (every node of a cluster): Node's `tls.connect` options, e.g. `{ ca }`. A
   * `rediss://` URL turns TLS on by itself. Default none.
   */
  readonly tls?: ConnectionOptions;
}

export const redisOnlineStoreDefaults = {
  keyPrefix: 'fs:',
  commandTimeoutMs: 1_000, // one second
  connectTimeoutMs: 1_000, // one second
  maxReconnectDelayMs: 1_000, // one second
} satisfies Partial<RedisOnlineStoreOptions>;

export type ResolvedRedisOnlineStoreOptions = Readonly<
  Required<Pick<RedisOnlineStoreOptions, keyof typeof redisOnlineStoreDefaults>> &
    Pick<RedisOnlineStoreOptions, 'password' | 'tls'> &
    ({ url: string; clusterNodes?: undefined } | { url?: undefined; clusterNodes: readonly ClusterNode[] })
>;

export interface ClusterNode {
  readonly host: string;
  readonly port: number;
}

function assertDuration(name: string, value: number): void {
  if (!Number.isInteger(value) || value <= 0) {
    throw invalidArgument(`redis.${name}`, `must be a positive integer number of milliseconds, got ${value}`);
  }
}

function parseClusterNode(text: string, index: number): ClusterNode {
  const match = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(text.trim());
  const port = match ? Number(match[2]) : Number.NaN;
  if (!match || port < 1 || port > 65_535) {
    throw invalidArgument(`redis.clusterNodes[${index}]`, `expected host:port, got '${text}'`);
  }
  return { host: match[1] as string, port };
}

/** Applies the defaults and checks every option, naming the offending one. */
export function validateRedisOnlineStoreOptions(
  options: RedisOnlineStoreOptions,
): ResolvedRedisOnlineStoreOptions {
  const keyPrefix = options.keyPrefix ?? redisOnlineStoreDefaults.keyPrefix;
  const commandTimeoutMs = options.commandTimeoutMs ?? redisOnlineStoreDefaults.commandTimeoutMs;
  const connectTimeoutMs = options.connectTimeoutMs ?? redisOnlineStoreDefaults.connectTimeoutMs;
  const maxReconnectDelayMs = options.maxReconnectDelayMs ?? redisOnlineStoreDefaults.maxReconnectDelayMs;
  assertDuration('commandTimeoutMs', commandTimeoutMs);
  assertDuration('connectTimeoutMs', connectTimeoutMs);
  assertDuration('maxReconnectDelayMs', maxReconnectDelayMs);
  if (typeof keyPrefix !== 'string') throw invalidArgument('redis.keyPrefix', 'must be a string');
  const common = {
    keyPrefix,
    commandTimeoutMs,
    connectTimeoutMs,
    maxReconnectDelayMs,
    password: options.password,
    tls: options.tls,
  };

  const hasUrl = options.url !== undefined && options.url !== '';
  const hasCluster = options.clusterNodes !== undefined && options.clusterNodes.length > 0;
  if (hasUrl === hasCluster) {
    throw invalidArgument('redis', 'set exactly one of url (one server) and clusterNodes (a Redis Cluster)');
  }
  if (hasUrl) {
    const url = options.url as string;
    let protocol: string;
    try {
      protocol = new URL(url).protocol;
    } catch {
      throw invalidArgument('redis.url', `not a URL: '${url}'`);
    }
    if (protocol !== 'redis:' && protocol !== 'rediss:') {
      throw invalidArgument('redis.url', `expected redis:// or rediss://, got '${url}'`);
    }
    return { ...common, url };
  }
  const clusterNodes = (options.clusterNodes as readonly string[]).map(parseClusterNode);
  return { ...common, clusterNodes };
}
