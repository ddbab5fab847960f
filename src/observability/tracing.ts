import type { Metadata } from '@grpc/grpc-js';
import {
  context,
  propagation,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BatchSpanProcessor,
  NodeTracerProvider,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
} from '@opentelemetry/sdk-trace-node';

/**
 * OpenTelemetry tracing (DESIGN §5), on only when an OTLP endpoint is configured: then a span per
 * RPC (its parent taken from the call's `traceparent` metadata, W3C trace context), child spans
 * for Redis, PostgreSQL and worker tasks, exported in batches over OTLP/HTTP (JSON). Off, nothing
 * is wrapped: the serving path runs exactly the code it runs without tracing. Calls whose caller
 * sent a sampling decision follow it; the others are traced at `sampleRatio` (by trace id).
 */

export interface Tracing {
  readonly tracer: Tracer;
  shutdown(): Promise<void>;
}

export function startTracing(options: {
  readonly endpoint: string;
  readonly serviceName: string;
  readonly sampleRatio: number;
}): Tracing {
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ 'service.name': options.serviceName }),
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(options.sampleRatio) }),
    spanProcessors: [
      new BatchSpanProcessor(new OTLPTraceExporter({ url: options.endpoint }), {
        scheduledDelayMillis: 1000,
      }),
    ],
  });
  // Registers the AsyncLocalStorage context manager and the W3C propagator globally.
  provider.register();
  return {
    tracer: provider.getTracer('fstore'),
    async shutdown() {
      await provider.shutdown();
    },
  };
}

const metadataGetter = {
  keys: (carrier: Metadata) => Object.keys(carrier.getMap()),
  get: (carrier: Metadata, key: string) => {
    const values = carrier.get(key);
    return values.length === 0 ? undefined : values.map(String);
  },
};

/** A server span for an incoming call, child of the caller's span when the metadata carries one. */
export function startCallSpan(
  tracer: Tracer,
  method: string,
  metadata: Metadata,
  requestId: string,
): { span: Span; run<T>(handler: () => T): T } {
  const parent = propagation.extract(context.active(), metadata, metadataGetter);
  const [service, name] = method.split('/');
  const span = tracer.startSpan(
    method,
    {
      kind: SpanKind.SERVER,
      attributes: {
        'rpc.system': 'grpc',
        'rpc.service': service,
        'rpc.method': name,
        'fstore.request_id': requestId,
      },
    },
    parent,
  );
  const active = trace.setSpan(parent, span);
  return { span, run: (handler) => context.with(active, handler) };
}

/** Runs `operation` in a child span of the active one (a store call, a worker task). */
export function inChildSpan<T>(
  tracer: Tracer,
  name: string,
  attributes: Record<string, string>,
  operation: () => Promise<T>,
): Promise<T> {
  return tracer.startActiveSpan(name, { kind: SpanKind.CLIENT, attributes }, async (span) => {
    try {
      return await operation();
    } catch (error) {
      span.setStatus({
        code: SpanStatusCode.ERROR,
        message: error instanceof Error ? error.message : String(error),
      });
      throw error;
    } finally {
      span.end();
    }
  });
}

export function endCallSpan(span: Span, code: string, error: unknown): void {
  span.setAttribute('rpc.grpc.status_code', code);
  if (error !== undefined)
    span.setStatus({
      code: SpanStatusCode.ERROR,
      message: error instanceof Error ? error.message : String(error),
    });
  span.end();
}
