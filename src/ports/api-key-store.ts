import type { RoleBinding } from '../domain/access.js';

/**
 * API keys at rest (never their secrets: a hash only). Errors are FStoreError: 'not_found' for an
 * unknown id, 'unavailable' when the database is down.
 */

export interface ApiKeyInfo {
  readonly id: string;
  readonly name: string;
  readonly bindings: readonly RoleBinding[];
  readonly createdBy: string;
  readonly createdAt: Date;
  readonly expiresAt: Date | undefined;
  readonly revokedAt: Date | undefined;
  readonly lastUsedAt: Date | undefined;
}

export interface NewApiKey {
  readonly id: string;
  readonly name: string;
  readonly secretHash: Uint8Array;
  readonly bindings: readonly RoleBinding[];
  readonly createdBy: string;
  readonly expiresAt: Date | undefined;
}

export interface ApiKeyCredential {
  readonly info: ApiKeyInfo;
  readonly secretHash: Uint8Array;
}

export interface ApiKeyStore {
  create(key: NewApiKey): Promise<ApiKeyInfo>;
  /** Newest first. */
  list(options: { readonly includeRevoked: boolean }): Promise<ApiKeyInfo[]>;
  get(id: string): Promise<ApiKeyInfo>;
  /** Sets the revocation time (the first one stays: revoking twice changes nothing). */
  revoke(id: string): Promise<ApiKeyInfo>;
  /** Every key with its hash, revoked ones included (so a revoked key is refused as such). */
  loadCredentials(): Promise<ApiKeyCredential[]>;
  /** Records that the keys were used at `at` (batched by the caller). */
  recordUse(ids: readonly string[], at: Date): Promise<void>;
  /**
   * Calls `listener` after any key change committed by any process, and with `reconnected` after
   * the change feed was lost and restored (reload everything).
   */
  watch(listener: (event: { reconnected: boolean }) => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}
