import type { JWTPayload, JWTVerifyGetKey, JWTVerifyOptions } from 'jose';
import { createRemoteJWKSet, decodeProtectedHeader, errors, jwtVerify } from 'jose';
import type { Principal, RoleBinding } from '../domain/access.js';
import { distinctBindings, parseRoleBinding } from '../domain/access.js';
import { FStoreError, invalidArgument } from '../domain/errors.js';

/**
 * Verifies JWT bearer tokens of one OpenID Connect issuer: the signature against the issuer's
 * published keys (JWKS), then `iss`, `aud`, `exp`, `nbf` and `iat` with a clock skew. A verified
 * token is remembered until it expires, so a client reusing its token costs a map lookup, not a
 * signature check. Refusals say which check failed and never repeat anything from the token.
 */

export interface JwtVerifierOptions {
  /** Expected `iss`, compared exactly. */
  readonly issuer: string;
  /** Expected `aud` (the claim may be a string or an array containing it). */
  readonly audience: string;
  /** Default: the `jwks_uri` of `<issuer>/.well-known/openid-configuration`, fetched once, lazily. */
  readonly jwksUrl?: string;
  /**
   * The claim holding roles or groups. A dotted path (`realm_access.roles`) walks nested objects,
   * unless the payload has a claim of exactly that name (namespaced claims such as
   * `https://example.com/roles` contain dots). Its value: a string (space or comma separated) or
   * an array of strings.
   */
  readonly rolesClaim: string;
  /** Tolerance for `exp`, `nbf` and `iat`, in seconds. */
  readonly clockSkewSeconds: number;
  /** Allowed `alg` values; default: the asymmetric ones (`jwtVerifierDefaults.algorithms`). */
  readonly algorithms?: readonly string[];
  /** Bindings configured for a name such as `group:<claim value>` or `jwt:<sub>`. */
  readonly lookupBindings: (name: string) => readonly RoleBinding[];
  /** Verified tokens remembered until their `exp`, least recently used dropped first (default 10_000; 0: none). */
  readonly tokenCacheSize?: number;
  /** Timeout of the JWKS and discovery HTTP requests (default 5_000 ms). */
  readonly fetchTimeoutMs?: number;
}

export interface JwtVerifier {
  /** The principal of a valid token: id `jwt:<sub>`, method 'jwt', bindings from the roles claim and lookups. */
  verify(token: string): Promise<Principal>;
}

// Asymmetric only: the keys come from a public document, so an HMAC key there would be public too.
const asymmetricAlgorithms = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
] as const;

export const jwtVerifierDefaults = {
  algorithms: asymmetricAlgorithms,
  tokenCacheSize: 10_000, // with tokens of 1-2 KiB, some 20 MB at most
  fetchTimeoutMs: 5_000, // five seconds
  maxTokenBytes: 16 * 1024, // 16 KiB: far above any real token; longer ones are refused before parsing
  // One second: after a key rotation a token signed with the new key is accepted at most a second
  // after the first fetch of the old set, yet tokens with made-up `kid`s cause at most one JWKS
  // request per second (jose's default of 30 s would refuse the new key for that long).
  jwksCooldownMs: 1_000,
  jwksMaxAgeMs: 600_000, // ten minutes: keys are refetched this often even without an unknown `kid`
} as const;

/** Algorithms that may be configured (jose verifies them; `Ed25519` is the fully specified EdDSA). */
const configurableAlgorithms: ReadonlySet<string> = new Set([...asymmetricAlgorithms, 'Ed25519']);

/** Registered JWS names: the only `alg` values a refusal may repeat (anything else is attacker text). */
const registeredAlgorithms: ReadonlySet<string> = new Set([
  ...configurableAlgorithms,
  'HS256',
  'HS384',
  'HS512',
  'ES256K',
  'Ed448',
  'ML-DSA-44',
  'ML-DSA-65',
  'ML-DSA-87',
  'none',
]);

const jwtPattern = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/** Whether a bearer credential looks like a JWT (three base64url parts) — cheap, no verification. */
export function looksLikeJwt(token: string): boolean {
  // The signature may be empty so that `alg: none` tokens reach the verifier and are refused as such.
  return jwtPattern.test(token);
}

