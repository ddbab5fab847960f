import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { Logger } from 'pino';
import { FStoreError } from '../domain/errors.js';
import { clientCertificateOptions, type TlsFiles, type TlsFileWatcher, watchTlsFiles } from '../grpc/tls.js';

/**
 * The HTTP side port (DESIGN §5): `/metrics` (Prometheus text format), `/healthz` (the process
 * answers) and `/readyz` (200 only while every store this process needs answers, else 503 with
 * what is down and why, in plain words). A separate server from gRPC's: a slow scrape never holds a gRPC call, and each
 * request only reads figures already in memory. With `tls`, HTTPS (optionally mTLS) with
 * certificates reloaded on change.
 */

export interface Readiness {
  readonly ready: boolean;
  readonly checks: Readonly<Record<string, boolean>>;
  /** Why a failed check failed, in plain words ("authentication failed"); absent while all pass. */
  readonly reasons?: Readonly<Record<string, string>>;
}

export interface MetricsServer {
  readonly port: number;
  close(): Promise<void>;
}

export async function startMetricsServer(options: {
  readonly host: string;
  readonly port: number;
  readonly metrics: () => Promise<{ contentType: string; body: string }>;
  readonly readiness: () => Readiness;
  readonly logger: Logger;
  /**
   * Serve HTTPS with these files (the gRPC port's, typically), reloaded on change like there.
   * Default: plain HTTP.
   */
  readonly tls?: TlsFiles;
}): Promise<MetricsServer> {
  const handle = (request: IncomingMessage, response: ServerResponse) => {
    const path = (request.url ?? '/').split('?')[0];
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/metrics') {
      options.metrics().then(
        ({ contentType, body }) => response.writeHead(200, { 'content-type': contentType }).end(body),
        (error: unknown) => {
          options.logger.warn({ err: error }, 'metrics collection failed');
          response.writeHead(500, { 'content-type': 'text/plain' }).end('metrics collection failed\n');
        },
      );
      return;
    }
    if (path === '/healthz') {
      response.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      return;
    }
    if (path === '/readyz') {
      const readiness = options.readiness();
      response
        .writeHead(readiness.ready ? 200 : 503, { 'content-type': 'application/json' })
        .end(`${JSON.stringify(readiness)}\n`);
      return;
    }
    response.writeHead(404, { 'content-type': 'text/plain' }).end('not found: /metrics, /healthz, /readyz\n');
  };
  let server: Server | HttpsServer;
  let watcher: TlsFileWatcher | undefined;
  if (options.tls) {
    let httpsServer: HttpsServer | undefined;
    watcher = await watchTlsFiles(
      options.tls,
      // New connections get the new certificate; open ones keep theirs.
      (material) => httpsServer?.setSecureContext(material),
      {
        reloaded: () =>
          options.logger.info({ certFile: options.tls?.certFile }, 'metrics TLS certificate reloaded'),
        rejected: (error) =>
          options.logger.warn(
            { err: error },
            'metrics TLS files changed but are unusable; keeping the last good ones',
          ),
      },
    );
    const { cert, key, ca } = watcher.initial;
    httpsServer = createHttpsServer(
      { cert, key, ...(ca === undefined ? {} : { ca }), ...clientCertificateOptions(options.tls) },
      handle,
    );
    // A failed handshake (plain HTTP, an untrusted client) only ends that connection.
    httpsServer.on('tlsClientError', (error) =>
      options.logger.debug({ err: error }, 'metrics TLS handshake failed'),
    );
    server = httpsServer;
  } else server = createServer(handle);
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) => {
      watcher?.close();
      reject(
        new FStoreError(
          'unavailable',
          `cannot listen on ${options.host}:${options.port} for metrics: ${error.message}`,
        ),
      );
    });
    server.listen(options.port, options.host, () => resolve());
  });
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : options.port,
    close: () =>
      new Promise<void>((resolve) => {
        watcher?.close();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
