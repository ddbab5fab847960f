import { type EventEmitter, once } from 'node:events';
import {
  create,
  type DescFile,
  type DescService,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import {
  type Metadata,
  Server,
  ServerCredentials,
  type ServerDuplexStream,
  type ServerReadableStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, type ServingStatus } from 'grpc-health-check';
import { anonymousPrincipal, type Principal } from '../domain/access.js';
import { FStoreError } from '../domain/errors.js';
import {
  createGrpcServiceDefinition,
  EncodedMessage,
  MalformedRequest,
  type ServiceMethods,
} from './service-definition.js';
import { toServiceError } from './status.js';

export interface CallContext {
  /** Aborts at the call's deadline (reason: deadline_exceeded) or when the client cancels. */
  readonly signal: AbortSignal;
  readonly metadata: Metadata;
  /** Who is calling (the anonymous admin when authentication is off). */
  readonly principal: Principal;
  /** The caller's x-request-id, or one made for the call: in logs, traces and the audit log. */
  readonly requestId: string;
}

/**
 * Admission of every call (src/grpc/call-gate.ts): `open` authenticates it from its metadata and
 * transport before anything else runs; `admit` authorizes the request — a stream's first message
 * — and charges every message to the caller's rate limits, before the handler sees it; the
 * handler's responses and the call's end are reported for the audit log.
 */
export interface CallGate {
  open(method: string, call: GatedCall, requestId: string): GateCall | Promise<GateCall>;
}

export interface GatedCall {
  readonly metadata: Metadata;
  getAuthContext(): { readonly sslPeerCertificate?: import('node:tls').PeerCertificate | undefined };
}

export interface GateCall {
  readonly principal: Principal;
  admit(message: unknown): void | Promise<void>;
  responded(response: unknown): void;
  finish(error: unknown): void;
}

const openGate: GateCall = {
  principal: anonymousPrincipal,
  admit() {},
  responded() {},
  finish() {},
};

let requestSequence = 0;
const processTag = `${process.pid.toString(36)}-${Date.now().toString(36)}`;

/** The caller's x-request-id (at most 128 printable characters), else a new id unique to this process's lifetime. */
export function requestIdOf(metadata: Metadata): string {
  const given = metadata.get('x-request-id')[0];
  if (typeof given === 'string' && given.length > 0 && given.length <= 128 && /^[\x21-\x7e]+$/.test(given))
    return given;
  requestSequence += 1;
  return `${processTag}-${requestSequence.toString(36)}`;
}

type Schema = Parameters<typeof create>[0];

/**
 * Typed handlers of a generated service: a unary method takes its request, a client-streaming
 * one an async iterable of requests (pulled at the handler's pace: HTTP/2 flow control makes a
 * slow handler slow the client down); both resolve with the response.
 */
export type ServiceHandlers<S> = {
  [K in keyof ServiceMethods<S>]: ServiceMethods<S>[K] extends {
    methodKind: 'unary';
    input: infer I extends Schema;
    output: infer O extends Schema;
  }
    ? (request: MessageShape<I>, context: CallContext) => Promise<MessageInitShape<O> | EncodedMessage>
    : ServiceMethods<S>[K] extends {
          methodKind: 'client_streaming';
          input: infer I extends Schema;
          output: infer O extends Schema;
        }
      ? (
          requests: AsyncIterable<MessageShape<I>>,
          context: CallContext,
        ) => Promise<MessageInitShape<O> | EncodedMessage>
      : ServiceMethods<S>[K] extends {
            methodKind: 'server_streaming';
            input: infer I extends Schema;
            output: infer O extends Schema;
          }
        ? (request: MessageShape<I>, context: CallContext) => AsyncIterable<MessageInitShape<O>>
        : ServiceMethods<S>[K] extends {
              methodKind: 'bidi_streaming';
              input: infer I extends Schema;
              output: infer O extends Schema;
            }
          ? (
              requests: AsyncIterable<MessageShape<I>>,
              context: CallContext,
            ) => AsyncIterable<MessageInitShape<O> | EncodedMessage>
          : never;
};

/**
 * Sees every call of a service: metrics, access logs and traces hang here (src/observability).
 * `begin` runs when the call arrives; the handler runs inside `run` (a trace context); `finish`
 * runs once, with the error that ended the call or undefined.
 */
export interface CallObserver {
  begin(method: string, metadata: Metadata, requestId: string): CallScope;
}

export interface CallScope {
  run<T>(handler: () => T): T;
  finish(error: unknown): void;
}

export interface ServerLogger {
  debug(object: object, message: string): void;
  info(object: object, message: string): void;
  warn(object: object, message: string): void;
  error(object: object, message: string): void;
}

function deadlineSignal(
  call:
    | ServerUnaryCall<unknown, unknown>
    | ServerReadableStream<unknown, unknown>
    | ServerWritableStream<unknown, unknown>
    | ServerDuplexStream<unknown, unknown>,
): {
  signal: AbortSignal;
  release: () => void;
} {
  const controller = new AbortController();
  const deadline = call.getDeadline();
  const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
  let timer: NodeJS.Timeout | undefined;
  if (Number.isFinite(deadlineMs)) {
    timer = setTimeout(
      () =>
        controller.abort(
          new FStoreError('deadline_exceeded', 'the call deadline passed before the stores answered'),
        ),
      Math.max(0, deadlineMs - Date.now()),
    );
  }
  const onCancel = () => controller.abort(new FStoreError('cancelled', 'the client cancelled the call'));
  const events = call as EventEmitter;
  events.once('cancelled', onCancel);
  return {
    signal: controller.signal,
    release: () => {
      if (timer) clearTimeout(timer);
      events.removeListener('cancelled', onCancel);
    },
  };
}

/**
 * The requests of a client stream. grpc-js ends the stream on a client's cancellation just as on
 * its normal end, so the end is checked: a handler never takes the input of a cancelled call
 * for complete (an ingest would commit what arrived before the cancel).
 */
const malformed = (request: MalformedRequest, typeName: string, index?: number) =>
  new FStoreError(
    'invalid_argument',
    `${index === undefined ? 'the request' : `message ${index} of the request stream`} is not a valid ${typeName}: ${request.problem}`,
  );

/**
 * The next message of a request stream, or a DEADLINE_EXCEEDED failure after `idleMs` without
 * one: a client that stops sending must not hold what its call holds (an ingest's transaction
 * and its database connection) until the connection drops.
 */
async function nextWithin<T>(
  iterator: AsyncIterator<T>,
  idleMs: number,
  index: number,
): Promise<IteratorResult<T>> {
  if (!Number.isFinite(idleMs) || idleMs <= 0) return iterator.next();
  let timer: NodeJS.Timeout | undefined;
  const idle = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new FStoreError(
            'deadline_exceeded',
            `no message for ${idleMs} ms after message ${index} of the request stream (FSTORE_STREAM_IDLE_TIMEOUT_MS): the call was ended and nothing it sent was kept`,
          ),
        ),
      idleMs,
    );
  });
  try {
    return await Promise.race([iterator.next(), idle]);
  } finally {
    clearTimeout(timer);
  }
}

