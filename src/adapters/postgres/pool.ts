import type { ClientConfig, PoolClient, QueryResult, QueryResultRow } from 'pg';
import pg from 'pg';
import { FStoreError } from '../../domain/errors.js';
import { describeConnectionFailure } from '../connection-failure.js';
import type { PostgresOptions } from './options.js';

/**
 * A pg pool whose every failure is an FStoreError. The pool survives PostgreSQL restarts by
 * itself: connections that die while idle are dropped (and reported to the logger, never thrown),
 * and the next call opens a fresh one.
 */
export interface PostgresPool {
  query<Row extends QueryResultRow>(text: string, values?: readonly unknown[]): Promise<QueryResult<Row>>;
  /**
   * Runs `work` in one transaction on one connection. Serialization failures, deadlocks and
   * unique violations (two writers racing on the same new row) roll back and run `work` again,
   * up to `attempts` times; then the call fails with 'aborted'.
   */
  transaction<T>(work: (client: PoolClient) => Promise<T>, options?: TransactionOptions): Promise<T>;
  end(): Promise<void>;
}

export interface TransactionOptions {
  readonly isolation?: 'read committed' | 'repeatable read' | 'serializable';
  readonly readOnly?: boolean;
  readonly attempts?: number;
}

/** What the database is for, as it appears in 'unavailable' messages. */
const defaultPurpose = 'registry database';

/** Connection settings shared by the pool and the change-feed client. */
export function createClientConfig(options: PostgresOptions): ClientConfig {
  return {
    connectionString: options.connectionString,
    connectionTimeoutMillis: options.connectTimeoutMs,
    statement_timeout: options.statementTimeoutMs,
    // A transaction left open by a stuck caller must not hold row locks forever.
    idle_in_transaction_session_timeout: Math.max(options.statementTimeoutMs, 60_000),
    application_name: 'fstore',
    // Unqualified table names resolve in the FStore schema only (the name is a checked identifier).
    options: `-c search_path=${options.schema}`,
    keepAlive: true,
  };
}

export function createPostgresPool(options: PostgresOptions, purpose = defaultPurpose): PostgresPool {
  const pool = new pg.Pool({
    ...createClientConfig(options),
    max: options.poolSize,
    idleTimeoutMillis: options.idleTimeoutMs,
  });
  // An idle connection that dies (PostgreSQL restart, network cut) is emitted here; without a
  // listener Node would crash the process. The pool has already discarded that connection.
  pool.on('error', (error) => {
    options.logger?.warn(
      { err: error, code: errorCode(error) },
      `${purpose} (PostgreSQL): an idle connection failed and was dropped`,
    );
  });
  let ended = false;

  const translate = (error: unknown) => translateDatabaseError(error, purpose);

  async function connect(): Promise<PoolClient> {
    if (ended) throw new FStoreError('unavailable', `${purpose} (PostgreSQL) connection pool is closed`);
    try {
      return await pool.connect();
    } catch (error) {
      throw poolFull(error) ?? translate(error);
    }
  }

  /**
   * pg reports a wait for a free pooled connection that outlasts the connect timeout like a
   * database that does not answer. With every connection of the pool checked out, it is neither:
   * the database is up and busy with other calls of this process. Say so, with a retry hint.
   */
  function poolFull(error: unknown): FStoreError | undefined {
    if (!/timeout exceeded when trying to connect/i.test(error instanceof Error ? error.message : ''))
      return undefined;
    if (pool.totalCount < options.poolSize || pool.idleCount > 0) return undefined;
    return new FStoreError(
      'resource_exhausted',
      `${purpose} (PostgreSQL): all ${options.poolSize} connections of this server are in use by other calls; retry shortly`,
      { cause: error, retryAfterMs: 500 },
    );
  }

  async function runOnce<T>(work: (client: PoolClient) => Promise<T>, begin: string): Promise<T> {
    const client = await connect();
    // Between two statements of a checked-out connection pg emits connection errors on the
    // client; the pool's idle listener is detached then, so catch them here (the next statement
    // fails anyway and the connection is destroyed on release).
    let connectionError: unknown;
    const onError = (error: unknown) => {
      connectionError = error;
    };
    client.on('error', onError);
    let releaseError: Error | undefined;
    try {
      await client.query(begin);
      const result = await work(client);
      await client.query('COMMIT');
      return result;
    } catch (error) {
      if (connectionError !== undefined || isConnectionError(error)) {
        releaseError = error instanceof Error ? error : new Error(String(error));
      } else {
        try {
          await client.query('ROLLBACK');
        } catch (rollbackError) {
          releaseError = rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError));
        }
      }
      throw error;
    } finally {
      client.off('error', onError);
      // Passing an error destroys the connection instead of returning it to the pool.
      client.release(releaseError ?? (connectionError instanceof Error ? connectionError : undefined));
    }
  }

  return {
    async query<Row extends QueryResultRow>(text: string, values?: readonly unknown[]) {
      if (ended) throw new FStoreError('unavailable', `${purpose} (PostgreSQL) connection pool is closed`);
      try {
        return await pool.query<Row>(text, values as unknown[] | undefined);
      } catch (error) {
        throw poolFull(error) ?? translate(error);
      }
    },

    async transaction<T>(
      work: (client: PoolClient) => Promise<T>,
      transactionOptions: TransactionOptions = {},
    ) {
      const attempts = transactionOptions.attempts ?? 5;
      const begin = `BEGIN ISOLATION LEVEL ${(transactionOptions.isolation ?? 'read committed').toUpperCase()}${
        transactionOptions.readOnly ? ' READ ONLY' : ''
      }`;
      for (let attempt = 1; ; attempt += 1) {
        try {
          return await runOnce(work, begin);
        } catch (error) {
          if (error instanceof FStoreError) throw error;
          const code = errorCode(error);
          if (code !== undefined && retryableCodes.has(code)) {
            if (attempt < attempts) {
              // A short random pause so the two racing writers do not collide again in lockstep.
              await sleep(5 * attempt + Math.random() * 20 * attempt);
              continue;
            }
            throw new FStoreError(
              'aborted',
              `${purpose} (PostgreSQL): the change conflicted with concurrent changes ${attempts} times; retry it`,
              { cause: error },
            );
          }
          throw translate(error);
        }
      }
    },

    async end() {
      if (ended) return;
      ended = true;
      // pool.end() waits for checked-out connections; never let it hang a shutdown.
      await withTimeout(pool.end(), options.closeTimeoutMs).catch(() => undefined);
    },
  };
}

