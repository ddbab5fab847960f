import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import type { CryptoKey, JWK, JWTPayload } from 'jose';
import { base64url, exportJWK, exportSPKI, generateKeyPair, SignJWT } from 'jose';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { RoleBinding } from '../../src/domain/access.js';
import { FStoreError } from '../../src/domain/errors.js';
import { createJwtVerifier, type JwtVerifierOptions, looksLikeJwt } from '../../src/security/jwt-verifier.js';

/** A local OpenID Connect issuer: discovery document and JWKS, with request counts. */
interface TestIssuer {
  /** The issuer URL (`iss`), without a trailing slash. */
  readonly url: string;
  readonly jwksUrl: string;
  /** The keys served at /jwks.json; replace to rotate. */
  keys: JWK[];
  /** 'error': every request answers 500; 'hang': no request is ever answered. */
  mode: 'ok' | 'error' | 'hang';
  /** The `issuer` of the discovery document (default: `url`). */
  discoveryIssuer: string | undefined;
  readonly requests: { discovery: number; jwks: number; other: number };
  close(): Promise<void>;
}

interface TestKey {
  readonly kid: string;
  readonly alg: string;
  readonly privateKey: CryptoKey;
  readonly publicKey: CryptoKey;
  readonly jwk: JWK;
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

async function startIssuer(keys: readonly TestKey[] = []): Promise<TestIssuer> {
  const server = createServer((request, response) => {
    if (issuer.mode === 'hang') return;
    const path = request.url ?? '';
    if (path === '/.well-known/openid-configuration') issuer.requests.discovery++;
    else if (path === '/jwks.json') issuer.requests.jwks++;
    else issuer.requests.other++;
    if (issuer.mode === 'error') {
      response.writeHead(500).end('down');
      return;
    }
    const body =
      path === '/.well-known/openid-configuration'
        ? { issuer: issuer.discoveryIssuer ?? issuer.url, jwks_uri: issuer.jwksUrl }
        : path === '/jwks.json'
          ? { keys: issuer.keys }
          : undefined;
    if (!body) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;
  const issuer: TestIssuer = {
    url,
    jwksUrl: `${url}/jwks.json`,
    keys: keys.map((key) => key.jwk),
    mode: 'ok',
    discoveryIssuer: undefined,
    requests: { discovery: 0, jwks: 0, other: 0 },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  cleanups.push(() => issuer.close());
  return issuer;
}

async function newKey(kid: string, alg: 'RS256' | 'ES256' = 'RS256'): Promise<TestKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { kid, alg, privateKey, publicKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

const audience = 'fstore';
const nowSeconds = () => Math.floor(Date.now() / 1000);

/** Valid claims for `issuer`, with `overrides` (an undefined value drops the claim). */
const claims = (issuer: TestIssuer, overrides: JWTPayload = {}): JWTPayload => ({
  iss: issuer.url,
  aud: audience,
  sub: 'alice',
  iat: nowSeconds(),
  exp: nowSeconds() + 3600,
  ...overrides,
});

const sign = (key: TestKey, payload: JWTPayload, header: { kid?: string | undefined } = { kid: key.kid }) =>
  new SignJWT(payload).setProtectedHeader({ alg: key.alg, ...header }).sign(key.privateKey);

const encodeJson = (value: unknown) => base64url.encode(JSON.stringify(value));

const bindingTable: Record<string, RoleBinding[]> = {
  'group:fraud-team': [{ role: 'writer', project: 'fraud' }],
  'group:/analysts': [{ role: 'reader', project: 'ads' }],
  'jwt:alice': [{ role: 'reader', project: 'risk' }],
};

function verifierFor(issuer: TestIssuer, options: Partial<JwtVerifierOptions> = {}) {
  return createJwtVerifier({
    issuer: issuer.url,
    audience,
    jwksUrl: issuer.jwksUrl,
    rolesClaim: 'roles',
    clockSkewSeconds: 30,
    lookupBindings: (name) => bindingTable[name] ?? [],
    ...options,
  });
}

/** The FStoreError `promise` rejects with (fails the test if it resolves or throws anything else). */
async function failure(promise: Promise<unknown>): Promise<FStoreError> {
  const outcome = await promise.then(
    () => undefined,
    (error: unknown) => error,
  );
  expect(outcome).toBeInstanceOf(FStoreError);
  return outcome as FStoreError;
}

async function refusal(promise: Promise<unknown>): Promise<string> {
  const error = await failure(promise);
  expect(error.code).toBe('unauthenticated');
  return error.message;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Moves the clock (Date only: sockets and timers keep real time) by `seconds`. */
function advanceClock(seconds: number) {
  const now = Date.now();
  vi.useFakeTimers({ toFake: ['Date'] });
  vi.setSystemTime(now + seconds * 1000);
}

describe('looksLikeJwt', () => {
  it('accepts three base64url parts (the last may be empty) and nothing else', () => {
    expect(looksLikeJwt('eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln-_')).toBe(true);
    expect(looksLikeJwt('eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.')).toBe(true);
    expect(looksLikeJwt('fsk_abcdefghijkl_secret')).toBe(false);
    expect(looksLikeJwt('a.b')).toBe(false);
    expect(looksLikeJwt('a.b.c.d')).toBe(false);
    expect(looksLikeJwt('.b.c')).toBe(false);
    expect(looksLikeJwt('a+b.c.d')).toBe(false);
    expect(looksLikeJwt('a.b.c\n')).toBe(false);
    expect(looksLikeJwt('')).toBe(false);
  });
});

describe('createJwtVerifier options', () => {
  it('refuses symmetric algorithms, none, unknown names and nonsense settings', async () => {
    const issuer = await startIssuer();
    for (const options of [
      { algorithms: ['HS256'] },
      { algorithms: ['none'] },
      { algorithms: ['RS256', 'XX999'] },
      { algorithms: [] },
      { clockSkewSeconds: -1 },
      { clockSkewSeconds: Number.NaN },
      { tokenCacheSize: 1.5 },
      { fetchTimeoutMs: 0 },
      { issuer: '' },
      { audience: '' },
      { rolesClaim: '' },
      { jwksUrl: 'not a url' },
      { jwksUrl: 'file:///etc/jwks.json' },
      { jwksUrl: undefined, issuer: 'urn:not-http' },
    ] satisfies Partial<JwtVerifierOptions>[]) {
      let thrown: unknown;
      try {
        verifierFor(issuer, options);
      } catch (error) {
        thrown = error;
      }
      expect(thrown, JSON.stringify(options)).toBeInstanceOf(FStoreError);
      expect((thrown as FStoreError).code).toBe('invalid_argument');
    }
  });
});

describe('JwtVerifier', () => {
  it('accepts a valid token: bindings from role@project values, group lookups and the subject', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer);
    const token = await sign(
      key,
      claims(issuer, { roles: ['reader@fraud', 'admin@*', 'fraud-team', 'nobody', 42, 'reader@fraud'] }),
    );
    expect(await verifier.verify(token)).toEqual({
      id: 'jwt:alice',
      method: 'jwt',
      bindings: [
        { role: 'reader', project: 'fraud' },
        { role: 'admin', project: '*' },
        { role: 'writer', project: 'fraud' },
        { role: 'reader', project: 'risk' },
      ],
    });
  });

  it('reads a dotted claim path, a space/comma separated string, and a claim named with dots', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const nested = verifierFor(issuer, { rolesClaim: 'realm_access.roles' });
    const nestedToken = await sign(
      key,
      claims(issuer, { realm_access: { roles: ['/analysts', 'writer@ads'] } }),
    );
    expect((await nested.verify(nestedToken)).bindings).toEqual([
      { role: 'reader', project: 'ads' },
      { role: 'writer', project: 'ads' },
      { role: 'reader', project: 'risk' },
    ]);

    const spaced = verifierFor(issuer, { rolesClaim: 'scope' });
    const spacedToken = await sign(
      key,
      claims(issuer, { sub: 'bob', scope: 'openid reader@a,writer@b  fraud-team' }),
    );
    expect(await spaced.verify(spacedToken)).toEqual({
      id: 'jwt:bob',
      method: 'jwt',
      bindings: [
        { role: 'reader', project: 'a' },
        { role: 'writer', project: 'b' },
        { role: 'writer', project: 'fraud' },
      ],
    });

    const namespaced = verifierFor(issuer, { rolesClaim: 'https://fstore.example/roles' });
    const namespacedToken = await sign(
      key,
      claims(issuer, { sub: 'carol', 'https://fstore.example/roles': ['admin@x'] }),
    );
    expect((await namespaced.verify(namespacedToken)).bindings).toEqual([{ role: 'admin', project: 'x' }]);

    // A path through a non-object or the prototype finds nothing (and grants nothing).
    const prototype = verifierFor(issuer, { rolesClaim: '__proto__.roles' });
    const plain = await sign(key, claims(issuer, { sub: 'dave', roles: ['admin@*'] }));
    expect((await prototype.verify(plain)).bindings).toEqual([]);
  });

  it('accepts an audience array containing the audience, and refuses one without it', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer);
    expect((await verifier.verify(await sign(key, claims(issuer, { aud: ['other', audience] })))).id).toBe(
      'jwt:alice',
    );
    expect(await refusal(verifier.verify(await sign(key, claims(issuer, { aud: ['other', 'x'] }))))).toBe(
      'JWT bearer token: wrong audience',
    );
  });

  it('refuses an expired token, and a token not yet valid', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer, { clockSkewSeconds: 30 });
    const expired = await sign(key, claims(issuer, { iat: nowSeconds() - 3600, exp: nowSeconds() - 31 }));
    expect(await refusal(verifier.verify(expired))).toBe('JWT bearer token: expired');
    const early = await sign(key, claims(issuer, { nbf: nowSeconds() + 60 }));
    expect(await refusal(verifier.verify(early))).toBe('JWT bearer token: not yet valid');
    const future = await sign(key, claims(issuer, { iat: nowSeconds() + 60 }));
    expect(await refusal(verifier.verify(future))).toBe('JWT bearer token: issued in the future');
    const noExpiry = await sign(key, claims(issuer, { exp: undefined }));
    expect(await refusal(verifier.verify(noExpiry))).toBe('JWT bearer token: no expiry (exp)');
  });

