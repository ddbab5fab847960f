import { type RoleBinding, roles } from '../../domain/access.js';
import { FStoreError, notFound } from '../../domain/errors.js';
import type { ApiKeyCredential, ApiKeyInfo, ApiKeyStore, NewApiKey } from '../../ports/api-key-store.js';
import { createMigratedPool } from './migrate.js';
import { type PostgresOptionsInput, resolvePostgresOptions } from './options.js';
import { apiKeyChannel, registryNotificationPayload, watchRegistryChanges } from './registry-watch.js';

/** API keys in PostgreSQL (migration 004): hashes only, revocation announced on a change feed. */

const purpose = 'registry database';

interface KeyRow {
  id: string;
  name: string;
  bindings: RoleBinding[];
  created_by: string;
  created_at: Date;
  expires_at: Date | null;
  revoked_at: Date | null;
  last_used_at: Date | null;
  secret_hash?: Buffer;
}

const infoColumns = 'id, name, bindings, created_by, created_at, expires_at, revoked_at, last_used_at';

function toInfo(row: KeyRow): ApiKeyInfo {
  return {
    id: row.id,
    name: row.name,
    // Stored by this adapter only; checked anyway so a hand-edited row cannot grant a made-up role.
    bindings: row.bindings.filter(
      (binding) => (roles as readonly string[]).includes(binding.role) && typeof binding.project === 'string',
    ),
    createdBy: row.created_by,
    createdAt: row.created_at,
    expiresAt: row.expires_at ?? undefined,
    revokedAt: row.revoked_at ?? undefined,
    lastUsedAt: row.last_used_at ?? undefined,
  };
}

export async function createPostgresApiKeyStore(input: PostgresOptionsInput): Promise<ApiKeyStore> {
  const options = resolvePostgresOptions(input);
  const pool = await createMigratedPool(options, purpose);
  let changes = 0;
  const announce = () =>
    pool.query('SELECT pg_notify($1, $2)', [
      apiKeyChannel,
      registryNotificationPayload(options.schema, ++changes),
    ]);

  const get = async (id: string): Promise<ApiKeyInfo> => {
    const result = await pool.query<KeyRow>(`SELECT ${infoColumns} FROM api_keys WHERE id = $1`, [id]);
    const row = result.rows[0];
    if (!row) throw notFound(`API key ${JSON.stringify(id)} does not exist`);
    return toInfo(row);
  };

  return {
    async create(key: NewApiKey) {
      const result = await pool.query<KeyRow>(
        `INSERT INTO api_keys (id, name, secret_hash, bindings, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING ${infoColumns}`,
        [
          key.id,
          key.name,
          Buffer.from(key.secretHash),
          JSON.stringify(key.bindings),
          key.createdBy,
          key.expiresAt ?? null,
        ],
      );
      const row = result.rows[0];
      if (!row) throw new FStoreError('internal', 'API key insert returned no row');
      await announce();
      return toInfo(row);
    },

    async list({ includeRevoked }) {
      const result = await pool.query<KeyRow>(
        `SELECT ${infoColumns} FROM api_keys ${includeRevoked ? '' : 'WHERE revoked_at IS NULL'}
         ORDER BY created_at DESC, id`,
      );
      return result.rows.map(toInfo);
    },

    get,

    async revoke(id: string) {
      const result = await pool.query<KeyRow>(
        `UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING ${infoColumns}`,
        [id],
      );
      const row = result.rows[0];
      if (!row) throw notFound(`API key ${JSON.stringify(id)} does not exist`);
      await announce();
      return toInfo(row);
    },

    async loadCredentials(): Promise<ApiKeyCredential[]> {
      const result = await pool.query<KeyRow>(`SELECT ${infoColumns}, secret_hash FROM api_keys`);
      return result.rows.map((row) => ({
        info: toInfo(row),
        secretHash: new Uint8Array(row.secret_hash ?? Buffer.alloc(0)),
      }));
    },

    async recordUse(ids: readonly string[], at: Date) {
      if (ids.length === 0) return;
      // Only forward: replicas flushing out of order never move a last-used time back.
      await pool.query(
        `UPDATE api_keys SET last_used_at = $2
         WHERE id = ANY($1::text[]) AND (last_used_at IS NULL OR last_used_at < $2)`,
        [ids, at],
      );
    },

    watch: (listener) => watchRegistryChanges(options, listener, apiKeyChannel),

    close: () => pool.end(),
  };
}