async function* requestsOf(
  call: ServerReadableStream<unknown, unknown> | ServerDuplexStream<unknown, unknown>,
  signal: AbortSignal,
  gate: Promise<GateCall>,
  typeName: string,
  idleMs: number,
): AsyncGenerator<unknown> {
  const admission = await gate;
  // Not `for await (… of call)`: its iterator destroys the stream at the end of the input, and a
  // destroyed duplex can no longer send the responses and status of a bidirectional call.
  const iterator = call.iterator({ destroyOnReturn: false })[Symbol.asyncIterator]();
  for (let index = 0; ; index++) {
    const next = await nextWithin(iterator, idleMs, index);
    if (next.done) break;
    const request: unknown = next.value;
    if (request instanceof MalformedRequest) throw malformed(request, typeName, index);
    // Authorized on the first message (it names the project), charged on every one, before the
    // handler — and so any store — sees it.
    await admission.admit(request);
    yield request;
  }
  if (call.cancelled || signal.aborted)
    throw signal.reason instanceof FStoreError
      ? signal.reason
      : new FStoreError('cancelled', 'the client cancelled the call before the end of its stream');
}

/** Codes that mean a bug or a store failure: the caller gets plain words, the log gets the detail. */
const hiddenDetailCodes = new Set(['internal', 'unknown', 'data_loss']);

/**
 * grpc-js implementation of a service's methods: every call admitted by the gate (when given)
 * before its handler runs, errors mapped to statuses and logged once with the request id.
 */
