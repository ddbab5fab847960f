/**
 * A tiny OpenID Connect issuer for bench/run-security.sh: generates an RS256 key pair, serves
 * the discovery document and the JWKS over plain HTTP on loopback, writes ONE signed token to a
 * file, and keeps serving (counting what it was asked) until killed.
 *
 *   node --import tsx bench/jwt-issuer.ts [--port 4320] [--project bench] [--audience fstore-bench]
 *     [--token-file token.txt] [--stats-file issuer.json] [--subject bench] [--roles-claim roles]
 *     [--ttl-seconds 7200]
 *
 * The issuer is `http://127.0.0.1:<port>` exactly (no trailing slash): give FStore the same
 * string as FSTORE_JWT_ISSUER, since both the discovery document's `issuer` and the token's `iss`
 * must equal it. The token: header {alg: RS256, kid}, claims iss, aud, sub, iat, exp (now +
 * ttl, default 2 h), and `<roles-claim>: ["reader@<project>"]`. It is written (mode 0600, by a
 * rename, so a reader never sees half of it) only once the port listens: the token file's
 * existence means the issuer is ready. Routes: GET /.well-known/openid-configuration, GET /jwks;
 * anything else 404. SIGTERM writes the request counts to --stats-file (and stdout) and exits.
 */
import { renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';

const { values: flags } = parseArgs({
  options: {
    port: { type: 'string' },
    project: { type: 'string' },
    audience: { type: 'string' },
    'token-file': { type: 'string' },
    'stats-file': { type: 'string' },
    subject: { type: 'string' },
    'roles-claim': { type: 'string' },
    'ttl-seconds': { type: 'string' },
  },
});

const port = Number(flags.port ?? 4320);
if (!Number.isInteger(port) || port < 1 || port > 65_535)
  throw new Error(`--port: ${flags.port} is not a port`);
const project = flags.project ?? 'bench';
const audience = flags.audience ?? 'fstore-bench';
const tokenFile = flags['token-file'] ?? 'token.txt';
const subject = flags.subject ?? 'bench';
const rolesClaim = flags['roles-claim'] ?? 'roles';
const ttlSeconds = Number(flags['ttl-seconds'] ?? 7_200);
if (!Number.isInteger(ttlSeconds) || ttlSeconds < 60)
  throw new Error('--ttl-seconds: a whole number, 60 or more');
const issuer = `http://127.0.0.1:${port}`;
const kid = `bench-${Date.now().toString(36)}`;

const { publicKey, privateKey } = await generateKeyPair('RS256');
const jwks = JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' }] });
const discovery = JSON.stringify({
  issuer,
  jwks_uri: `${issuer}/jwks`,
  id_token_signing_alg_values_supported: ['RS256'],
  response_types_supported: ['id_token'],
  subject_types_supported: ['public'],
});
const now = Math.floor(Date.now() / 1000);
const token = await new SignJWT({ [rolesClaim]: [`reader@${project}`] })
  .setProtectedHeader({ alg: 'RS256', kid, typ: 'JWT' })
  .setIssuer(issuer)
  .setAudience(audience)
  .setSubject(subject)
  .setIssuedAt(now)
  .setExpirationTime(now + ttlSeconds)
  .sign(privateKey);

const counts = { discovery: 0, jwks: 0, other: 0 };
const server = createServer((request, response) => {
  const path = (request.url ?? '').split('?')[0];
  if (request.method === 'GET' && path === '/.well-known/openid-configuration') {
    counts.discovery++;
    response.writeHead(200, { 'content-type': 'application/json' }).end(discovery);
  } else if (request.method === 'GET' && path === '/jwks') {
    counts.jwks++;
    response.writeHead(200, { 'content-type': 'application/jwk-set+json' }).end(jwks);
  } else {
    counts.other++;
    response.writeHead(404).end();
  }
});
server.listen(port, '127.0.0.1', () => {
  writeFileSync(`${tokenFile}.tmp`, token, { mode: 0o600 });
  renameSync(`${tokenFile}.tmp`, tokenFile);
  console.log(
    JSON.stringify({
      issuer,
      audience,
      kid,
      subject,
      roles: [`reader@${project}`],
      expiresAt: now + ttlSeconds,
    }),
  );
});
process.on('SIGTERM', () => {
  const text = JSON.stringify({ issuer, ...counts });
  if (flags['stats-file']) writeFileSync(flags['stats-file'], text);
  console.log(text);
  process.exit(0);
});
