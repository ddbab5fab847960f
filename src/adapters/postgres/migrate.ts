import { readFile } from 'node:fs/promises';
import { FStoreError } from '../../domain/errors.js';
import type { PostgresOptions } from './options.js';
import type { PostgresPool } from './pool.js';
import { createPostgresPool, quoteIdentifier } from './pool.js';

/**
 * Schema migrations, applied in order at start-up. Each is a SQL file in `migrations/`, loaded by
 * name; the list is explicit so a stray file never runs. Never edit an applied migration: add one.
 */
export const migrations: readonly { readonly version: number; readonly name: string }[] = [
  { version: 1, name: '001_registry' },
  { version: 2, name: '002_stream_aggregations' },
  { version: 3, name: '003_reference_profiles' },
  { version: 4, name: '004_api_keys' },
  { version: 5, name: '005_audit_log' },
];

/**
 * Brings `schema` up to the latest migration, creating it when missing. Everything runs in one
 * transaction under a transaction-scoped advisory lock, so processes starting together wait for
 * each other instead of racing, and a failed migration leaves nothing half-done.
 * Returns the versions it applied.
 */
export async function runMigrations(pool: PostgresPool, schema: string): Promise<number[]> {
  const scripts = await Promise.all(
    migrations.map(async (migration) => ({
      ...migration,
      sql: await readMigration(migration.name),
    })),
  );
  return pool.transaction(async (client) => {
    // One lock per schema: processes of other FStore installations in the same database do not wait.
    await client.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [
      `fstore.migrations.${schema}`,
    ]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdentifier(schema)}`);
    await client.query(`SET LOCAL search_path TO ${quoteIdentifier(schema)}`);
    await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version    integer     PRIMARY KEY,
      name       text        NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`);
    const applied = await client.query<{ version: number }>('SELECT version FROM schema_migrations');
    const appliedVersions = new Set(applied.rows.map((row) => row.version));
    const newlyApplied: number[] = [];
    // A database migrated by a newer FStore keeps its extra versions: older processes still run
    // during a rolling upgrade, and migrations only ever add.
    for (const migration of scripts) {
      if (appliedVersions.has(migration.version)) continue;
      await client.query(migration.sql);
      await client.query('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [
        migration.version,
        migration.name,
      ]);
      newlyApplied.push(migration.version);
    }
    return newlyApplied;
  });
}

async function readMigration(name: string): Promise<string> {
  const file = new URL(`./migrations/${name}.sql`, import.meta.url);
  try {
    return await readFile(file, 'utf8');
  } catch (error) {
    // A build that forgot to copy the SQL files next to the compiled module ends up here.
    throw new FStoreError('internal', `registry migration ${name} cannot be read from ${file.pathname}`, {
      cause: error,
    });
  }
}

/** A pool on a schema brought up to the latest migration; the pool is closed again when that fails. */
export async function createMigratedPool(options: PostgresOptions, purpose?: string): Promise<PostgresPool> {
  const pool = createPostgresPool(options, purpose);
  try {
    await runMigrations(pool, options.schema);
  } catch (error) {
    await pool.end();
    throw error;
  }
  return pool;
}
