import { FStoreError } from '../domain/errors.js';

/**
 * A store failure in plain words for callers: the driver's own text (addresses, SQL, socket
 * paths) stays in the error's cause and the server log, never in a status message.
 */

function codeOf(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string') return code;
  // Node's happy-eyeballs connect reports an AggregateError whose parts carry the code.
  const parts = (error as { errors?: unknown }).errors;
  if (Array.isArray(parts)) for (const part of parts) if (codeOf(part) !== undefined) return codeOf(part);
  return undefined;
}

const byCode: readonly [RegExp, string][] = [
  [/^ECONNREFUSED$/, 'connection refused'],
  [/^(ECONNRESET|ECONNABORTED|EPIPE)$/, 'connection lost'],
  [/^ETIMEDOUT$/, 'timed out connecting'],
  [/^(EHOSTUNREACH|EHOSTDOWN|ENETUNREACH|ENETDOWN)$/, 'host unreachable'],
  [/^(ENOTFOUND|EAI_AGAIN)$/, 'host name not resolved'],
  [/^ENOENT$/, 'socket not found'],
  [/^57P0[123]$/, 'the server is shutting down or starting up'],
  [/^(53300|53400)$/, 'too many connections'],
  [/^28/, 'authentication failed'],
  [/^3D000$/, 'the database does not exist'],
  [/^42501$/, 'permission denied'],
  [/^08/, 'connection lost'],
];

const byMessage: readonly [RegExp, string][] = [
  [/ECONNREFUSED/, 'connection refused'],
  [/ECONNRESET|EPIPE/, 'connection lost'],
  [/ETIMEDOUT/, 'timed out connecting'],
  [/ENOTFOUND|EAI_AGAIN/, 'host name not resolved'],
  [/timeout exceeded when trying to connect/i, 'timed out connecting'],
  [
    /connection terminated|server closed the connection|connection (?:error|ended)|connection lost|socket closed/i,
    'connection lost',
  ],
  [/not queryable|pool after calling end|connection is closed/i, 'connection closed'],
  [/command timed out|timed out/i, 'timed out'],
  [/enableOfflineQueue|not connected|stream isn't writeable/i, 'not connected (connection lost)'],
  [/NOAUTH|WRONGPASS|password|^SASL: /i, 'authentication failed'],
  [/NOPERM/, 'permission denied'],
  [/CLUSTERDOWN/, 'the cluster is down'],
  [/TRYAGAIN|MOVED|ASK/, 'the cluster is resharding'],
  [/LOADING/, 'the server is loading its data'],
];

export function describeConnectionFailure(error: unknown): string {
  const code = codeOf(error);
  if (code !== undefined) for (const [pattern, words] of byCode) if (pattern.test(code)) return words;
  const message = error instanceof Error ? error.message : String(error);
  for (const [pattern, words] of byMessage) if (pattern.test(message)) return words;
  return 'cannot be reached';
}

/**
 * Why a store did not answer, in the same plain words, for the server log and /readyz. An
 * adapter's 'unavailable' error already says it after "is unavailable: " (the words callers get
 * in the status message); anything else is described from the driver error it wraps.
 */
export function failureReason(error: unknown): string {
  if (error instanceof FStoreError) {
    if (error.code === 'unavailable') {
      const said = /\bis unavailable: (.+)$/s.exec(error.message)?.[1];
      if (said !== undefined) return said;
    }
    if (error.code === 'deadline_exceeded') return 'timed out';
    if (error.cause !== undefined) return describeConnectionFailure(error.cause);
  }
  return describeConnectionFailure(error);
}
