import { X509Certificate } from 'node:crypto';
import { copyFile, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { connect, type PeerCertificate, type TLSSocket } from 'node:tls';
import {
  type ChannelCredentials,
  Client,
  credentials,
  loadPackageDefinition,
  Server,
  type ServerCredentials,
  type ServerUnaryCall,
  type ServiceClientConstructor,
  type ServiceError,
  type sendUnaryData,
  status,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { HealthImplementation, protoPath as healthProtoPath } from 'grpc-health-check';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FStoreError } from '../../src/domain/errors.js';
import {
  certificatePrincipalNames,
  createChannelCredentials,
  createServerCredentials,
  type ReloadingServerCredentials,
  type TlsFiles,
} from '../../src/grpc/tls.js';
import { startMetricsServer } from '../../src/observability/http.js';
import { type CertificatePair, createTestPki, type TestPki } from '../support/test-certificates.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` until `accept` holds (errors count as values), or fails after timeoutMs. */
async function eventually<T>(
  probe: () => Promise<T>,
  accept: (value: T) => boolean,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch((error: unknown) => error as T);
    if (accept(value)) return value;
    if (Date.now() > deadline)
      throw new Error(`condition not met within ${timeoutMs} ms; last: ${String(value)}`);
    await sleep(50);
  }
}

/** Replaces a file the way a deployment should: write a temp file beside it, then rename. */
async function replaceByRename(source: string, target: string): Promise<void> {
  const temporary = `${target}.tmp-${process.pid}`;
  await copyFile(source, temporary);
  await rename(temporary, target);
}

const serialOf = async (path: string) => new X509Certificate(await readFile(path)).serialNumber;

// A tiny service that says what the transport told the handler about the caller.
interface WhoAmI {
  readonly transportSecurityType: string | null;
  readonly peerCertificate: boolean;
  readonly principals: string[];
}
const whoAmIPath = '/fstore.test.Tls/WhoAmI';
const whoAmIService = {
  WhoAmI: {
    path: whoAmIPath,
    requestStream: false,
    responseStream: false,
    requestSerialize: (value: Buffer) => value,
    requestDeserialize: (bytes: Buffer) => bytes,
    responseSerialize: (value: WhoAmI) => Buffer.from(JSON.stringify(value)),
    responseDeserialize: (bytes: Buffer) => JSON.parse(bytes.toString()) as WhoAmI,
  },
};
const whoAmIImplementation = {
  WhoAmI: (call: ServerUnaryCall<Buffer, WhoAmI>, callback: sendUnaryData<WhoAmI>) => {
    const auth = call.getAuthContext();
    const certificate = auth?.sslPeerCertificate;
    callback(null, {
      transportSecurityType: auth?.transportSecurityType ?? null,
      peerCertificate: certificate !== undefined,
      principals: certificate ? certificatePrincipalNames(certificate) : [],
    });
  },
};

interface RunningServer {
  readonly address: string;
  readonly port: number;
  stop(): void;
}