// 40001 serialization_failure, 40P01 deadlock_detected, 23505 unique_violation.
const retryableCodes = new Set(['40001', '40P01', '23505']);

// Failures that mean "the server is not reachable or not accepting work": the caller may retry later.
const unavailableSqlStates = new Set([
  '57P01', // admin_shutdown (PostgreSQL is stopping)
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now (starting up or shutting down)
  '53300', // too_many_connections
  '53400', // configuration_limit_exceeded
]);

const unavailableSystemCodes = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ENOENT', // a unix socket path that does not exist (yet)
]);

// pg reports these without a code.
const unavailableMessages = [
  /connection terminated/i,
  /timeout exceeded when trying to connect/i,
  /not queryable/i,
  /connection (?:error|ended)/i,
  /cannot use a pool after calling end/i,
  /server closed the connection/i,
];

/** Whether the failure is about the connection rather than the statement. */
export function isConnectionError(error: unknown): boolean {
  const code = errorCode(error);
  if (code !== undefined) {
    if (code.startsWith('08') || unavailableSqlStates.has(code) || unavailableSystemCodes.has(code))
      return true;
  }
  const message = error instanceof Error ? error.message : '';
  return unavailableMessages.some((pattern) => pattern.test(message));
}

// pg's own refusals before the server decides: SCRAM asked for, no password configured.
const clientAuthenticationMessages = [/^SASL: /, /client password must be a string/];

/** 28xxx from the server (wrong password, no such role, pg_hba.conf), or pg's own SASL refusal. */
function isAuthenticationError(error: unknown): boolean {
  if (errorCode(error)?.startsWith('28')) return true;
  const message = error instanceof Error ? error.message : '';
  return clientAuthenticationMessages.some((pattern) => pattern.test(message));
}

/**
 * Driver errors → FStoreError, at the adapter boundary. An FStoreError passes through unchanged.
 * `purpose` names the database in messages ("registry database").
 */
export function translateDatabaseError(error: unknown, purpose = defaultPurpose): FStoreError {
  if (error instanceof FStoreError) return error;
  const code = errorCode(error);
  const detail = describe(error);
  // Messages reach callers: plain words only. The driver's text (SQL, addresses) stays in `cause`,
  // which the server logs with the request id.
  if (isConnectionError(error) || isAuthenticationError(error) || code === '3D000')
    // Authentication and 3D000 (no such database) are configuration problems, but to a caller
    // they mean the same: the registry cannot be reached until someone fixes it.
    return new FStoreError(
      'unavailable',
      `${purpose} (PostgreSQL) is unavailable: ${describeConnectionFailure(error)}`,
      {
        cause: error,
      },
    );
  if (code === '57014' || /query read timeout/i.test(detail))
    return new FStoreError('deadline_exceeded', `${purpose} (PostgreSQL): a statement timed out`, {
      cause: error,
    });
  if (code !== undefined && (retryableCodes.has(code) || code === '55P03' || code === '25P03'))
    return new FStoreError(
      'aborted',
      `${purpose} (PostgreSQL): the change conflicted with a concurrent one; retry it`,
      {
        cause: error,
      },
    );
  // The gRPC edge never sends an internal error's message to the caller; the log keeps it.
  return new FStoreError('internal', `${purpose} (PostgreSQL) failed: ${detail}`, { cause: error });
}

function errorCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string') return code;
  // Node's happy-eyeballs connect reports an AggregateError whose parts carry the code.
  const parts = (error as { errors?: unknown }).errors;
  if (Array.isArray(parts))
    for (const part of parts) if (errorCode(part) !== undefined) return errorCode(part);
  return undefined;
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    if (error.message) return error.message;
    const parts = (error as { errors?: unknown }).errors;
    if (Array.isArray(parts) && parts.length > 0) return parts.map(describe).join('; ');
    return errorCode(error) ?? error.name;
  }
  return String(error);
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Resolves or rejects like `promise`, or rejects after `ms`; the timer never keeps Node alive. */
export function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Quotes a PostgreSQL identifier. */
export const quoteIdentifier = (name: string): string => `"${name.replaceAll('"', '""')}"`;
