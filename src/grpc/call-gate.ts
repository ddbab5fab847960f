import { anonymousPrincipal, assertAllowed, isAllowedAnywhere, type Principal } from '../domain/access.js';
import { FStoreError } from '../domain/errors.js';
import type { AuditLog } from '../ports/audit-log.js';
import type { RateLimiter } from '../ports/rate-limiter.js';
import type { Authenticator } from '../security/authenticator.js';
import { type RpcPermission, rpcPermissions } from './rpc-permissions.js';
import type { CallGate, GateCall, GatedCall } from './server.js';
import { statusNameOf } from './status.js';

/**
 * The admission of every FStore call: authentication (once, before anything else), then the RPC's
 * permission on the project its request names (src/grpc/rpc-permissions.ts; an RPC missing there
 * is refused), then the caller's rate limits, charged for every message; at the end, the audit
 * record of the RPCs that change something (refusals included).
 */

export interface CallGateOptions {
  /** Undefined: authentication off, every caller is the anonymous admin (loopback by default). */
  readonly authenticator?: Authenticator;
  readonly rateLimiter?: RateLimiter;
  readonly auditLog?: AuditLog;
  /** The table (tests may pass a smaller one). */
  readonly permissions?: Readonly<Record<string, RpcPermission>>;
  /**
   * Most offline streams (ingest, historical retrieval, materialization: each holds a database
   * connection or query while it lasts) open at once in this process, and per principal, so idle
   * or slow streams of one caller cannot take every connection of the offline pool. Default: no cap.
   */
  readonly maxOfflineStreams?: number;
  readonly maxOfflineStreamsPerPrincipal?: number;
}

/** A refused offline stream may retry when one ends; a second is a fair first guess. */
const offlineStreamRetryMs = 1_000;

type Fields = Record<string, unknown>;

export function createCallGate(options: CallGateOptions): CallGate {
  const table = options.permissions ?? rpcPermissions;
  const { authenticator, rateLimiter, auditLog } = options;
  const maxStreams = options.maxOfflineStreams ?? Number.POSITIVE_INFINITY;
  const maxStreamsPerPrincipal = options.maxOfflineStreamsPerPrincipal ?? Number.POSITIVE_INFINITY;
  let openStreams = 0;
  const openStreamsOf = new Map<string, number>();

  /** Takes an offline stream slot for `principal`, or refuses with RESOURCE_EXHAUSTED. */
  const takeStream = (principal: Principal): void => {
    const own = openStreamsOf.get(principal.id) ?? 0;
    if (own >= maxStreamsPerPrincipal)
      throw new FStoreError(
        'resource_exhausted',
        `${principal.id} already has ${own} offline streams open (ingest, historical, materialize), the most one caller may have (FSTORE_MAX_OFFLINE_STREAMS_PER_PRINCIPAL); retry when one ends`,
        { retryAfterMs: offlineStreamRetryMs },
      );
    if (openStreams >= maxStreams)
      throw new FStoreError(
        'resource_exhausted',
        `this server already has ${openStreams} offline streams open (ingest, historical, materialize), its most (FSTORE_MAX_OFFLINE_STREAMS); retry when one ends`,
        { retryAfterMs: offlineStreamRetryMs },
      );
    openStreams += 1;
    openStreamsOf.set(principal.id, own + 1);
  };
  const releaseStream = (principal: Principal): void => {
    openStreams -= 1;
    const own = (openStreamsOf.get(principal.id) ?? 1) - 1;
    if (own <= 0) openStreamsOf.delete(principal.id);
    else openStreamsOf.set(principal.id, own);
  };

  const admitted = (
    method: string,
    entry: RpcPermission,
    principal: Principal,
    requestId: string,
  ): GateCall => {
    let first: Fields | undefined;
    let project = '';
    let rows = 0;
    let responseObject: string | undefined;
    let refused: unknown;
    let holdsStream = false;
    return {
      principal,
      admit(message: unknown) {
        const fields = message as Fields;
        if (first === undefined) {
          first = fields;
          const named = entry.project(fields);
          project = named ?? '';
          try {
            if (entry.permission !== null) {
              if (named !== undefined) assertAllowed(principal, entry.permission, named);
              else if (!isAllowedAnywhere(principal, entry.permission))
                throw new FStoreError(
                  'permission_denied',
                  `${principal.id} lacks permission ${entry.permission} on every project`,
                );
            }
            if (entry.offlineStream) {
              takeStream(principal);
              holdsStream = true;
            }
          } catch (error) {
            refused = error;
            throw error;
          }
        }
        if (!rateLimiter) return;
        const cost = entry.rows?.(fields) ?? 0;
        // A stream's later messages cost their rows only; the call was charged its request once.
        if (first !== fields && cost === 0) return;
        return rateLimiter.take(principal.id, cost, first === fields ? 1 : 0);
      },
      responded(response: unknown) {
        if (entry.audit?.rows) rows += entry.audit.rows(response as Fields);
        if (entry.audit?.responseObject) responseObject = entry.audit.responseObject(response as Fields);
      },
      finish(error: unknown) {
        if (holdsStream) {
          holdsStream = false;
          releaseStream(principal);
        }
        if (!entry.audit || !auditLog || first === undefined) return;
        auditLog.record({
          principal: principal.id,
          rpc: method,
          project,
          object: responseObject || entry.audit.object(first),
          outcome: statusNameOf(refused ?? error),
          rows: error === undefined ? rows : 0,
          requestId,
        });
      },
    };
  };

  return {
    open(method: string, call: GatedCall, requestId: string) {
      const entry = table[method];
      if (!entry) throw new FStoreError('permission_denied', `${method} has no permission entry: refused`);
      if (!authenticator) return admitted(method, entry, anonymousPrincipal, requestId);
      const principal = authenticator.authenticate(call.metadata, call.getAuthContext().sslPeerCertificate);
      return principal instanceof Promise
        ? principal.then((resolved) => admitted(method, entry, resolved, requestId))
        : admitted(method, entry, principal, requestId);
    },
  };
}