const refused = (problem: string) => new FStoreError('unauthenticated', `JWT bearer token: ${problem}`);

// Causes are kept (network errors name the URL, never the token): operators need them.
const keysUnavailable = (cause: unknown) =>
  new FStoreError('unavailable', "JWT bearer token: the issuer's keys (JWKS) cannot be fetched", { cause });

interface CachedToken {
  readonly principal: Principal;
  /** `exp` plus the skew, in epoch seconds: from then on the token is expired. */
  readonly expiredAt: number;
}

type RemoteKeys = ReturnType<typeof createRemoteJWKSet>;

const nowSeconds = () => Math.floor(Date.now() / 1000);

export function createJwtVerifier(options: JwtVerifierOptions): JwtVerifier {
  const settings = validated(options);
  const { issuer, clockSkewSeconds, lookupBindings, tokenCacheSize, fetchTimeoutMs } = settings;
  const verifyOptions: JWTVerifyOptions = {
    issuer,
    audience: options.audience,
    algorithms: [...settings.algorithms],
    clockTolerance: clockSkewSeconds,
    requiredClaims: ['exp'], // a token without expiry would be valid (and cached) forever
  };

  const remoteKeys = (url: URL): RemoteKeys =>
    createRemoteJWKSet(url, {
      timeoutDuration: fetchTimeoutMs,
      cooldownDuration: jwtVerifierDefaults.jwksCooldownMs,
      cacheMaxAge: jwtVerifierDefaults.jwksMaxAgeMs,
    });

  // A failed discovery is not remembered: the next token tries again.
  let keySet: Promise<RemoteKeys> | undefined = settings.jwksUrl
    ? Promise.resolve(remoteKeys(settings.jwksUrl))
    : undefined;
  const currentKeySet = (): Promise<RemoteKeys> => {
    if (keySet) return keySet;
    const discovering = discoverJwksUrl(issuer, fetchTimeoutMs).then(remoteKeys);
    keySet = discovering;
    discovering.catch(() => {
      if (keySet === discovering) keySet = undefined;
    });
    return discovering;
  };

  // Errors of the key lookup itself go on to be refusals; anything else means the keys could not be had.
  const getKey: JWTVerifyGetKey = async (header, token) => {
    const keys = await currentKeySet();
    try {
      return await keys(header, token);
    } catch (error) {
      if (error instanceof errors.JWKSNoMatchingKey || error instanceof errors.JWKSMultipleMatchingKeys)
        throw error;
      if (error instanceof errors.JOSENotSupported || error instanceof errors.JWKInvalid)
        throw refused("the issuer's signing key cannot be used");
      throw keysUnavailable(error);
    }
  };

  const verifySignatureAndClaims = async (token: string): Promise<JWTPayload> => {
    try {
      return (await jwtVerify(token, getKey, verifyOptions)).payload;
    } catch (error) {
      // Several keys fit the header (no `kid`): the token is valid if one of them verifies it.
      if (!(error instanceof errors.JWKSMultipleMatchingKeys)) throw error;
      for await (const key of error) {
        try {
          return (await jwtVerify(token, key, verifyOptions)).payload;
        } catch (inner) {
          if (!(inner instanceof errors.JWSSignatureVerificationFailed)) throw inner;
        }
      }
      throw new errors.JWSSignatureVerificationFailed();
    }
  };

  const principalOf = (payload: JWTPayload): Principal => {
    const { sub, iat } = payload;
    if (typeof sub !== 'string' || sub === '') throw refused('no subject');
    // The subject becomes the logged and audited principal id (OIDC caps it at 255 characters).
    // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
    if (sub.length > 255 || /[\u0000-\u001f\u007f-\u009f]/.test(sub)) throw refused('invalid subject');
    if (typeof iat === 'number' && iat > nowSeconds() + clockSkewSeconds)
      throw refused('issued in the future');
    const bindings: RoleBinding[] = [];
    for (const value of roleValues(claimAt(payload, settings.rolesClaim))) {
      const direct = parseRoleBinding(value);
      if (direct) bindings.push(direct);
      bindings.push(...lookupBindings(`group:${value}`));
    }
    bindings.push(...lookupBindings(`jwt:${sub}`));
    return { id: `jwt:${sub}`, method: 'jwt', bindings: distinctBindings(bindings) };
  };

  // A Map iterates in insertion order: re-inserting on each hit keeps the least recently used first.
  // Bindings are resolved once per token: the bindings table is configuration, fixed while running.
  const cache = new Map<string, CachedToken>();
  const cached = (token: string): Principal | undefined => {
    const entry = cache.get(token);
    if (!entry) return undefined;
    cache.delete(token);
    if (nowSeconds() >= entry.expiredAt) return undefined; // verified again below, and refused as expired
    cache.set(token, entry);
    return entry.principal;
  };
  const remember = (token: string, entry: CachedToken) => {
    if (tokenCacheSize === 0) return;
    cache.delete(token); // verified twice at once: one entry, and no other dropped for it
    if (cache.size >= tokenCacheSize) {
      const oldest = cache.keys().next();
      if (!oldest.done) cache.delete(oldest.value);
    }
    cache.set(token, entry);
  };

  return {
    async verify(token: string): Promise<Principal> {
      if (typeof token !== 'string' || token.length > jwtVerifierDefaults.maxTokenBytes)
        throw refused('malformed');
      const hit = cached(token);
      if (hit) return hit;
      if (!looksLikeJwt(token)) throw refused('malformed');
      let payload: JWTPayload;
      try {
        payload = await verifySignatureAndClaims(token);
      } catch (error) {
        throw refusal(error, token);
      }
      const principal = principalOf(payload);
      if (typeof payload.exp === 'number')
        remember(token, { principal, expiredAt: payload.exp + clockSkewSeconds });
      return principal;
    },
  };
}

