import type { Tracer } from '@opentelemetry/api';
import type { Histogram } from 'prom-client';
import { inChildSpan } from './tracing.js';

/**
 * Wraps every method of a store (or the worker pool) that returns a promise: its duration goes to
 * `histogram` labelled {store, operation, outcome} and, with a tracer, it runs in a child span of
 * the call's. Methods returning anything else (async iterables, plain values) pass through.
 * Nothing is wrapped when neither is given.
 */
export function instrument<T extends object>(
  target: T,
  component: string,
  options: { readonly histogram?: Histogram<'store' | 'operation' | 'outcome'>; readonly tracer?: Tracer },
): T {
  const { histogram, tracer } = options;
  if (!histogram && !tracer) return target;
  const wrapped = new Map<PropertyKey, unknown>();
  return new Proxy(target, {
    get(object, property, receiver) {
      const value = Reflect.get(object, property, receiver);
      if (typeof value !== 'function' || typeof property !== 'string' || property === 'close') return value;
      const cached = wrapped.get(property);
      if (cached) return cached;
      const operation = property;
      const method = (...args: unknown[]) => {
        const started = performance.now();
        const observe = (outcome: string) =>
          histogram?.observe({ store: component, operation, outcome }, (performance.now() - started) / 1000);
        const call = () => {
          const result = (value as (...parameters: unknown[]) => unknown).apply(object, args);
          if (!(result instanceof Promise)) {
            observe('ok');
            return result;
          }
          return result.then(
            (settled) => {
              observe('ok');
              return settled;
            },
            (error: unknown) => {
              observe('error');
              throw error;
            },
          );
        };
        if (!tracer) return call();
        // Only promise-returning calls get a span: a synchronous result is returned as it is.
        let synchronous: { value: unknown } | undefined;
        const traced = inChildSpan(
          tracer,
          `${component} ${operation}`,
          { 'fstore.component': component },
          async () => {
            const result = call();
            if (!(result instanceof Promise)) synchronous = { value: result };
            return result;
          },
        );
        return synchronous ? synchronous.value : traced;
      };
      wrapped.set(property, method);
      return method;
    },
  });
}