  it('accepts exp, nbf and iat within the clock skew', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer, { clockSkewSeconds: 30 });
    const token = await sign(
      key,
      claims(issuer, { exp: nowSeconds() - 10, nbf: nowSeconds() + 10, iat: nowSeconds() + 10 }),
    );
    expect((await verifier.verify(token)).id).toBe('jwt:alice');
    // The same token without the skew is refused.
    expect(await refusal(verifierFor(issuer, { clockSkewSeconds: 0 }).verify(token))).toBe(
      'JWT bearer token: not yet valid',
    );
  });

  it('refuses a wrong or missing issuer and a missing audience', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer);
    expect(await refusal(verifier.verify(await sign(key, claims(issuer, { iss: `${issuer.url}/` }))))).toBe(
      'JWT bearer token: wrong issuer',
    );
    expect(await refusal(verifier.verify(await sign(key, claims(issuer, { iss: undefined }))))).toBe(
      'JWT bearer token: no issuer',
    );
    expect(await refusal(verifier.verify(await sign(key, claims(issuer, { aud: 'other' }))))).toBe(
      'JWT bearer token: wrong audience',
    );
    expect(await refusal(verifier.verify(await sign(key, claims(issuer, { aud: undefined }))))).toBe(
      'JWT bearer token: no audience',
    );
  });

  it('refuses a token without a usable subject', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer);
    for (const sub of [undefined, '', 42])
      expect(await refusal(verifier.verify(await sign(key, claims(issuer, { sub: sub as string }))))).toBe(
        'JWT bearer token: no subject',
      );
    for (const sub of ['a'.repeat(256), 'alice\nadmin'])
      expect(await refusal(verifier.verify(await sign(key, claims(issuer, { sub }))))).toBe(
        'JWT bearer token: invalid subject',
      );
  });

  it('refuses an unknown kid, then accepts the rotated key without a restart', async () => {
    const oldKey = await newKey('old');
    const newer = await newKey('new');
    const issuer = await startIssuer([oldKey]);
    const verifier = verifierFor(issuer);
    expect((await verifier.verify(await sign(oldKey, claims(issuer)))).id).toBe('jwt:alice');
    expect(issuer.requests.jwks).toBe(1);

    const rotated = await sign(newer, claims(issuer, { sub: 'bob' }));
    expect(await refusal(verifier.verify(rotated))).toBe('JWT bearer token: unknown signing key');

    issuer.keys = [newer.jwk]; // the issuer rotates
    await sleep(1_100); // past the one-second cooldown after the last fetch
    expect((await verifier.verify(rotated)).id).toBe('jwt:bob');
    expect(issuer.requests.jwks).toBe(2);
    // The old key is gone from the set (a token it signs and that is not cached is refused).
    expect(await refusal(verifier.verify(await sign(oldKey, claims(issuer, { sub: 'carol' }))))).toBe(
      'JWT bearer token: unknown signing key',
    );
  });

  it('tries every key that fits a token without kid', async () => {
    const first = await newKey('a');
    const second = await newKey('b');
    const stranger = await newKey('c');
    const issuer = await startIssuer();
    issuer.keys = [first, second].map(({ jwk }) => ({ ...jwk, kid: undefined }));
    const verifier = verifierFor(issuer);
    expect((await verifier.verify(await sign(second, claims(issuer), {}))).id).toBe('jwt:alice');
    expect(await refusal(verifier.verify(await sign(stranger, claims(issuer), {})))).toBe(
      'JWT bearer token: signature does not verify',
    );
  });

  it('refuses alg none, in any spelling', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer);
    const payload = encodeJson(claims(issuer, { roles: ['admin@*'] }));
    expect(await refusal(verifier.verify(`${encodeJson({ alg: 'none', typ: 'JWT' })}.${payload}.`))).toBe(
      'JWT bearer token: algorithm none is not allowed',
    );
    expect(
      await refusal(verifier.verify(`${encodeJson({ alg: 'none', kid: key.kid })}.${payload}.c2ln`)),
    ).toBe('JWT bearer token: algorithm none is not allowed');
    // An unregistered name is not repeated back.
    expect(await refusal(verifier.verify(`${encodeJson({ alg: 'NoNe' })}.${payload}.`))).toBe(
      'JWT bearer token: algorithm is not allowed',
    );
    expect(issuer.requests.jwks).toBe(0);
  });

  it('refuses HS256 signed with the RSA public key as the HMAC secret (algorithm confusion)', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer);
    const pem = await exportSPKI(key.publicKey);
    const forged = await new SignJWT(claims(issuer, { roles: ['admin@*'] }))
      .setProtectedHeader({ alg: 'HS256', kid: key.kid })
      .sign(new TextEncoder().encode(pem));
    expect(await refusal(verifier.verify(forged))).toBe('JWT bearer token: algorithm HS256 is not allowed');
  });

  it('accepts only the configured algorithms', async () => {
    const rsa = await newKey('rsa');
    const ec = await newKey('ec', 'ES256');
    const issuer = await startIssuer([rsa, ec]);
    const verifier = verifierFor(issuer, { algorithms: ['ES256'] });
    expect((await verifier.verify(await sign(ec, claims(issuer)))).id).toBe('jwt:alice');
    expect(await refusal(verifier.verify(await sign(rsa, claims(issuer))))).toBe(
      'JWT bearer token: algorithm RS256 is not allowed',
    );
  });

  it('refuses a tampered payload or signature', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer);
    const [header, , signature] = (await sign(key, claims(issuer))).split('.');
    const tampered = `${header}.${encodeJson(claims(issuer, { roles: ['admin@*'] }))}.${signature}`;
    expect(await refusal(verifier.verify(tampered))).toBe('JWT bearer token: signature does not verify');
    const token = await sign(key, claims(issuer));
    const flipped = `${token.slice(0, -2)}${token.endsWith('AA') ? 'BB' : 'AA'}`;
    expect(await refusal(verifier.verify(flipped))).toBe('JWT bearer token: signature does not verify');
  });

  it('never repeats token contents or claim values in a refusal', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer);
    const secret = 'SECRET-VALUE-7f3a';
    for (const overrides of [
      { iss: secret },
      { aud: secret },
      { sub: `${secret}\n` },
      { exp: nowSeconds() - 100, jti: secret },
    ]) {
      const message = await refusal(verifier.verify(await sign(key, claims(issuer, overrides))));
      expect(message).toMatch(/^JWT bearer token: /);
      expect(message).not.toContain(secret);
    }
    const message = await refusal(verifier.verify(`${encodeJson({ alg: secret })}.${encodeJson({})}.`));
    expect(message).toBe('JWT bearer token: algorithm is not allowed');
  });

  it('refuses garbage as unauthenticated and never throws anything else', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer);
    const valid = await sign(key, claims(issuer));
    const expectRefused = async (token: string) => {
      const message = await refusal(verifier.verify(token));
      expect(message).toMatch(/^JWT bearer token: [A-Za-z0-9 ()-]+$/);
    };

    for (const token of [
      '',
      '...',
      'a'.repeat(1_000_000),
      `${'e'.repeat(20_000)}.e.e`,
      `${valid}.`,
      `${encodeJson({ alg: 'RS256', kid: key.kid })}.bm90IGpzb24.c2ln`, // payload "not json"
      `${base64url.encode('not json')}.${encodeJson({})}.c2ln`,
      `${encodeJson([1, 2])}.${encodeJson({})}.c2ln`,
      `${encodeJson({ alg: 'RS256', crit: ['x'], x: 1 })}.${encodeJson({})}.c2ln`,
      `${encodeJson({ alg: 'RS256', kid: key.kid, b64: false, crit: ['b64'] })}.${encodeJson({})}.c2ln`,
      `${encodeJson({ alg: 'RS256', kid: { a: 1 } })}.${encodeJson({})}.c2ln`,
      `${encodeJson({ alg: 42 })}.${encodeJson({})}.c2ln`,
    ])
      await expectRefused(token);

    const part = fc.oneof(
      fc.uint8Array({ maxLength: 64 }).map((bytes) => base64url.encode(bytes)),
      fc.json().map((json) => base64url.encode(json)),
      fc.string({ maxLength: 20 }),
      fc
        .record(
          { alg: fc.constantFrom('RS256', 'ES256', 'HS256', 'none', 'PS512'), kid: fc.string() },
          {
            requiredKeys: ['alg'],
          },
        )
        .map(encodeJson),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.string({ unit: 'binary', maxLength: 200 }),
          fc.tuple(part, part, part).map((parts) => parts.join('.')),
          // A valid token with one character changed, the last excepted: some of its bits are padding,
          // so another character there may decode to the same signature (base64 malleability).
          fc
            .tuple(fc.nat({ max: valid.length - 2 }), fc.constantFrom('A', 'z', '-', '.', '='))
            .map(([at, character]) => `${valid.slice(0, at)}${character}${valid.slice(at + 1)}`)
            .filter((token) => token !== valid),
        ),
        async (token) => expectRefused(token),
      ),
      { numRuns: 300 },
    );
  });

  it('refuses tokens over 16 KiB before parsing them', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer);
    const big = await sign(key, claims(issuer, { padding: 'x'.repeat(17_000) }));
    expect(await refusal(verifier.verify(big))).toBe('JWT bearer token: malformed');
    expect(issuer.requests.jwks).toBe(0);
  });

  it('fails UNAVAILABLE when the JWKS endpoint is down, errs or hangs', async () => {
    const key = await newKey('k1');
    const message = "JWT bearer token: the issuer's keys (JWKS) cannot be fetched";

    const closed = await startIssuer([key]);
    const token = await sign(key, claims(closed));
    await closed.close();
    const down = await failure(verifierFor(closed).verify(token));
    expect([down.code, down.message]).toEqual(['unavailable', message]);

    const erring = await startIssuer([key]);
    erring.mode = 'error';
    const error = await failure(verifierFor(erring).verify(await sign(key, claims(erring))));
    expect([error.code, error.message]).toEqual(['unavailable', message]);
    expect(erring.requests.jwks).toBe(1);

    const hanging = await startIssuer([key]);
    hanging.mode = 'hang';
    const started = Date.now();
    const timeout = await failure(
      verifierFor(hanging, { fetchTimeoutMs: 200 }).verify(await sign(key, claims(hanging))),
    );
    expect([timeout.code, timeout.message]).toEqual(['unavailable', message]);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('serves a verified token from the cache without verifying it again', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer);
    const token = await sign(key, claims(issuer, { roles: ['reader@fraud'] }));
    const first = await verifier.verify(token);
    expect(issuer.requests.jwks).toBe(1);

    // Eleven minutes on, jose's copy of the keys is stale, and the issuer serves no key any more:
    // only a token that is not verified again can still pass.
    issuer.keys = [];
    advanceClock(11 * 60);
    expect(await verifier.verify(token)).toBe(first);
    expect(issuer.requests.jwks).toBe(1);

    // Control: another token of the same key does need the keys, and is refused.
    const other = await sign(key, claims(issuer, { sub: 'bob' }));
    expect(await refusal(verifier.verify(other))).toBe('JWT bearer token: unknown signing key');
    expect(issuer.requests.jwks).toBe(2);
  });

  it('verifies a cached token again once it is past exp plus skew, and refuses it', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer, { clockSkewSeconds: 5 });
    const token = await sign(key, claims(issuer, { exp: nowSeconds() + 60 }));
    await verifier.verify(token);
    advanceClock(63); // past exp, within the skew: still cached
    expect((await verifier.verify(token)).id).toBe('jwt:alice');
    expect(issuer.requests.jwks).toBe(1);
    advanceClock(5); // past exp + skew
    expect(await refusal(verifier.verify(token))).toBe('JWT bearer token: expired');
  });

  it('keeps at most tokenCacheSize tokens, dropping the least recently used', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer, { tokenCacheSize: 2 });
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((sub) => sign(key, claims(issuer, { sub }))));
    await verifier.verify(a as string);
    await verifier.verify(b as string);
    await verifier.verify(a as string); // a is now the most recently used
    await verifier.verify(c as string); // drops b
    issuer.keys = [];
    advanceClock(11 * 60); // stale keys, none served: only cached tokens pass
    expect((await verifier.verify(a as string)).id).toBe('jwt:a');
    expect((await verifier.verify(c as string)).id).toBe('jwt:c');
    expect(await refusal(verifier.verify(b as string))).toBe('JWT bearer token: unknown signing key');

    // Without a cache every token is verified every time.
    const uncached = verifierFor(issuer, { tokenCacheSize: 0 });
    issuer.keys = [key.jwk];
    const token = await sign(key, claims(issuer));
    await uncached.verify(token);
    issuer.keys = [];
    advanceClock(11 * 60);
    expect(await refusal(uncached.verify(token))).toBe('JWT bearer token: unknown signing key');
  });

  it('finds the JWKS through discovery, once, from an issuer with or without a trailing slash', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer, { jwksUrl: undefined });
    expect((await verifier.verify(await sign(key, claims(issuer)))).id).toBe('jwt:alice');
    expect((await verifier.verify(await sign(key, claims(issuer, { sub: 'bob' })))).id).toBe('jwt:bob');
    expect(issuer.requests).toEqual({ discovery: 1, jwks: 1, other: 0 });

    const slashed = await startIssuer([key]);
    slashed.discoveryIssuer = `${slashed.url}/`;
    const slashedVerifier = verifierFor(slashed, { issuer: `${slashed.url}/`, jwksUrl: undefined });
    const token = await sign(key, claims(slashed, { iss: `${slashed.url}/` }));
    expect((await slashedVerifier.verify(token)).id).toBe('jwt:alice');
    expect(slashed.requests).toEqual({ discovery: 1, jwks: 1, other: 0 });
  });

  it('retries a failed discovery, and refuses a discovery document naming another issuer', async () => {
    const key = await newKey('k1');
    const issuer = await startIssuer([key]);
    const verifier = verifierFor(issuer, { jwksUrl: undefined });
    issuer.mode = 'error';
    const down = await failure(verifier.verify(await sign(key, claims(issuer))));
    expect([down.code, down.message]).toEqual([
      'unavailable',
      "JWT bearer token: the issuer's keys (JWKS) cannot be fetched",
    ]);
    issuer.mode = 'ok';
    expect((await verifier.verify(await sign(key, claims(issuer)))).id).toBe('jwt:alice');
    expect(issuer.requests.discovery).toBe(2);

    const mixedUp = await startIssuer([key]);
    mixedUp.discoveryIssuer = 'https://elsewhere.example';
    const error = await failure(
      verifierFor(mixedUp, { jwksUrl: undefined }).verify(await sign(key, claims(mixedUp))),
    );
    expect(error.code).toBe('unavailable');
    expect(error.message).toMatch(/discovery document names another issuer/);
    expect(mixedUp.requests.jwks).toBe(0);
  });
});
