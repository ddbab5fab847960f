import { createServer, type Server } from 'node:http';
import type { Logger } from 'pino';
import { FStoreError } from '../domain/errors.js';

/**
 * The HTTP side port (DESIGN §5): `/metrics` (Prometheus text format), `/healthz` (the process
 * answers) and `/readyz` (200 only while every store this process needs answers, else 503 with
 * what is down). A separate server from gRPC's: a slow scrape never holds a gRPC call, and each
 * request only reads figures already in memory.
 */

export interface Readiness {
  readonly ready: boolean;
  readonly checks: Readonly<Record<string, boolean>>;
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
}): Promise<MetricsServer> {
  const server: Server = createServer((request, response) => {
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
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) =>
      reject(
        new FStoreError(
          'unavailable',
          `cannot listen on ${options.host}:${options.port} for metrics: ${error.message}`,
        ),
      ),
    );
    server.listen(options.port, options.host, () => resolve());
  });
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : options.port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
