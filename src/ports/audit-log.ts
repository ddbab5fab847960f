/**
 * The append-only audit log: who called which RPC on what, with which outcome. Callers pass names
 * only (principal, RPC, project, object, status name), never feature values, request bodies, keys,
 * tokens or other secrets; over-long strings are cut defensively (512 characters) but nothing is
 * scrubbed. `src/adapters/postgres/postgres-audit-log.ts` implements it.
 */

export interface AuditEventInput {
  /** Who: 'key:<id>', 'jwt:<sub>', 'cert:<name>' or 'anonymous'. */
  readonly principal: string;
  /** The full RPC name, e.g. 'fstore.v1.FeatureService/WriteOnlineFeatures'. */
  readonly rpc: string;
  /** '' when the call has none. */
  readonly project: string;
  /** What the call acted on (feature view, key id, ...); '' when none. */
  readonly object: string;
  /** The gRPC status name: 'OK', 'INVALID_ARGUMENT', ... */
  readonly outcome: string;
  /** Rows written or ingested; 0 for other calls. */
  readonly rows: number;
  readonly requestId: string;
  /** Microseconds since the epoch; default: when `record` is called. */
  readonly timeMicros?: number;
}

export interface AuditEvent extends Required<AuditEventInput> {
  /** Increases in the order events were written; newest first is highest id first. */
  readonly id: number;
}

/**
 * When the log itself had to drop events (its queue was full while the database was unreachable),
 * it writes one event of this RPC, principal 'fstore' and outcome 'RESOURCE_EXHAUSTED' as soon as
 * it can, with `rows` = the number of events dropped, so the gap is visible in the log itself.
 */
export const auditEventsDroppedRpc = 'fstore.audit/EventsDropped';

/** Most events one `list` call returns. */
export const maxAuditListLimit = 10_000;

export interface AuditFilter {
  /** Only events of these projects; undefined: every project (an empty list matches nothing). */
  readonly projects?: readonly string[];
  readonly principal?: string;
  /** A full RPC name, or a method name alone ('WriteOnlineFeatures'), matched as the suffix '/Name'. */
  readonly rpc?: string;
  /** Event time ≥ this (microseconds). */
  readonly startMicros?: number;
  /** Event time < this (microseconds). */
  readonly endMicros?: number;
  /** 1 to `maxAuditListLimit`. */
  readonly limit: number;
  /** Paging: only events older than this id (pass the last id of the previous page). */
  readonly beforeId?: number;
}

export interface AuditLog {
  /**
   * Queues the event; it is written in a batch shortly after (never blocks the call, never
   * throws). Events are written at least once, in the order recorded.
   */
  record(event: AuditEventInput): void;
  /**
   * Resolves once everything recorded so far is in the database (tests, shutdown). Rejects with
   * FStoreError 'unavailable' if it cannot be written within the timeout; the events stay queued
   * and are written when the database is back.
   */
  flush(): Promise<void>;
  /** Newest first (by id). Events still queued are not included: `flush()` first to see them. */
  list(filter: AuditFilter): Promise<AuditEvent[]>;
  /** Flushes first (bounded wait; events that could not be written are reported to the logger). */
  close(): Promise<void>;
}
