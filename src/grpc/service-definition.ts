import type { DescMessage, DescMethod, DescService, MessageShape } from '@bufbuild/protobuf';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import type { GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js';

/**
 * Turns a protobuf-es service descriptor into a grpc-js service definition: grpc-js moves the
 * bytes, protobuf-es (de)serializes them. One definition serves both the server and the typed
 * client, so they cannot disagree on paths or streaming kinds.
 */

/**
 * A response a handler has already serialized (a hot path with its own encoder, held to the
 * generic encoding by a test); passed to the wire as is.
 */
export class EncodedMessage {
  constructor(readonly bytes: Uint8Array) {}
}

/**
 * A request whose bytes do not decode as its message. The server's deserializer returns it
 * instead of throwing (grpc-js would answer a throw with INTERNAL); the call then fails with
 * INVALID_ARGUMENT saying so.
 */
export class MalformedRequest {
  constructor(readonly problem: string) {}
}

const bufferOf = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);

export function grpcMethodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

function createMethodDefinition<I extends DescMessage, O extends DescMessage>(
  method: DescMethod & { input: I; output: O },
  side: 'client' | 'server',
): MethodDefinition<MessageShape<I>, MessageShape<O>> {
  const decodeRequest = (bytes: Buffer): MessageShape<I> => fromBinary(method.input, bytes);
  return {
    path: grpcMethodPath(method),
    originalName: method.localName,
    requestStream: method.methodKind === 'client_streaming' || method.methodKind === 'bidi_streaming',
    responseStream: method.methodKind === 'server_streaming' || method.methodKind === 'bidi_streaming',
    requestSerialize: (message) => bufferOf(toBinary(method.input, message)),
    requestDeserialize:
      side === 'client'
        ? decodeRequest
        : (bytes) => {
            try {
              return decodeRequest(bytes);
            } catch (error) {
              return new MalformedRequest(error instanceof Error ? error.message : String(error)) as never;
            }
          },
    responseSerialize: (message) =>
      message instanceof EncodedMessage
        ? bufferOf(message.bytes)
        : bufferOf(toBinary(method.output, message)),
    responseDeserialize: (bytes) => fromBinary(method.output, bytes),
  };
}

/**
 * The grpc-js definition of a service, keyed by the methods' local (camelCase) names. On the
 * server side a request that does not decode becomes a MalformedRequest instead of an exception.
 */
export function createGrpcServiceDefinition(
  service: DescService,
  side: 'client' | 'server' = 'client',
): ServiceDefinition {
  const definition: Record<string, MethodDefinition<object, object>> = {};
  for (const method of service.methods) {
    definition[method.localName] = createMethodDefinition(method, side) as MethodDefinition<object, object>;
  }
  return definition as ServiceDefinition;
}

/** The methods of a generated service, with their input and output schemas. */
export type ServiceMethods<S> = S extends { method: infer M extends GenServiceMethods } ? M : never;