async function startServer(serverCredentials: ServerCredentials): Promise<RunningServer> {
  const server = new Server();
  new HealthImplementation({ '': 'SERVING' }).addToServer(server);
  server.addService(whoAmIService, whoAmIImplementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', serverCredentials, (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );
  return { address: `127.0.0.1:${port}`, port, stop: () => server.forceShutdown() };
}

const Health = loadPackageDefinition(
  loadSync(healthProtoPath, { keepCase: true, enums: String, defaults: true }),
) as unknown as { grpc: { health: { v1: { Health: ServiceClientConstructor } } } };

interface HealthClient {
  check(
    request: { service: string },
    options: { deadline: number },
    callback: (error: ServiceError | null, response: { status: string }) => void,
  ): void;
  close(): void;
}

async function checkHealth(client: HealthClient): Promise<string> {
  return new Promise((resolve, reject) =>
    client.check({ service: '' }, { deadline: Date.now() + 3_000 }, (error, response) =>
      error ? reject(error) : resolve(response.status),
    ),
  );
}

const clients: { close(): void }[] = [];
function healthClient(address: string, channelCredentials: ChannelCredentials): HealthClient {
  const client = new Health.grpc.health.v1.Health(address, channelCredentials) as unknown as HealthClient;
  clients.push(client);
  return client;
}

async function whoAmI(address: string, channelCredentials: ChannelCredentials): Promise<WhoAmI> {
  const client = new Client(address, channelCredentials);
  try {
    return await new Promise<WhoAmI>((resolve, reject) =>
      client.makeUnaryRequest(
        whoAmIPath,
        (value: Buffer) => value,
        (bytes: Buffer) => JSON.parse(bytes.toString()) as WhoAmI,
        Buffer.alloc(0),
        { deadline: Date.now() + 3_000 },
        (error, response) => (error || !response ? reject(error) : resolve(response)),
      ),
    );
  } finally {
    client.close();
  }
}

/** The status code a call failed with (the test fails if it succeeded). */
async function failureCode(call: Promise<unknown>): Promise<number> {
  const outcome = await call.then(
    () => undefined,
    (error: unknown) => error as ServiceError,
  );
  if (!outcome) throw new Error('the call succeeded');
  return outcome.code;
}

/** The certificate a TLS port serves to a new connection (ALPN h2, as a gRPC client). */
async function servedCertificate(port: number, caFile: string): Promise<PeerCertificate> {
  const ca = await readFile(caFile);
  return new Promise((resolve, reject) => {
    const socket: TLSSocket = connect(
      { host: '127.0.0.1', port, ca, servername: 'localhost', ALPNProtocols: ['h2', 'http/1.1'] },
      () => {
        const certificate = socket.getPeerCertificate();
        socket.destroy();
        resolve(certificate);
      },
    );
    socket.once('error', reject);
  });
}

describe('TLS for the gRPC port', () => {
  let pki: TestPki;
  let alice: CertificatePair;
  let mallory: CertificatePair;
  const toClose: ReloadingServerCredentials[] = [];
  const servers: RunningServer[] = [];

  const serve = async (files: Omit<TlsFiles, 'certFile' | 'keyFile'> & Partial<TlsFiles> = {}) => {
    const serverCredentials = await createServerCredentials({
      certFile: pki.serverCert,
      keyFile: pki.serverKey,
      ...files,
    });
    toClose.push(serverCredentials);
    const server = await startServer(serverCredentials.credentials);
    servers.push(server);
    return server;
  };

  beforeAll(async () => {
    pki = await createTestPki();
    [alice, mallory] = await Promise.all([pki.clientCert('alice'), pki.otherCa.clientCert('mallory')]);
  });
  afterEach(() => {
    for (const client of clients.splice(0)) client.close();
    for (const server of servers.splice(0)) server.stop();
    for (const serverCredentials of toClose.splice(0)) serverCredentials.close();
  });
  afterAll(async () => {
    await pki?.remove();
  });

  describe('server TLS', () => {
    it('serves a client that trusts the CA and no client certificate is asked for', async () => {
      const server = await serve();
      const trusting = createChannelCredentials({ caFile: pki.caCert });
      expect(await checkHealth(healthClient(server.address, trusting))).toBe('SERVING');
      // No client certificate: the handler sees no verified peer.
      expect(await whoAmI(server.address, trusting)).toEqual({
        transportSecurityType: null,
        peerCertificate: false,
        principals: [],
      });
    });

    it('refuses a plaintext client', async () => {
      const server = await serve();
      const plaintext = healthClient(server.address, credentials.createInsecure());
      expect(await failureCode(checkHealth(plaintext))).toBe(status.UNAVAILABLE);
    });

    it('is refused by a client that does not trust its CA', async () => {
      const server = await serve();
      const distrusting = createChannelCredentials({ caFile: pki.otherCa.caCert });
      expect(await failureCode(checkHealth(healthClient(server.address, distrusting)))).toBe(
        status.UNAVAILABLE,
      );
    });

    it('checks the server certificate against serverName when given', async () => {
      const internal = await pki.issueServerCert({
        commonName: 'fstore.internal',
        dns: ['fstore.internal'],
        ips: [],
      });
      const server = await serve({ certFile: internal.cert, keyFile: internal.key });
      // Dialled by IP, the certificate (no IP SAN) does not match the host...
      const byHost = createChannelCredentials({ caFile: pki.caCert });
      expect(await failureCode(checkHealth(healthClient(server.address, byHost)))).toBe(status.UNAVAILABLE);
      // ...but matches the name the client was told to expect.
      const byName = createChannelCredentials({ caFile: pki.caCert, serverName: 'fstore.internal' });
      expect(await checkHealth(healthClient(server.address, byName))).toBe('SERVING');
    });
  });

  describe('mTLS, client certificate required', () => {
    it('gives the handler the verified certificate and its principal names', async () => {
      const server = await serve({ clientCaFile: pki.caCert, clientCertificate: 'require' });
      const seen = await whoAmI(
        server.address,
        createChannelCredentials({ caFile: pki.caCert, certFile: alice.cert, keyFile: alice.key }),
      );
      expect(seen).toEqual({
        transportSecurityType: 'ssl',
        peerCertificate: true,
        principals: ['cert:alice', 'cert:alice.clients.fstore.test', 'cert:spiffe://fstore.test/alice'],
      });
    });

    it('refuses a client without a certificate', async () => {
      const server = await serve({ clientCaFile: pki.caCert, clientCertificate: 'require' });
      const anonymous = createChannelCredentials({ caFile: pki.caCert });
      expect(await failureCode(whoAmI(server.address, anonymous))).toBe(status.UNAVAILABLE);
    });

    it('refuses a client certificate from another CA', async () => {
      const server = await serve({ clientCaFile: pki.caCert, clientCertificate: 'require' });
      const stranger = createChannelCredentials({
        caFile: pki.caCert,
        certFile: mallory.cert,
        keyFile: mallory.key,
      });
      expect(await failureCode(whoAmI(server.address, stranger))).toBe(status.UNAVAILABLE);
    });
  });

  describe('mTLS, client certificate optional (the default with a client CA)', () => {
    it('serves a client without a certificate, with no peer certificate', async () => {
      const server = await serve({ clientCaFile: pki.caCert });
      expect(await whoAmI(server.address, createChannelCredentials({ caFile: pki.caCert }))).toEqual({
        transportSecurityType: null,
        peerCertificate: false,
        principals: [],
      });
    });

    it('still verifies a certificate that is presented', async () => {
      const server = await serve({ clientCaFile: pki.caCert, clientCertificate: 'optional' });
      const seen = await whoAmI(
        server.address,
        createChannelCredentials({ caFile: pki.caCert, certFile: alice.cert, keyFile: alice.key }),
      );
      expect(seen.peerCertificate).toBe(true);
      expect(seen.principals).toContain('cert:alice');
    });

    it('completes the handshake with a wrong-CA certificate but shows the handler no peer certificate', async () => {
      // rejectUnauthorized is false: the connection is accepted, the socket is not `authorized`,
      // and grpc-js then reports an empty auth context — the caller is anonymous, not mallory.
      const server = await serve({ clientCaFile: pki.caCert });
      const stranger = createChannelCredentials({
        caFile: pki.caCert,
        certFile: mallory.cert,
        keyFile: mallory.key,
      });
      expect(await whoAmI(server.address, stranger)).toEqual({
        transportSecurityType: null,
        peerCertificate: false,
        principals: [],
      });
    });
  });

  describe('reload without a restart', () => {
    it('serves a certificate replaced by rename to new connections; open channels keep working', async () => {
      const live = { cert: join(pki.dir, 'reload-live.crt'), key: join(pki.dir, 'reload-live.key') };
      await copyFile(pki.serverCert, live.cert);
      await copyFile(pki.serverKey, live.key);
      const server = await serve({ certFile: live.cert, keyFile: live.key, reloadIntervalMs: 200 });
      const trusting = createChannelCredentials({ caFile: pki.caCert });
      const open = healthClient(server.address, trusting);
      expect(await checkHealth(open)).toBe('SERVING');
      const before = await servedCertificate(server.port, pki.caCert);
      expect(before.serialNumber).toBe(await serialOf(pki.serverCert));

      const next = await pki.issueServerCert({ commonName: 'localhost-rotated' });
      // Certificate first, key second: in between the pair does not match and must be skipped.
      await replaceByRename(next.cert, live.cert);
      await replaceByRename(next.key, live.key);
      const after = await eventually(
        () => servedCertificate(server.port, pki.caCert),
        (certificate) => !(certificate instanceof Error) && certificate.serialNumber !== before.serialNumber,
      );
      expect(after.serialNumber).toBe(await serialOf(next.cert));
      expect(after.subject.CN).toBe('localhost-rotated');

      expect(await checkHealth(healthClient(server.address, trusting))).toBe('SERVING');
      expect(await checkHealth(open)).toBe('SERVING');
    });

    it('reloads the client CA bundle and still requires a client certificate afterwards', async () => {
      const liveCa = join(pki.dir, 'reload-client-ca.crt');
      await copyFile(pki.caCert, liveCa);
      const server = await serve({
        clientCaFile: liveCa,
        clientCertificate: 'require',
        reloadIntervalMs: 200,
      });
      const asMallory = createChannelCredentials({
        caFile: pki.caCert,
        certFile: mallory.cert,
        keyFile: mallory.key,
      });
      expect(await failureCode(whoAmI(server.address, asMallory))).toBe(status.UNAVAILABLE);

      // Trust the other CA too (a CA rotation's overlap): mallory's certificate now verifies.
      const bundle = join(pki.dir, 'reload-client-ca-bundle.crt');
      await writeFile(
        bundle,
        `${await readFile(pki.caCert, 'utf8')}${await readFile(pki.otherCa.caCert, 'utf8')}`,
      );
      await replaceByRename(bundle, liveCa);
      const seen = await eventually(
        () => whoAmI(server.address, asMallory),
        (value) => !(value instanceof Error) && value.peerCertificate,
      );
      expect(seen.principals).toContain('cert:mallory');
      // The reload swaps the context only: a client without a certificate is still refused.
      const anonymous = createChannelCredentials({ caFile: pki.caCert });
      expect(await failureCode(whoAmI(server.address, anonymous))).toBe(status.UNAVAILABLE);
    });

    it('keeps the last good certificate while a file is half written or missing', async () => {
      const live = { cert: join(pki.dir, 'partial-live.crt'), key: join(pki.dir, 'partial-live.key') };
      await copyFile(pki.serverCert, live.cert);
      await copyFile(pki.serverKey, live.key);
      const rejected: FStoreError[] = [];
      const serverCredentials = await createServerCredentials(
        { certFile: live.cert, keyFile: live.key, reloadIntervalMs: 100 },
        { rejected: (error) => rejected.push(error) },
      );
      toClose.push(serverCredentials);
      const server = await startServer(serverCredentials.credentials);
      servers.push(server);
      const trusting = createChannelCredentials({ caFile: pki.caCert });
      const original = await serialOf(pki.serverCert);

      const next = await pki.issueServerCert({ commonName: 'localhost-next' });
      const pem = await readFile(next.cert, 'utf8');
      await writeFile(live.cert, pem.slice(0, Math.floor(pem.length / 2)));
      await eventually(
        async () => rejected.length,
        (count) => count >= 1,
      );
      expect(rejected[0]?.code).toBe('invalid_argument');
      expect(rejected[0]?.message).toContain(live.cert);
      expect((await servedCertificate(server.port, pki.caCert)).serialNumber).toBe(original);
      expect(await checkHealth(healthClient(server.address, trusting))).toBe('SERVING');

      await rm(live.key);
      await eventually(
        async () => rejected.length,
        (count) => count >= 2,
      );
      expect(rejected[1]?.message).toContain(live.key);
      expect((await servedCertificate(server.port, pki.caCert)).serialNumber).toBe(original);

      await replaceByRename(next.key, live.key);
      await replaceByRename(next.cert, live.cert);
      await eventually(
        () => servedCertificate(server.port, pki.caCert),
        (certificate) => !(certificate instanceof Error) && certificate.subject.CN === 'localhost-next',
      );
      expect(await checkHealth(healthClient(server.address, trusting))).toBe('SERVING');
    });
  });

  describe('bad files', () => {
    const failure = async (files: TlsFiles) => {
      const outcome = await createServerCredentials(files).then(
        (serverCredentials) => {
          serverCredentials.close();
          return undefined;
        },
        (error: unknown) => error,
      );
      expect(outcome).toBeInstanceOf(FStoreError);
      return outcome as FStoreError;
    };

    it('names a missing file', async () => {
      const missing = join(pki.dir, 'no-such.crt');
      const error = await failure({ certFile: missing, keyFile: pki.serverKey });
      expect(error.code).toBe('invalid_argument');
      expect(error.message).toContain(missing);
      const missingCa = join(pki.dir, 'no-such-ca.crt');
      const caError = await failure({
        certFile: pki.serverCert,
        keyFile: pki.serverKey,
        clientCaFile: missingCa,
      });
      expect(caError.message).toContain(missingCa);
    });

    it('names a file that is not PEM', async () => {
      const garbage = join(pki.dir, 'garbage.pem');
      await writeFile(garbage, 'this is not a certificate\n');
      const asCert = await failure({ certFile: garbage, keyFile: pki.serverKey });
      expect(asCert.code).toBe('invalid_argument');
      expect(asCert.message).toContain(garbage);
      expect(asCert.message).toContain('certificate');
      const asKey = await failure({ certFile: pki.serverCert, keyFile: garbage });
      expect(asKey.message).toContain(garbage);
      expect(asKey.message).toContain('private key');
      // A certificate where the key belongs is not a key either.
      const certAsKey = await failure({ certFile: pki.serverCert, keyFile: pki.caCert });
      expect(certAsKey.message).toContain(pki.caCert);
    });

    it('names a key that does not belong to the certificate', async () => {
      const error = await failure({ certFile: pki.serverCert, keyFile: alice.key });
      expect(error.code).toBe('invalid_argument');
      expect(error.message).toContain(alice.key);
      expect(error.message).toContain('does not belong');
    });

    it('checks the client files too', () => {
      const missing = join(pki.dir, 'no-such-ca.pem');
      expect(() => createChannelCredentials({ caFile: missing })).toThrowError(
        expect.objectContaining({ code: 'invalid_argument', message: expect.stringContaining(missing) }),
      );
      expect(() => createChannelCredentials({ certFile: alice.cert })).toThrowError(FStoreError);
      expect(() =>
        createChannelCredentials({ caFile: pki.caCert, certFile: alice.cert, keyFile: mallory.key }),
      ).toThrowError(/does not belong/);
    });
  });
});

describe('certificatePrincipalNames', () => {
  const certificate = (subject: Record<string, unknown>, subjectaltname?: string) =>
    ({ subject, subjectaltname }) as unknown as PeerCertificate;

  it('takes the CN and the DNS, URI and email SANs, deduplicated', () => {
    expect(
      certificatePrincipalNames(
        certificate(
          { CN: 'svc.example', O: 'Example' },
          'DNS:svc.example, IP Address:10.0.0.1, URI:spiffe://example/svc, email:ops@example.com, DNS:alt.example',
        ),
      ),
    ).toEqual(['cert:svc.example', 'cert:spiffe://example/svc', 'cert:ops@example.com', 'cert:alt.example']);
  });

  it('reads quoted SAN values and repeated CNs', () => {
    expect(
      certificatePrincipalNames(certificate({ CN: ['a', 'b'] }, 'URI:"spiffe://example/a, b", DNS:c')),
    ).toEqual(['cert:a', 'cert:b', 'cert:spiffe://example/a, b', 'cert:c']);
  });

  it('gives nothing for a certificate without names', () => {
    expect(certificatePrincipalNames(certificate({}))).toEqual([]);
  });
});

describe('TLS for the metrics port', () => {
  let pki: TestPki;
  const logger = pino({ level: 'silent' });
  const base = {
    host: '127.0.0.1',
    port: 0,
    metrics: async () => ({ contentType: 'text/plain', body: 'm 1\n' }),
    readiness: () => ({ ready: true, checks: {} }),
    logger,
  };

  beforeAll(async () => {
    pki = await createTestPki();
  });
  afterAll(async () => {
    await pki?.remove();
  });

  const get = async (
    port: number,
    path: string,
    tls: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {},
  ): Promise<{ status: number; body: string; certificate: PeerCertificate }> =>
    new Promise((resolve, reject) => {
      // agent: false, so every request is a new connection (and a new handshake).
      const request = httpsRequest(
        { host: '127.0.0.1', port, path, servername: 'localhost', agent: false, ...tls },
        (response) => {
          const certificate = (response.socket as TLSSocket).getPeerCertificate();
          let body = '';
          response.setEncoding('utf8');
          response.on('data', (chunk: string) => {
            body += chunk;
          });
          response.on('end', () => resolve({ status: response.statusCode ?? 0, body, certificate }));
        },
      );
      request.once('error', reject);
      request.end();
    });

  it('serves /healthz and /metrics over HTTPS, and not over plain HTTP', async () => {
    const server = await startMetricsServer({
      ...base,
      tls: { certFile: pki.serverCert, keyFile: pki.serverKey },
    });
    try {
      const ca = await readFile(pki.caCert);
      expect(await get(server.port, '/healthz', { ca })).toMatchObject({ status: 200, body: 'ok\n' });
      expect(await get(server.port, '/metrics', { ca })).toMatchObject({ status: 200, body: 'm 1\n' });
      await expect(get(server.port, '/healthz')).rejects.toThrow(); // not trusted without the CA
      const plain = await new Promise<unknown>((resolve) => {
        const request = httpRequest({ host: '127.0.0.1', port: server.port, path: '/healthz' }, (response) =>
          resolve(response.statusCode),
        );
        request.once('error', (error) => resolve(error));
        request.end();
      });
      expect(plain).not.toBe(200);
    } finally {
      await server.close();
    }
  });

  it('requires a client certificate when told to', async () => {
    const server = await startMetricsServer({
      ...base,
      tls: {
        certFile: pki.serverCert,
        keyFile: pki.serverKey,
        clientCaFile: pki.caCert,
        clientCertificate: 'require',
      },
    });
    try {
      const ca = await readFile(pki.caCert);
      const scraper = await pki.clientCert('prometheus');
      await expect(get(server.port, '/healthz', { ca })).rejects.toThrow();
      expect(
        await get(server.port, '/healthz', {
          ca,
          cert: await readFile(scraper.cert),
          key: await readFile(scraper.key),
        }),
      ).toMatchObject({ status: 200 });
    } finally {
      await server.close();
    }
  });

  it('reloads a certificate replaced by rename', async () => {
    const live = { cert: join(pki.dir, 'metrics-live.crt'), key: join(pki.dir, 'metrics-live.key') };
    await copyFile(pki.serverCert, live.cert);
    await copyFile(pki.serverKey, live.key);
    const server = await startMetricsServer({
      ...base,
      tls: { certFile: live.cert, keyFile: live.key, reloadIntervalMs: 200 },
    });
    try {
      const ca = await readFile(pki.caCert);
      const before = await get(server.port, '/healthz', { ca });
      expect(before.certificate.serialNumber).toBe(await serialOf(pki.serverCert));
      const next = await pki.issueServerCert({ commonName: 'metrics-rotated' });
      await replaceByRename(next.cert, live.cert);
      await replaceByRename(next.key, live.key);
      const after = await eventually(
        () => get(server.port, '/healthz', { ca }),
        (response) => !(response instanceof Error) && response.certificate.subject.CN === 'metrics-rotated',
      );
      expect(after).toMatchObject({ status: 200, body: 'ok\n' });
      expect(after.certificate.serialNumber).toBe(await serialOf(next.cert));
    } finally {
      await server.close();
    }
  });
});
