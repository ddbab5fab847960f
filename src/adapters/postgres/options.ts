import { z } from 'zod';
import { FStoreError } from '../../domain/errors.js';

/** The part of a logger the adapter uses; pino's logger fits it as it is. */
export interface PostgresLogger {
  warn(details: Record<string, unknown>, message: string): void;
}

export interface PostgresOptions {
  /** `postgres://user:password@host:port/database`. */
  readonly connectionString: string;
  /** The PostgreSQL schema holding every FStore table; created at start-up when missing. */
  readonly schema: string;
  /** Most connections the pool opens. */
  readonly poolSize: number;
  /** How long opening a connection may take before the call fails with 'unavailable'. */
  readonly connectTimeoutMs: number;
  /** Server-side `statement_timeout`; a statement running longer fails with 'deadline_exceeded'. */
  readonly statementTimeoutMs: number;
  /** An idle pooled connection is closed after this long. */
  readonly idleTimeoutMs: number;
  /** First delay before the change feed (LISTEN) reconnects; it doubles up to the maximum. */
  readonly watchReconnectInitialDelayMs: number;
  readonly watchReconnectMaxDelayMs: number;
  /** How often the change-feed connection is probed, so a silently dead connection is noticed. */
  readonly watchHeartbeatMs: number;
  /** `close()` gives up waiting for connections to end after this long. */
  readonly closeTimeoutMs: number;
  /** Where connection losses in the background are reported; silent when absent. */
  readonly logger?: PostgresLogger;
}

export type PostgresOptionsInput = Pick<PostgresOptions, 'connectionString'> &
  Partial<Omit<PostgresOptions, 'connectionString'>>;

export const postgresDefaults = {
  schema: 'fstore',
  poolSize: 10,
  connectTimeoutMs: 5_000, // five seconds: a database that takes longer to accept is treated as down
  statementTimeoutMs: 30_000, // thirty seconds: registry statements take milliseconds; this only stops runaways
  idleTimeoutMs: 30_000, // thirty seconds
  watchReconnectInitialDelayMs: 100, // a tenth of a second
  watchReconnectMaxDelayMs: 5_000, // five seconds: the change feed is back at most ~5 s after the database
  watchHeartbeatMs: 15_000, // fifteen seconds
  closeTimeoutMs: 5_000, // five seconds
} satisfies Partial<PostgresOptions>;

const milliseconds = (max: number) => z.number().int().min(1).max(max);

// Unquoted-identifier rules, so the schema name can go into `search_path` and SQL as it is.
const schemaName = z
  .string()
  .regex(/^[a-z_][a-z0-9_]{0,62}$/, 'must be a lower-case identifier (a-z, 0-9, _) of at most 63 characters');

const optionsSchema = z.object({
  connectionString: z.string().min(1, 'is required'),
  schema: schemaName,
  poolSize: z.number().int().min(1).max(1_000),
  connectTimeoutMs: milliseconds(600_000),
  statementTimeoutMs: milliseconds(3_600_000),
  idleTimeoutMs: milliseconds(3_600_000),
  watchReconnectInitialDelayMs: milliseconds(600_000),
  watchReconnectMaxDelayMs: milliseconds(600_000),
  watchHeartbeatMs: milliseconds(3_600_000),
  closeTimeoutMs: milliseconds(600_000),
});

/** Fills in the defaults and checks every option; throws 'invalid_argument' naming the option. */
export function resolvePostgresOptions(input: PostgresOptionsInput): PostgresOptions {
  const { logger, ...rest } = input;
  const merged = { ...postgresDefaults, ...withoutUndefined(rest) };
  const result = optionsSchema.safeParse(merged);
  if (!result.success) {
    const issue = result.error.issues[0];
    const name = issue?.path.join('.') || 'options';
    throw new FStoreError(
      'invalid_argument',
      `postgres option ${name}: ${issue?.message ?? 'invalid value'}`,
    );
  }
  if (result.data.watchReconnectMaxDelayMs < result.data.watchReconnectInitialDelayMs)
    throw new FStoreError(
      'invalid_argument',
      'postgres option watchReconnectMaxDelayMs: must be at least watchReconnectInitialDelayMs',
    );
  return logger ? { ...result.data, logger } : result.data;
}

function withoutUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, entry]) => entry !== undefined)) as Partial<T>;
}