interface Settings {
  readonly issuer: string;
  readonly jwksUrl: URL | undefined;
  readonly rolesClaim: string;
  readonly clockSkewSeconds: number;
  readonly algorithms: readonly string[];
  readonly lookupBindings: (name: string) => readonly RoleBinding[];
  readonly tokenCacheSize: number;
  readonly fetchTimeoutMs: number;
}

function validated(options: JwtVerifierOptions): Settings {
  if (options.issuer === '') throw invalidArgument('issuer', 'must not be empty');
  if (options.audience === '') throw invalidArgument('audience', 'must not be empty');
  if (options.rolesClaim === '') throw invalidArgument('rolesClaim', 'must not be empty');
  if (!Number.isFinite(options.clockSkewSeconds) || options.clockSkewSeconds < 0)
    throw invalidArgument('clockSkewSeconds', 'must be a number of seconds, zero or more');
  const tokenCacheSize = options.tokenCacheSize ?? jwtVerifierDefaults.tokenCacheSize;
  if (!Number.isSafeInteger(tokenCacheSize) || tokenCacheSize < 0)
    throw invalidArgument('tokenCacheSize', 'must be an integer, zero or more');
  const fetchTimeoutMs = options.fetchTimeoutMs ?? jwtVerifierDefaults.fetchTimeoutMs;
  if (!Number.isSafeInteger(fetchTimeoutMs) || fetchTimeoutMs < 1)
    throw invalidArgument('fetchTimeoutMs', 'must be a whole number of milliseconds, 1 or more');
  const algorithms = options.algorithms ?? jwtVerifierDefaults.algorithms;
  if (algorithms.length === 0) throw invalidArgument('algorithms', 'must name at least one algorithm');
  for (const algorithm of algorithms)
    if (!configurableAlgorithms.has(algorithm))
      throw invalidArgument(
        'algorithms',
        `${JSON.stringify(algorithm)} is not one of ${[...configurableAlgorithms].join(', ')} (symmetric algorithms and "none" are never allowed)`,
      );
  let jwksUrl: URL | undefined;
  if (options.jwksUrl !== undefined) jwksUrl = httpUrl('jwksUrl', options.jwksUrl);
  else httpUrl('issuer', discoveryUrl(options.issuer)); // discovery needs an http(s) issuer
  return { ...options, jwksUrl, tokenCacheSize, fetchTimeoutMs, algorithms };
}

