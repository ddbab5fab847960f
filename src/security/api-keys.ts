import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * API key format: `fsk_<id>_<secret>`. The id (12 base32 characters, 60 random bits) is public:
 * it names the key in lists and the audit log and finds its row; the secret (32 random bytes,
 * base64url) is shown once and only its SHA-256 is stored. The `fsk_` prefix lets secret
 * scanners find leaked keys and tells keys from JWTs in `authorization: Bearer`.
 */

export const apiKeyPrefix = 'fsk_';
const idAlphabet = 'abcdefghijklmnopqrstuvwxyz234567';
const idLength = 12;
const keyPattern = /^fsk_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$/;

export interface GeneratedApiKey {
  readonly id: string;
  /** The whole key, `fsk_<id>_<secret>`: give it to the user once, store only `secretHash`. */
  readonly key: string;
  readonly secretHash: Buffer;
}

export function generateApiKey(): GeneratedApiKey {
  const idBytes = randomBytes(idLength);
  let id = '';
  for (const byte of idBytes) id += idAlphabet[byte & 31];
  const secret = randomBytes(32).toString('base64url');
  return { id, key: `${apiKeyPrefix}${id}_${secret}`, secretHash: hashSecret(secret) };
}

export const hashSecret = (secret: string): Buffer => createHash('sha256').update(secret).digest();

/** The id and secret of a well-formed key, or undefined. */
export function parseApiKey(key: string): { id: string; secret: string } | undefined {
  const match = keyPattern.exec(key);
  return match ? { id: match[1] as string, secret: match[2] as string } : undefined;
}

export const looksLikeApiKey = (credential: string): boolean => credential.startsWith(apiKeyPrefix);

/** Constant-time comparison of a presented secret with a stored hash. */
export function secretMatches(secret: string, storedHash: Uint8Array): boolean {
  const presented = hashSecret(secret);
  return presented.length === storedHash.length && timingSafeEqual(presented, storedHash);
}
