import { Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { type ErrorCode, FStoreError } from '../domain/errors.js';

/** FStoreError codes are gRPC's codes by name: the mapping is one to one, both ways. */
export function grpcStatusOf(code: ErrorCode): status {
  return status[code.toUpperCase() as keyof typeof status];
}

export function errorCodeOf(grpcStatus: status): ErrorCode {
  const name = status[grpcStatus];
  return (name ? name.toLowerCase() : 'unknown') as ErrorCode;
}

/**
 * The gRPC error for anything a handler threw. Unexpected errors become INTERNAL with a generic
 * message (their detail goes to the log, not to the caller). UNAVAILABLE carries a retry hint.
 */
export function toServiceError(reason: unknown): Partial<ServiceError> {
  const error = reason instanceof FStoreError ? reason : new FStoreError('internal', 'internal error');
  const metadata = new Metadata();
  if (error.retryAfterMs !== undefined) metadata.set('retry-after-ms', String(Math.ceil(error.retryAfterMs)));
  else if (error.code === 'unavailable') metadata.set('retry-after-ms', '200');
  return { code: grpcStatusOf(error.code), details: error.message, metadata };
}

/** Converts a grpc-js client error into an FStoreError with the same code and message. */
export function fromServiceError(error: ServiceError): FStoreError {
  return new FStoreError(errorCodeOf(error.code), error.details || error.message, { cause: error });
}

/** The gRPC status name of a call's outcome: OK, or the FStoreError's code (INTERNAL for anything else). */
export function statusNameOf(error: unknown): string {
  if (error === undefined) return 'OK';
  return error instanceof FStoreError ? error.code.toUpperCase() : 'INTERNAL';
}
