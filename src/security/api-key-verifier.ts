import type { Principal } from '../domain/access.js';
import { FStoreError } from '../domain/errors.js';
import type { ApiKeyCredential, ApiKeyStore } from '../ports/api-key-store.js';
import { parseApiKey, secretMatches } from './api-keys.js';

/**
 * Checks API keys against an in-memory copy of the key table, so a call costs a hash and a map
 * lookup, not a database round trip. The copy is reloaded on every change announced by any
 * process (creation, revocation: refused everywhere within about a second), on a reconnection of
 * the change feed, every `refreshIntervalMs` in case a notification was lost, and — at most once
 * per `missReloadIntervalMs` — when an unknown id is presented (a key created a moment ago on
 * another replica), so random ids cannot turn into a flood of reloads.
 */

export interface ApiKeyVerifierOptions {
  readonly refreshIntervalMs?: number;
  readonly missReloadIntervalMs?: number;
  /** Use times are written in batches this often. */
  readonly lastUsedFlushMs?: number;
  readonly logger?: { warn(details: object, message: string): void };
}

export const apiKeyVerifierDefaults = {
  refreshIntervalMs: 60_000, // one minute: only a safety net behind the change feed
  missReloadIntervalMs: 1_000, // one second
  lastUsedFlushMs: 10_000, // ten seconds: "last used" is approximate by that much
} satisfies ApiKeyVerifierOptions;

export interface ApiKeyVerifier {
  /** The key's principal, or FStoreError 'unauthenticated' saying whether it is malformed, unknown, expired or revoked. */
  verify(key: string): Principal | Promise<Principal>;
  /** Reloads the keys now (tests, and after this process changed a key). */
  reload(): Promise<void>;
  stop(): Promise<void>;
}

interface KnownKey {
  readonly credential: ApiKeyCredential;
  readonly principal: Principal;
  readonly expiresAtMs: number;
}

const refused = (problem: string) => new FStoreError('unauthenticated', `API key: ${problem}`);

export async function createApiKeyVerifier(
  store: ApiKeyStore,
  input: ApiKeyVerifierOptions = {},
): Promise<ApiKeyVerifier> {
  const options = { ...apiKeyVerifierDefaults, ...input };
  let keys = new Map<string, KnownKey>();
  // Whole keys whose secret matched, so a busy key is hashed once, not per call. Emptied by every
  // reload (a revocation among them), bounded so random keys cannot grow it.
  let verified = new Map<string, KnownKey>();
  const maxVerified = 10_000;
  let lastLoad = 0;
  let loading: Promise<void> | undefined;
  let again = false;
  const used = new Set<string>();

  const loadOnce = async () => {
    const credentials = await store.loadCredentials();
    const next = new Map<string, KnownKey>();
    for (const credential of credentials)
      next.set(credential.info.id, {
        credential,
        principal: { id: `key:${credential.info.id}`, method: 'api_key', bindings: credential.info.bindings },
        expiresAtMs: credential.info.expiresAt?.getTime() ?? Number.POSITIVE_INFINITY,
      });
    keys = next;
    verified = new Map();
    lastLoad = Date.now();
  };
  // One load at a time; a change announced during a load is picked up by one more load after it.
  const reload = (): Promise<void> => {
    if (loading) {
      again = true;
      return loading;
    }
    loading = (async () => {
      try {
        do {
          again = false;
          await loadOnce();
        } while (again);
      } finally {
        loading = undefined;
      }
    })();
    return loading;
  };

  await reload();
  const stopWatching = await store.watch(() => {
    reload().catch((error: unknown) =>
      options.logger?.warn({ err: error }, 'API keys could not be reloaded'),
    );
  });
  const refreshTimer = setInterval(() => {
    reload().catch((error: unknown) =>
      options.logger?.warn({ err: error }, 'API keys could not be reloaded'),
    );
  }, options.refreshIntervalMs);
  refreshTimer.unref();
  const flushUse = async () => {
    if (used.size === 0) return;
    const ids = [...used];
    used.clear();
    await store.recordUse(ids, new Date()).catch((error: unknown) => {
      for (const id of ids) used.add(id);
      options.logger?.warn({ err: error }, 'API key use times could not be recorded; will retry');
    });
  };
  const flushTimer = setInterval(() => void flushUse(), options.lastUsedFlushMs);
  flushTimer.unref();

  const check = (known: KnownKey, secret: string, key: string): Principal => {
    if (!secretMatches(secret, known.credential.secretHash)) throw refused('unknown key or wrong secret');
    if (known.credential.info.revokedAt) throw refused('revoked');
    if (verified.size >= maxVerified) verified.clear();
    verified.set(key, known);
    return admitted(known);
  };
  const admitted = (known: KnownKey): Principal => {
    if (Date.now() >= known.expiresAtMs) throw refused('expired');
    used.add(known.credential.info.id);
    return known.principal;
  };

  return {
    verify(key: string) {
      const seen = verified.get(key);
      if (seen) return admitted(seen);
      const parsed = parseApiKey(key);
      if (!parsed) throw refused('malformed (expected fsk_<id>_<secret>)');
      const known = keys.get(parsed.id);
      if (known) return check(known, parsed.secret, key);
      if (Date.now() - lastLoad < options.missReloadIntervalMs) throw refused('unknown key or wrong secret');
      return reload().then(
        () => {
          const loaded = keys.get(parsed.id);
          if (!loaded) throw refused('unknown key or wrong secret');
          return check(loaded, parsed.secret, key);
        },
        (error: unknown) => {
          throw FStoreError.from(error, 'unavailable');
        },
      );
    },
    reload,
    async stop() {
      clearInterval(refreshTimer);
      clearInterval(flushTimer);
      await stopWatching();
      await flushUse();
    },
  };
}