export function createServiceImplementation<S extends DescService>(
  service: S,
  handlers: ServiceHandlers<S>,
  logger: ServerLogger,
  observer?: CallObserver,
  gate?: CallGate,
  options: { readonly streamIdleTimeoutMs?: number } = {},
): UntypedServiceImplementation {
  const idleMs = options.streamIdleTimeoutMs ?? 0;
  const implementation: UntypedServiceImplementation = {};
  for (const method of service.methods) {
    const handler = (handlers as Record<string, (request: unknown, context: CallContext) => Promise<object>>)[
      method.localName
    ];
    if (!handler) throw new Error(`no handler for ${service.typeName}.${method.name}`);
    const fullName = `${service.typeName}/${method.name}`;
    const failed = (reason: unknown, requestId: string) => {
      if (!(reason instanceof FStoreError)) {
        logger.error({ method: method.name, requestId, err: reason }, 'unexpected error in handler');
        return toServiceError(reason);
      }
      if (hiddenDetailCodes.has(reason.code)) {
        logger.error({ method: method.name, requestId, code: reason.code, err: reason }, 'call failed');
        return toServiceError(
          new FStoreError(
            reason.code,
            `internal error; the server log has the detail (request id ${requestId})`,
          ),
        );
      }
      // A store failure's driver detail is in the cause: logged here, never sent.
      if (reason.cause !== undefined)
        logger.warn({ method: method.name, requestId, code: reason.code, err: reason }, 'call failed');
      else logger.debug({ method: method.name, requestId, code: reason.code, err: reason }, 'call failed');
      return toServiceError(reason);
    };
    /** Authenticates before anything else; a refusal becomes the call's status. */
    const open = (call: GatedCall, requestId: string): Promise<GateCall> =>
      gate ? Promise.resolve().then(() => gate.open(fullName, call, requestId)) : Promise.resolve(openGate);
    if (method.methodKind === 'server_streaming' || method.methodKind === 'bidi_streaming') {
      implementation[method.localName] = (
        call: ServerWritableStream<unknown, unknown> | ServerDuplexStream<unknown, unknown>,
      ) => {
        const { signal, release } = deadlineSignal(call);
        const requestId = requestIdOf(call.metadata);
        const scope = observer?.begin(fullName, call.metadata, requestId);
        const gateCall = open(call, requestId);
        // Failures surface where the call awaits it; this keeps an early refusal from being unhandled.
        gateCall.catch(() => undefined);
        let admission: GateCall | undefined;
        const drive = async () => {
          admission = await gateCall;
          let input: unknown;
          if (method.methodKind === 'server_streaming') {
            input = (call as ServerWritableStream<unknown, unknown>).request;
            if (input instanceof MalformedRequest) throw malformed(input, method.input.typeName);
            await admission.admit(input);
          } else
            input = requestsOf(
              call as ServerDuplexStream<unknown, unknown>,
              signal,
              gateCall,
              method.input.typeName,
              idleMs,
            );
          const responses = (
            handler as unknown as (request: unknown, context: CallContext) => AsyncIterable<object>
          )(input, { signal, metadata: call.metadata, principal: admission.principal, requestId });
          for await (const response of responses) {
            if (signal.aborted) throw signal.reason;
            const message =
              response instanceof EncodedMessage
                ? response
                : create(method.output, response as MessageInitShape<typeof method.output>);
            if (!(response instanceof EncodedMessage)) admission.responded(message);
            // Backpressure: a slow client slows the handler down instead of filling memory.
            if (!call.write(message)) await once(call, 'drain', { signal });
          }
        };
        (scope ? scope.run(drive) : drive()).then(
          () => {
            release();
            scope?.finish(undefined);
            admission?.finish(undefined);
            call.end();
          },
          (reason: unknown) => {
            release();
            const outcome = signal.aborted ? signal.reason : reason;
            scope?.finish(outcome);
            admission?.finish(outcome);
            // A cancelled call has no one to tell; after a deadline, say so whatever the
            // handler threw on its way out (an aborted worker task, a cancelled query).
            if (!signal.aborted) call.emit('error', failed(reason, requestId));
            else if (!(signal.reason instanceof FStoreError && signal.reason.code === 'cancelled'))
              call.emit('error', failed(signal.reason, requestId));
          },
        );
      };
      continue;
    }
    if (method.methodKind !== 'unary' && method.methodKind !== 'client_streaming')
      throw new Error(
        `${service.typeName}.${method.name}: ${method.methodKind} methods are not supported yet`,
      );
    implementation[method.localName] = (
      call: ServerUnaryCall<unknown, unknown> | ServerReadableStream<unknown, unknown>,
      callback: sendUnaryData<unknown>,
    ) => {
      const { signal, release } = deadlineSignal(call);
      const requestId = requestIdOf(call.metadata);
      const scope = observer?.begin(fullName, call.metadata, requestId);
      const gateCall = open(call, requestId);
      gateCall.catch(() => undefined);
      let admission: GateCall | undefined;
      const run = async () => {
        admission = await gateCall;
        let input: unknown;
        if (method.methodKind === 'unary') {
          input = (call as ServerUnaryCall<unknown, unknown>).request;
          if (input instanceof MalformedRequest) throw malformed(input, method.input.typeName);
          await admission.admit(input);
        } else
          input = requestsOf(
            call as ServerReadableStream<unknown, unknown>,
            signal,
            gateCall,
            method.input.typeName,
            idleMs,
          );
        return handler(input, { signal, metadata: call.metadata, principal: admission.principal, requestId });
      };
      (scope ? scope.run(run) : run()).then(
        (response) => {
          release();
          scope?.finish(undefined);
          const message =
            response instanceof EncodedMessage
              ? response
              : create(method.output, response as MessageInitShape<typeof method.output>);
          if (!(message instanceof EncodedMessage)) admission?.responded(message);
          admission?.finish(undefined);
          callback(null, message);
        },
        (reason: unknown) => {
          release();
          scope?.finish(reason);
          admission?.finish(reason);
          callback(failed(reason, requestId));
        },
      );
    };
  }
  return implementation;
}

