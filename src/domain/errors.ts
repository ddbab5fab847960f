/**
 * The one error type of FStore. Its codes are a closed list matching gRPC's status codes one to
 * one (there are no user-defined codes), so every layer can fail with a precise status and the
 * gRPC layer maps it without guessing. Driver errors are translated at the adapter boundary.
 */
export const errorCodes = [
  'cancelled',
  'unknown',
  'invalid_argument',
  'deadline_exceeded',
  'not_found',
  'already_exists',
  'permission_denied',
  'resource_exhausted',
  'failed_precondition',
  'aborted',
  'out_of_range',
  'unimplemented',
  'internal',
  'unavailable',
  'data_loss',
  'unauthenticated',
] as const;

export type ErrorCode = (typeof errorCodes)[number];

export class FStoreError extends Error {
  override readonly name = 'FStoreError';
  readonly code: ErrorCode;
  /** When the caller may try again (rate limits, overload); sent as `retry-after-ms` metadata. */
  readonly retryAfterMs: number | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; retryAfterMs?: number }) {
    super(message, options);
    this.code = code;
    this.retryAfterMs = options?.retryAfterMs;
  }

  /** Wraps anything thrown into an FStoreError; an FStoreError passes through unchanged. */
  static from(reason: unknown, code: ErrorCode = 'internal'): FStoreError {
    if (reason instanceof FStoreError) return reason;
    if (reason instanceof Error) return new FStoreError(code, reason.message, { cause: reason });
    return new FStoreError(code, String(reason));
  }
}

export const invalidArgument = (field: string, problem: string): FStoreError =>
  new FStoreError('invalid_argument', `${field}: ${problem}`);

export const notFound = (what: string): FStoreError => new FStoreError('not_found', what);