function httpUrl(field: string, text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw invalidArgument(field, `${JSON.stringify(text)} is not a URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:')
    throw invalidArgument(field, `${JSON.stringify(text)} is not an http(s) URL`);
  return url;
}

const discoveryUrl = (issuer: string) => `${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;

/** The `jwks_uri` of the issuer's OpenID Connect discovery document. */
async function discoverJwksUrl(issuer: string, timeoutMs: number): Promise<URL> {
  let document: unknown;
  try {
    // No redirects, as jose fetches the JWKS: the configured issuer is the one that is trusted.
    const response = await fetch(discoveryUrl(issuer), {
      signal: AbortSignal.timeout(timeoutMs),
      redirect: 'manual',
      headers: { accept: 'application/json' },
    });
    if (response.status !== 200) {
      await response.body?.cancel();
      throw new Error(`HTTP ${response.status} from ${discoveryUrl(issuer)}`);
    }
    document = await response.json();
  } catch (error) {
    throw keysUnavailable(error);
  }
  if (!isRecord(document)) throw keysUnavailable(new Error('the discovery document is not a JSON object'));
  // OpenID Connect Discovery 1.0 §4.3: a document naming another issuer must not be used.
  if (document.issuer !== issuer)
    throw new FStoreError(
      'unavailable',
      "JWT bearer token: the issuer's discovery document names another issuer (set the JWKS URL explicitly if this is intended)",
    );
  const jwksUri = document.jwks_uri;
  if (typeof jwksUri === 'string')
    try {
      const url = new URL(jwksUri);
      if (url.protocol === 'https:' || url.protocol === 'http:') return url;
    } catch {
      // refused below
    }
  throw new FStoreError(
    'unavailable',
    "JWT bearer token: the issuer's discovery document has no valid jwks_uri",
  );
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

function claimAt(payload: JWTPayload, path: string): unknown {
  if (Object.hasOwn(payload, path)) return payload[path];
  let value: unknown = payload;
  for (const part of path.split('.')) {
    // Own properties only: a path such as `__proto__.x` must not reach Object.prototype.
    if (!isRecord(value) || !Object.hasOwn(value, part)) return undefined;
    value = value[part];
  }
  return value;
}

function roleValues(claim: unknown): string[] {
  if (typeof claim === 'string') return claim.split(/[\s,]+/).filter((value) => value !== '');
  if (!Array.isArray(claim)) return [];
  const values: string[] = [];
  for (const item of claim) if (typeof item === 'string' && item.trim() !== '') values.push(item.trim());
  return values;
}

/** A jose error as a refusal naming the failed check (never a value from the token). */
function refusal(error: unknown, token: string): FStoreError {
  if (error instanceof FStoreError) return error;
  if (error instanceof errors.JWTExpired) return refused('expired');
  if (error instanceof errors.JWTClaimValidationFailed) {
    const missing = error.reason === 'missing';
    switch (error.claim) {
      case 'iss':
        return refused(missing ? 'no issuer' : 'wrong issuer');
      case 'aud':
        return refused(missing ? 'no audience' : 'wrong audience');
      case 'exp':
        return refused(missing ? 'no expiry (exp)' : 'invalid expiry (exp)');
      case 'nbf':
        return refused(error.reason === 'check_failed' ? 'not yet valid' : 'invalid not-before time (nbf)');
      case 'iat':
        return refused('invalid issue time (iat)');
      default:
        return refused('invalid claims');
    }
  }
  if (error instanceof errors.JOSEAlgNotAllowed) {
    const algorithm = algorithmOf(token);
    return refused(
      algorithm && registeredAlgorithms.has(algorithm)
        ? `algorithm ${algorithm} is not allowed`
        : 'algorithm is not allowed',
    );
  }
  if (error instanceof errors.JWSSignatureVerificationFailed) return refused('signature does not verify');
  if (error instanceof errors.JWKSNoMatchingKey) return refused('unknown signing key');
  if (error instanceof errors.JOSENotSupported) return refused('uses an unsupported feature');
  if (error instanceof errors.JWSInvalid || error instanceof errors.JWTInvalid) return refused('malformed');
  // Anything else (a key too short for its algorithm, a bug): refused all the same, without detail.
  return refused('cannot be verified');
}

function algorithmOf(token: string): string | undefined {
  try {
    const { alg } = decodeProtectedHeader(token);
    return typeof alg === 'string' ? alg : undefined;
  } catch {
    return undefined;
  }
}
