import { FStoreError } from '../../../domain/errors.js';
import { type PostgresOptions, type PostgresOptionsInput, resolvePostgresOptions } from '../options.js';
import type { PostgresPool } from '../pool.js';

/**
 * How the offline store reaches PostgreSQL: either a pool it shares with its caller (the caller
 * ends it) or a connection string it opens and closes a pool for.
 */
export type PostgresOfflineStoreOptionsInput =
  | ({ readonly pool: PostgresPool; readonly schema?: string } & { readonly connectionString?: undefined })
  | (PostgresOptionsInput & { readonly pool?: undefined });

export const postgresOfflineStoreDefaults = {
  schema: 'fstore',
  // Ten minutes: one COPY carries a whole batch, and a transaction stays open between the batches
  // of a streamed ingest (the idle-in-transaction timeout follows this value, see pool.ts).
  statementTimeoutMs: 600_000,
} satisfies Partial<PostgresOptions>;

export type ResolvedPostgresOfflineStoreOptions =
  | { readonly pool: PostgresPool; readonly schema: string; readonly ownsPool: false }
  | { readonly postgres: PostgresOptions; readonly schema: string; readonly ownsPool: true };

const schemaPattern = /^[a-z_][a-z0-9_]{0,62}$/;

/** Fills in the defaults and checks every option; throws 'invalid_argument' naming the option. */
export function resolvePostgresOfflineStoreOptions(
  input: PostgresOfflineStoreOptionsInput,
): ResolvedPostgresOfflineStoreOptions {
  if (input.pool !== undefined) {
    const schema = input.schema ?? postgresOfflineStoreDefaults.schema;
    if (!schemaPattern.test(schema))
      throw new FStoreError(
        'invalid_argument',
        'postgres option schema: must be a lower-case identifier (a-z, 0-9, _) of at most 63 characters',
      );
    return { pool: input.pool, schema, ownsPool: false };
  }
  const { pool: _pool, ...rest } = input;
  const postgres = resolvePostgresOptions({
    ...rest,
    schema: rest.schema ?? postgresOfflineStoreDefaults.schema,
    statementTimeoutMs: rest.statementTimeoutMs ?? postgresOfflineStoreDefaults.statementTimeoutMs,
  });
  return { postgres, schema: postgres.schema, ownsPool: true };
}