function collectFiles(file: DescFile, into: Map<string, DescFile>): void {
  if (into.has(file.name)) return;
  into.set(file.name, file);
  for (const dependency of file.dependencies) collectFiles(dependency, into);
}

/** Reflection input in the shape @grpc/reflection reads: serialized FileDescriptorProtos per symbol. */
function reflectionPackage(services: readonly DescService[]) {
  const root: Record<string, { fileDescriptorProtos: Buffer[] }> = {};
  for (const service of services) {
    const files = new Map<string, DescFile>();
    collectFiles(service.file, files);
    root[service.typeName] = {
      fileDescriptorProtos: [...files.values()].map((file) =>
        Buffer.from(toBinary(FileDescriptorProtoSchema, file.proto)),
      ),
    };
  }
  return root;
}

export interface GrpcServerOptions {
  readonly host: string;
  /** 0 picks a free port. */
  readonly port: number;
  readonly maxMessageBytes: number;
  /** Draining time before in-flight calls are cut at shutdown. */
  readonly shutdownGraceMs: number;
  readonly logger: ServerLogger;
  /** TLS (src/grpc/tls.ts); default plaintext. */
  readonly credentials?: ServerCredentials;
  /** Serve gRPC server reflection (default true). */
  readonly reflection?: boolean;
}

export interface RunningGrpcServer {
  readonly port: number;
  /** Sets the health status of every service (and of the server, service ""). */
  setServing(serving: boolean): void;
  /** Health NOT_SERVING, stop accepting, drain in-flight calls, then cut them after the grace time. */
  shutdown(): Promise<void>;
}

export async function startGrpcServer(
  options: GrpcServerOptions,
  services: readonly { service: DescService; implementation: UntypedServiceImplementation }[],
): Promise<RunningGrpcServer> {
  const server = new Server({
    'grpc.max_receive_message_length': options.maxMessageBytes,
    'grpc.max_send_message_length': options.maxMessageBytes,
    'grpc.keepalive_permit_without_calls': 1,
  });
  const healthNames = ['', ...services.map(({ service }) => service.typeName)];
  const health = new HealthImplementation(
    Object.fromEntries(healthNames.map((name) => [name, 'NOT_SERVING'])),
  );
  health.addToServer(server);
  if (options.reflection !== false)
    new ReflectionService(
      reflectionPackage(services.map(({ service }) => service)) as unknown as ConstructorParameters<
        typeof ReflectionService
      >[0],
    ).addToServer(server);
  for (const { service, implementation } of services)
    server.addService(createGrpcServiceDefinition(service, 'server'), implementation);

  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(
      `${options.host}:${options.port}`,
      options.credentials ?? ServerCredentials.createInsecure(),
      (error, boundPort) =>
        error
          ? reject(
              new FStoreError(
                'unavailable',
                `cannot listen on ${options.host}:${options.port}: ${error.message}`,
              ),
            )
          : resolve(boundPort),
    );
  });

  const setStatus = (status: ServingStatus) => {
    for (const name of healthNames) health.setStatus(name, status);
  };
  let stopping: Promise<void> | undefined;
  return {
    port,
    setServing: (serving) => {
      if (!stopping) setStatus(serving ? 'SERVING' : 'NOT_SERVING');
    },
    shutdown: () => {
      stopping ??= new Promise<void>((resolve) => {
        setStatus('NOT_SERVING');
        const force = setTimeout(() => {
          options.logger.warn(
            { graceMs: options.shutdownGraceMs },
            'drain time over; cutting in-flight calls',
          );
          server.forceShutdown();
          resolve();
        }, options.shutdownGraceMs);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      return stopping;
    },
  };
}
