import { once } from 'node:events';
import { create, type DescService, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import {
  type ChannelCredentials,
  type ChannelOptions,
  Client,
  credentials as grpcCredentials,
  Metadata,
  type ServiceError,
} from '@grpc/grpc-js';
import { FStoreError } from '../domain/errors.js';
import { createGrpcServiceDefinition, type ServiceMethods } from './service-definition.js';
import { fromServiceError } from './status.js';

type Schema = Parameters<typeof create>[0];

export interface CallOptions {
  /** Milliseconds from now; the server stops working on the call when it passes. */
  readonly timeoutMs?: number;
  readonly metadata?: Metadata;
}

/**
 * A promise-based client of a generated service's unary and client-streaming methods, driven by
 * the same descriptor as the server. A client-streaming method takes an (async) iterable of
 * requests and writes them as the connection's flow control allows. Failures reject with an
 * FStoreError whose code is the gRPC status by name.
 */
export type ServiceClient<S> = {
  [K in keyof ServiceMethods<S>]: ServiceMethods<S>[K] extends {
    methodKind: 'unary';
    input: infer I extends Schema;
    output: infer O extends Schema;
  }
    ? (request: MessageInitShape<I>, options?: CallOptions) => Promise<MessageShape<O>>
    : ServiceMethods<S>[K] extends {
          methodKind: 'client_streaming';
          input: infer I extends Schema;
          output: infer O extends Schema;
        }
      ? (
          requests: Iterable<MessageInitShape<I>> | AsyncIterable<MessageInitShape<I>>,
          options?: CallOptions,
        ) => Promise<MessageShape<O>>
      : ServiceMethods<S>[K] extends {
            methodKind: 'server_streaming';
            input: infer I extends Schema;
            output: infer O extends Schema;
          }
        ? (request: MessageInitShape<I>, options?: CallOptions) => AsyncIterable<MessageShape<O>>
        : ServiceMethods<S>[K] extends {
              methodKind: 'bidi_streaming';
              input: infer I extends Schema;
              output: infer O extends Schema;
            }
          ? (
              requests: Iterable<MessageInitShape<I>> | AsyncIterable<MessageInitShape<I>>,
              options?: CallOptions,
            ) => AsyncIterable<MessageShape<O>>
          : never;
} & { close(): void };

export interface ClientOptions {
  /** TLS (src/grpc/tls.ts `createChannelCredentials`); default plaintext. */
  readonly credentials?: ChannelCredentials;
  readonly channelOptions?: ChannelOptions;
  /** Sent with every call, e.g. `authorization: Bearer <API key or JWT>`; a call's own metadata adds to it. */
  readonly metadata?: Metadata;
}

/** Metadata carrying a bearer credential (an API key `fsk_…` or a JWT). */
export function bearerMetadata(credential: string): Metadata {
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${credential}`);
  return metadata;
}

const isServiceError = (error: unknown): error is ServiceError =>
  error instanceof Error && typeof (error as Partial<ServiceError>).code === 'number' && 'metadata' in error;

export function createClient<S extends DescService>(
  service: S,
  address: string,
  options: ClientOptions = {},
): ServiceClient<S> {
  const definition = createGrpcServiceDefinition(service);
  const client = new Client(address, options.credentials ?? grpcCredentials.createInsecure(), {
    'grpc.max_receive_message_length': 64 * 1024 * 1024,
    ...options.channelOptions,
  });
  const methods: Record<string, unknown> = { close: () => client.close() };
  const defaults = options.metadata;
  const metadataOf = (call: CallOptions): Metadata => {
    if (!defaults) return call.metadata ?? new Metadata();
    if (!call.metadata) return defaults.clone();
    const merged = defaults.clone();
    merged.merge(call.metadata);
    return merged;
  };
  const callOptionsOf = (options: CallOptions) =>
    options.timeoutMs === undefined ? {} : { deadline: Date.now() + options.timeoutMs };
  for (const method of service.methods) {
    const methodDefinition = definition[method.localName];
    if (!methodDefinition) continue;
    const { path, requestSerialize, responseDeserialize } = methodDefinition;
    if (method.methodKind === 'unary') {
      methods[method.localName] = (request: MessageInitShape<Schema>, options: CallOptions = {}) =>
        new Promise<unknown>((resolve, reject: (error: FStoreError) => void) => {
          client.makeUnaryRequest(
            path,
            requestSerialize,
            responseDeserialize,
            create(method.input, request),
            metadataOf(options),
            callOptionsOf(options),
            (error: ServiceError | null, response?: unknown) =>
              error ? reject(fromServiceError(error)) : resolve(response),
          );
        });
    } else if (method.methodKind === 'server_streaming') {
      methods[method.localName] = async function* (
        request: MessageInitShape<Schema>,
        options: CallOptions = {},
      ) {
        const call = client.makeServerStreamRequest(
          path,
          requestSerialize,
          responseDeserialize,
          create(method.input, request),
          metadataOf(options),
          callOptionsOf(options),
        );
        try {
          // Pulled at the caller's pace: the stream pauses, and HTTP/2 flow control slows the server.
          for await (const response of call) yield response;
        } catch (error) {
          throw isServiceError(error) ? fromServiceError(error) : FStoreError.from(error, 'unavailable');
        } finally {
          call.cancel();
        }
      };
    } else if (method.methodKind === 'bidi_streaming') {
      methods[method.localName] = async function* (
        requests: Iterable<MessageInitShape<Schema>> | AsyncIterable<MessageInitShape<Schema>>,
        options: CallOptions = {},
      ) {
        const call = client.makeBidiStreamRequest(
          path,
          requestSerialize,
          responseDeserialize,
          metadataOf(options),
          callOptionsOf(options),
        );
        let inputFailure: FStoreError | undefined;
        const stopWriting = new AbortController();
        // Requests are written as flow control allows while responses are read.
        (async () => {
          for await (const request of requests) {
            if (stopWriting.signal.aborted || call.destroyed || call.writableEnded) return;
            if (!call.write(create(method.input, request)))
              await once(call, 'drain', { signal: stopWriting.signal });
          }
          call.end();
        })().catch((error: unknown) => {
          if (stopWriting.signal.aborted) return;
          // The caller's input failed: give up the call and say why.
          inputFailure = FStoreError.from(error, 'cancelled');
          call.cancel();
        });
        try {
          for await (const response of call) yield response;
        } catch (error) {
          if (inputFailure) throw inputFailure;
          throw isServiceError(error) ? fromServiceError(error) : FStoreError.from(error, 'unavailable');
        } finally {
          stopWriting.abort();
          call.cancel();
        }
        if (inputFailure) throw inputFailure;
      };
    } else if (method.methodKind === 'client_streaming') {
      methods[method.localName] = (
        requests: Iterable<MessageInitShape<Schema>> | AsyncIterable<MessageInitShape<Schema>>,
        options: CallOptions = {},
      ) =>
        new Promise<unknown>((resolve, reject: (error: FStoreError) => void) => {
          const call = client.makeClientStreamRequest(
            path,
            requestSerialize,
            responseDeserialize,
            metadataOf(options),
            callOptionsOf(options),
            (error: ServiceError | null, response?: unknown) =>
              error ? reject(fromServiceError(error)) : resolve(response),
          );
          (async () => {
            for await (const request of requests) {
              if (call.destroyed || call.writableEnded) return;
              // Backpressure: wait for the stream to drain instead of buffering the whole input.
              if (!call.write(create(method.input, request))) await once(call, 'drain');
            }
            call.end();
          })().catch((error: unknown) => {
            // The caller's input failed: give up the call (the server rolls back) and say why.
            call.cancel();
            reject(FStoreError.from(error, 'cancelled'));
          });
        });
    }
  }
  return methods as ServiceClient<S>;
}
