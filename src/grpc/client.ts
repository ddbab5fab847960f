import { create, type DescService, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import {
  type ChannelCredentials,
  type ChannelOptions,
  Client,
  credentials as grpcCredentials,
  Metadata,
  type ServiceError,
} from '@grpc/grpc-js';
import type { FStoreError } from '../domain/errors.js';
import { createGrpcServiceDefinition, type ServiceMethods } from './service-definition.js';
import { fromServiceError } from './status.js';

type Schema = Parameters<typeof create>[0];

export interface CallOptions {
  /** Milliseconds from now; the server stops working on the call when it passes. */
  readonly timeoutMs?: number;
  readonly metadata?: Metadata;
}

/**
 * A promise-based client of a generated service's unary methods, driven by the same descriptor
 * as the server. Failures reject with an FStoreError whose code is the gRPC status by name.
 */
export type UnaryClient<S> = {
  [K in keyof ServiceMethods<S>]: ServiceMethods<S>[K] extends {
    input: infer I extends Schema;
    output: infer O extends Schema;
  }
    ? (request: MessageInitShape<I>, options?: CallOptions) => Promise<MessageShape<O>>
    : never;
} & { close(): void };

export interface ClientOptions {
  readonly credentials?: ChannelCredentials;
  readonly channelOptions?: ChannelOptions;
}

export function createUnaryClient<S extends DescService>(
  service: S,
  address: string,
  options: ClientOptions = {},
): UnaryClient<S> {
  const definition = createGrpcServiceDefinition(service);
  const client = new Client(address, options.credentials ?? grpcCredentials.createInsecure(), {
    'grpc.max_receive_message_length': 64 * 1024 * 1024,
    ...options.channelOptions,
  });
  const methods: Record<string, unknown> = { close: () => client.close() };
  for (const method of service.methods) {
    const methodDefinition = definition[method.localName];
    if (!methodDefinition || method.methodKind !== 'unary') continue;
    methods[method.localName] = (request: MessageInitShape<Schema>, callOptions: CallOptions = {}) =>
      new Promise<unknown>((resolve, reject: (error: FStoreError) => void) => {
        client.makeUnaryRequest(
          methodDefinition.path,
          methodDefinition.requestSerialize,
          methodDefinition.responseDeserialize,
          create(method.input, request),
          callOptions.metadata ?? new Metadata(),
          callOptions.timeoutMs === undefined ? {} : { deadline: Date.now() + callOptions.timeoutMs },
          (error: ServiceError | null, response?: unknown) =>
            error ? reject(fromServiceError(error)) : resolve(response),
        );
      });
  }
  return methods as UnaryClient<S>;
}
