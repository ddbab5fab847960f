import type { Metadata } from '@grpc/grpc-js';
import type { Tracer } from '@opentelemetry/api';
import type { Logger } from 'pino';
import type { CallObserver, CallScope } from '../grpc/server.js';
import { statusNameOf } from '../grpc/status.js';
import type { ServingMetrics } from './metrics.js';
import { endCallSpan, startCallSpan } from './tracing.js';

/**
 * The one CallObserver of a serving process: per call, the latency histogram {method, code}, the
 * access log line (request id, method, duration, status; never request or feature values) and
 * the server span. Undefined when all three are off, so the gRPC layer does no per-call work.
 */

export type AccessLog = 'off' | 'errors' | 'all';

const passThrough = <T>(handler: () => T): T => handler();

export function createCallObserver(options: {
  readonly metrics?: ServingMetrics;
  readonly tracer?: Tracer;
  readonly logger: Logger;
  readonly accessLog: AccessLog;
}): CallObserver | undefined {
  const { metrics, tracer, logger, accessLog } = options;
  if (!metrics && !tracer && accessLog === 'off') return undefined;
  return {
    begin(method: string, metadata: Metadata, requestId: string): CallScope {
      const started = performance.now();
      const traced = tracer ? startCallSpan(tracer, method, metadata, requestId) : undefined;
      return {
        run: traced ? traced.run : passThrough,
        finish(error) {
          const seconds = (performance.now() - started) / 1000;
          const code = statusNameOf(error);
          metrics?.rpcDuration.observe({ method, code }, seconds);
          if (traced) endCallSpan(traced.span, code, error);
          if (accessLog === 'all' || (accessLog === 'errors' && error !== undefined)) {
            const line = {
              requestId,
              method,
              code,
              durationMs: Math.round(seconds * 1e6) / 1e3,
              ...(traced ? { traceId: traced.span.spanContext().traceId } : {}),
            };
            if (code === 'INTERNAL' || code === 'UNKNOWN' || code === 'DATA_LOSS') logger.error(line, 'rpc');
            else if (error !== undefined) logger.warn(line, 'rpc');
            else logger.info(line, 'rpc');
          }
        },
      };
    },
  };
}
