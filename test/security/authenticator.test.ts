import { Metadata } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import type { Principal } from '../../src/domain/access.js';
import { FStoreError } from '../../src/domain/errors.js';
import type { ApiKeyVerifier } from '../../src/security/api-key-verifier.js';
import { generateApiKey, parseApiKey, secretMatches } from '../../src/security/api-keys.js';
import { createAuthenticator } from '../../src/security/authenticator.js';

const keyPrincipal: Principal = {
  id: 'key:k',
  method: 'api_key',
  bindings: [{ role: 'reader', project: 'p' }],
};
const jwtPrincipal: Principal = { id: 'jwt:alice', method: 'jwt', bindings: [] };
const apiKeys: ApiKeyVerifier = {
  verify: (key) => {
    if (key.endsWith('good')) return keyPrincipal;
    throw new FStoreError('unauthenticated', 'API key: unknown key or wrong secret');
  },
  reload: async () => {},
  stop: async () => {},
};
const authenticator = createAuthenticator({
  apiKeys,
  jwt: { verify: async () => jwtPrincipal },
  certificates: { names: (certificate) => [`cert:${certificate.subject.CN}`] },
  lookupBindings: (name) => (name === 'cert:scorer' ? [{ role: 'reader', project: 'fraud' }] : []),
});

const metadataOf = (entries: [string, string][]) => {
  const metadata = new Metadata();
  for (const [key, value] of entries) metadata.add(key, value);
  return metadata;
};

async function refusal(entries: [string, string][]): Promise<string> {
  try {
    await authenticator.authenticate(metadataOf(entries), undefined);
  } catch (error) {
    expect((error as FStoreError).code).toBe('unauthenticated');
    return (error as FStoreError).message;
  }
  throw new Error('not refused');
}

describe('authenticator', () => {
  it('takes an API key from authorization: Bearer or x-api-key, and a JWT otherwise', async () => {
    expect(
      await authenticator.authenticate(metadataOf([['authorization', 'Bearer fsk_good']]), undefined),
    ).toBe(keyPrincipal);
    expect(await authenticator.authenticate(metadataOf([['x-api-key', 'fsk_good']]), undefined)).toBe(
      keyPrincipal,
    );
    expect(await authenticator.authenticate(metadataOf([['authorization', 'bearer a.b.c']]), undefined)).toBe(
      jwtPrincipal,
    );
  });

  it('says what is wrong without echoing the credential', async () => {
    expect(await refusal([])).toMatch(/^no credentials/);
    expect(await refusal([['authorization', 'Basic c2VjcmV0LXh5eg==']])).toMatch(/expected "Bearer/);
    expect(
      await refusal([
        ['authorization', 'Bearer fsk_a'],
        ['authorization', 'Bearer fsk_b'],
      ]),
    ).toMatch(/several/);
    expect(
      await refusal([
        ['authorization', 'Bearer fsk_a'],
        ['x-api-key', 'fsk_b'],
      ]),
    ).toMatch(/both/);
    expect(await refusal([['x-api-key', 'secret-xyz']])).not.toContain('secret-xyz');
  });

  it('makes a verified client certificate a principal with its configured bindings', async () => {
    const principal = await authenticator.authenticate(metadataOf([]), {
      subject: { CN: 'scorer' },
    } as never);
    expect(principal).toEqual({
      id: 'cert:scorer',
      method: 'certificate',
      bindings: [{ role: 'reader', project: 'fraud' }],
    });
  });
});

describe('API key format', () => {
  it('generates fsk_<id>_<secret> keys whose secret matches only its own hash', () => {
    const a = generateApiKey();
    const b = generateApiKey();
    const parsedA = parseApiKey(a.key);
    expect(parsedA?.id).toBe(a.id);
    expect(a.key).toMatch(/^fsk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}$/);
    expect(secretMatches(parsedA?.secret ?? '', a.secretHash)).toBe(true);
    expect(secretMatches(parsedA?.secret ?? '', b.secretHash)).toBe(false);
    expect(parseApiKey(`${a.key}x`)).toBeUndefined();
  });
});
