/**
 * What admitting one call costs, measured in-process where the noise of a loaded 2-core machine
 * cannot hide it: the call gate's `open` (authentication) + `admit` (permission, rate limits) +
 * `finish`, per mode, on the request of a batch-1 GetOnlineFeatures. Compare with the server CPU
 * per call of bench/run-security.sh (about 240 µs at batch 1 × 10 here).
 *
 *   eval "$(bash scripts/servers.sh env)"; node --import tsx bench/gate-cost.ts [--calls 200000]
 *
 * Modes: off (anonymous), keys (API key, real key table in PostgreSQL), jwt (a verified token from
 * the per-token cache; a local issuer), ratelimit (Redis leases, limits far above the load).
 */
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { Metadata } from '@grpc/grpc-js';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { createPostgresApiKeyStore } from '../src/adapters/postgres/postgres-api-key-store.js';
import { createRedisRateLimiter } from '../src/adapters/redis/redis-rate-limiter.js';
import { createCallGate } from '../src/grpc/call-gate.js';
import type { CallGate } from '../src/grpc/server.js';
import { createApiKeyVerifier } from '../src/security/api-key-verifier.js';
import { createAuthenticator } from '../src/security/authenticator.js';
import { createJwtVerifier } from '../src/security/jwt-verifier.js';
import { AccessAdmin } from '../src/serving/access-admin.js';

const { values } = parseArgs({ options: { calls: { type: 'string', default: '200000' } } });
const calls = Number(values.calls);
const postgresUrl = process.env.FSTORE_TEST_POSTGRES_URL;
const redisUrl = process.env.FSTORE_TEST_REDIS_URL;
if (!postgresUrl || !redisUrl) throw new Error('eval "$(bash scripts/servers.sh env)" first');

const method = 'fstore.v1.FeatureService/GetOnlineFeatures';
const request = {
  project: 'bench',
  features: ['bench10:f0'],
  entities: { user_id: { values: { case: 'stringValues', value: { values: ['u1'] } } } },
};
const callOf = (metadata: Metadata) => ({ metadata, getAuthContext: () => ({}) });

async function measure(name: string, gate: CallGate, metadata: Metadata): Promise<number> {
  const call = callOf(metadata);
  const once = async () => {
    const admission = await gate.open(method, call, 'bench');
    await admission.admit(request);
    admission.finish(undefined);
  };
  for (let index = 0; index < 20_000; index++) await once(); // JIT, caches, leases
  const started = process.cpuUsage();
  const wall = performance.now();
  for (let index = 0; index < calls; index++) await once();
  const cpu = process.cpuUsage(started);
  const micros = (cpu.user + cpu.system) / calls;
  console.log(
    `${name.padEnd(10)} ${micros.toFixed(2).padStart(7)} µs CPU per call  (${(((performance.now() - wall) * 1000) / calls).toFixed(2)} µs wall)`,
  );
  return micros;
}

const schema = `gate_bench_${Date.now().toString(36)}`;
const store = await createPostgresApiKeyStore({ connectionString: postgresUrl, schema, poolSize: 1 });
const keys = await createApiKeyVerifier(store);
const created = await new AccessAdmin(store, undefined, () => keys.reload()).createKey(
  { id: 'bench', method: 'none', bindings: [{ role: 'admin', project: '*' }] },
  { name: 'gate bench', bindings: [{ role: 'reader', project: 'bench' }], expiresAt: undefined },
);

const { publicKey, privateKey } = await generateKeyPair('RS256');
const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
const issuerServer = createServer((_request, response) =>
  response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] })),
);
await new Promise<void>((resolve) => issuerServer.listen(0, '127.0.0.1', resolve));
const port = (issuerServer.address() as { port: number }).port;
const issuer = `http://127.0.0.1:${port}/`;
const token = await new SignJWT({ roles: ['reader@bench'] })
  .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
  .setIssuer(issuer)
  .setAudience('fstore')
  .setSubject('bench')
  .setIssuedAt()
  .setExpirationTime('2h')
  .sign(privateKey);
const jwt = createJwtVerifier({
  issuer,
  audience: 'fstore',
  jwksUrl: `${issuer}jwks.json`,
  rolesClaim: 'roles',
  clockSkewSeconds: 30,
  lookupBindings: () => [],
});
const authenticator = createAuthenticator({ apiKeys: keys, jwt, lookupBindings: () => [] });
const limiter = createRedisRateLimiter({
  url: redisUrl,
  keyPrefix: `gate-bench-${Date.now().toString(36)}:`,
  limits: {
    requestsPerSecond: 10_000_000,
    requestBurst: 10_000_000,
    rowsPerSecond: 10_000_000,
    rowBurst: 10_000_000,
  },
});
const bearer = (credential: string) => {
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${credential}`);
  return metadata;
};

console.log(
  `call gate cost, ${calls} calls per mode (batch-1 GetOnlineFeatures request), node ${process.version}`,
);
const off = await measure('off', createCallGate({}), new Metadata());
const results = {
  keys: await measure('keys', createCallGate({ authenticator }), bearer(created.key)),
  jwt: await measure('jwt', createCallGate({ authenticator }), bearer(token)),
  ratelimit: await measure('ratelimit', createCallGate({ rateLimiter: limiter }), new Metadata()),
};
for (const [name, micros] of Object.entries(results))
  console.log(`${name}: +${(micros - off).toFixed(2)} µs per call over off`);

await limiter.close();
await keys.stop();
await store.close();
issuerServer.close();
const pg = (await import('pg')).default;
const client = new pg.Client({ connectionString: postgresUrl });
await client.connect();
await client.query(`DROP SCHEMA "${schema}" CASCADE`);
await client.end();
