import { z } from 'zod';
import { FStoreError, invalidArgument } from '../../domain/errors.js';
import {
  type AuditEvent,
  type AuditEventInput,
  type AuditFilter,
  type AuditLog,
  auditEventsDroppedRpc,
  maxAuditListLimit,
} from '../../ports/audit-log.js';
import { createMigratedPool } from './migrate.js';
import { type PostgresLogger, type PostgresOptionsInput, resolvePostgresOptions } from './options.js';

/**
 * The audit log in PostgreSQL (migration 005, table `audit_events`, append-only by trigger).
 *
 * `record` only queues: events are written by one background writer, one multi-row INSERT per
 * batch, `flushIntervalMs` after the first queued event or at once when `batchSize` are queued.
 * Batches are written one at a time, in order. A failed INSERT is retried with exponential
 * backoff (`retryInitialDelayMs` doubling to `retryMaxDelayMs`) for as long as it takes: an
 * outage delays audit events, it does not lose them. Only memory bounds that: beyond
 * `maxQueuedEvents` new events are dropped, the count is reported to the logger as an error, and
 * once writing works again an event of RPC `auditEventsDroppedRpc` records how many were lost.
 * Delivery is at least once: a batch whose connection dies during COMMIT is written again.
 */

/** The part of a logger the audit log uses; pino's logger fits it as it is. */
export interface AuditLogLogger extends PostgresLogger {
  error(details: Record<string, unknown>, message: string): void;
}

export interface AuditLogOptions {
  /** Longest an event waits in the queue before its batch is written (unless PostgreSQL is down). */
  readonly flushIntervalMs: number;
  /** Queued events that trigger a write at once; also the most rows one INSERT carries. */
  readonly batchSize: number;
  /** Most events held in memory while PostgreSQL is slow or down; more are dropped and reported. */
  readonly maxQueuedEvents: number;
  /** How long `flush()` waits before rejecting with 'unavailable'. */
  readonly flushTimeoutMs: number;
  /** First pause after a failed write; doubles up to `retryMaxDelayMs`. */
  readonly retryInitialDelayMs: number;
  readonly retryMaxDelayMs: number;
}

export type PostgresAuditLogOptionsInput = Omit<PostgresOptionsInput, 'logger'> &
  Partial<AuditLogOptions> & {
    /** Outages (warn), dropped or unwritten events (error); silent when absent. */
    readonly logger?: AuditLogLogger;
  };

export const auditLogDefaults = {
  flushIntervalMs: 100, // a tenth of a second: recent calls show up quickly, INSERTs stay few
  batchSize: 500,
  maxQueuedEvents: 100_000, // ~100k events of a few hundred bytes: tens of MB at worst
  flushTimeoutMs: 5_000, // five seconds
  retryInitialDelayMs: 100, // a tenth of a second
  retryMaxDelayMs: 5_000, // five seconds: events flow again at most ~5 s after the database is back
} satisfies AuditLogOptions;

/** One writer and the odd `list`: the registry's pool size would only hold idle connections. */
const defaultPoolSize = 2;
/** Longest stored string; callers pass names, so anything longer is a bug cut short, not data. */
const maxTextLength = 512;
/** Queue-full errors are logged at most this often (with the count since the last one). */
const dropReportIntervalMs = 10_000;

const purpose = 'audit log database';

const milliseconds = (max: number) => z.number().int().min(1).max(max);
const optionsSchema = z.object({
  flushIntervalMs: milliseconds(60_000),
  batchSize: z.number().int().min(1).max(10_000),
  maxQueuedEvents: z.number().int().min(1).max(10_000_000),
  flushTimeoutMs: milliseconds(600_000),
  retryInitialDelayMs: milliseconds(600_000),
  retryMaxDelayMs: milliseconds(600_000),
});

function resolveAuditLogOptions(input: Partial<AuditLogOptions>): AuditLogOptions {
  const merged = { ...auditLogDefaults };
  for (const key of Object.keys(auditLogDefaults) as (keyof AuditLogOptions)[]) {
    const value = input[key];
    if (value !== undefined) merged[key] = value;
  }
  const result = optionsSchema.safeParse(merged);
  if (!result.success) {
    const issue = result.error.issues[0];
    throw new FStoreError(
      'invalid_argument',
      `audit log option ${issue?.path.join('.') || 'options'}: ${issue?.message ?? 'invalid value'}`,
    );
  }
  if (result.data.retryMaxDelayMs < result.data.retryInitialDelayMs)
    throw new FStoreError(
      'invalid_argument',
      'audit log option retryMaxDelayMs: must be at least retryInitialDelayMs',
    );
  return result.data;
}

/** An event as queued: sanitized, with its time fixed when it was recorded. */
interface QueuedEvent {
  readonly timeMicros: number;
  readonly principal: string;
  readonly rpc: string;
  readonly project: string;
  readonly object: string;
  readonly outcome: string;
  readonly rows: number;
  readonly requestId: string;
}

/** A string PostgreSQL accepts, at most `maxTextLength` long (never splitting a surrogate pair). */
function text(value: unknown): string {
  let result = typeof value === 'string' ? value : value === undefined || value === null ? '' : String(value);
  // text cannot hold NUL; a refused INSERT would stall every later event behind it.
  if (result.includes('\u0000')) result = result.replaceAll('\u0000', '');
  if (result.length > maxTextLength) {
    result = result.slice(0, maxTextLength);
    const last = result.charCodeAt(maxTextLength - 1);
    if (last >= 0xd800 && last <= 0xdbff) result = result.slice(0, -1);
  }
  return result;
}

function sanitize(event: AuditEventInput, nowMicros: number): QueuedEvent {
  const time = Math.trunc(Number(event.timeMicros));
  const rows = Math.trunc(Number(event.rows));
  return {
    // Any safe integer of microseconds (±285 years) is a valid timestamptz.
    timeMicros: Number.isSafeInteger(time) ? time : nowMicros,
    principal: text(event.principal),
    rpc: text(event.rpc),
    project: text(event.project),
    object: text(event.object),
    outcome: text(event.outcome),
    rows: Number.isSafeInteger(rows) && rows > 0 ? rows : 0,
    requestId: text(event.requestId),
  };
}

// unnest keeps the batch one statement whatever its size (8 parameters, not 8 per row); WITH
// ORDINALITY + ORDER BY hands out the identity ids in the order the events were recorded.
// Microseconds become timestamps exactly (float8 holds every safe integer; see the offline store).
const insertSql = `INSERT INTO audit_events (time, principal, rpc, project, object, outcome, rows, request_id)
  SELECT timestamptz 'epoch' + e.micros * interval '1 microsecond',
         e.principal, e.rpc, e.project, e.object, e.outcome, e.rows, e.request_id
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[])
         WITH ORDINALITY AS e(micros, principal, rpc, project, object, outcome, rows, request_id, n)
   ORDER BY e.n`;

interface AuditRow {
  id: string;
  time_micros: string;
  principal: string;
  rpc: string;
  project: string;
  object: string;
  outcome: string;
  rows: string;
  request_id: string;
}

// bigint and timestamps as text (microseconds), never through a JavaScript Date.
const selectColumns = `id::text, ((EXTRACT(EPOCH FROM time) * 1000000)::bigint)::text AS time_micros,
  principal, rpc, project, object, outcome, rows::text, request_id`;

const toEvent = (row: AuditRow): AuditEvent => ({
  id: Number(row.id),
  timeMicros: Number(row.time_micros),
  principal: row.principal,
  rpc: row.rpc,
  project: row.project,
  object: row.object,
  outcome: row.outcome,
  rows: Number(row.rows),
  requestId: row.request_id,
});

function checkInteger(name: string, value: number | undefined, min: number, max: number): void {
  if (value === undefined) return;
  if (!Number.isSafeInteger(value) || value < min || value > max)
    throw invalidArgument(name, `must be an integer from ${min} to ${max}, got ${value}`);
}

interface Waiter {
  readonly target: number;
  readonly resolve: () => void;
  readonly timer: NodeJS.Timeout;
}

export async function createPostgresAuditLog(input: PostgresAuditLogOptionsInput): Promise<AuditLog> {
  const {
    flushIntervalMs,
    batchSize,
    maxQueuedEvents,
    flushTimeoutMs,
    retryInitialDelayMs,
    retryMaxDelayMs,
  } = resolveAuditLogOptions(input);
  // The audit options ride along unread: resolvePostgresOptions keeps only its own.
  const options = resolvePostgresOptions({ ...input, poolSize: input.poolSize ?? defaultPoolSize });
  const logger = input.logger;
  const pool = await createMigratedPool(options, purpose);

  const queue: QueuedEvent[] = [];
  /** Events written so far; queue[0] is event number `written + 1`. */
  let written = 0;
  /** Write everything up to this event number without waiting for the interval. */
  let drainTarget = 0;
  let writing = false;
  /** The pending interval write or retry. */
  let timer: NodeJS.Timeout | undefined;
  /** The current backoff pause; 0 while writes succeed. */
  let retryDelayMs = 0;
  let failuresInOutage = 0;
  let lastError: FStoreError | undefined;
  const waiters = new Set<Waiter>();
  /** Dropped for a full queue: not yet recorded as an EventsDropped event / not yet logged. */
  let droppedUnrecorded = 0;
  let droppedUnlogged = 0;
  let lastDropReport = 0;
  let closing = false;
  let ended = false;
  let closed: Promise<void> | undefined;

  async function insert(batch: readonly QueuedEvent[]): Promise<void> {
    await pool.query(insertSql, [
      batch.map((event) => String(event.timeMicros)),
      batch.map((event) => event.principal),
      batch.map((event) => event.rpc),
      batch.map((event) => event.project),
      batch.map((event) => event.object),
      batch.map((event) => event.outcome),
      batch.map((event) => String(event.rows)),
      batch.map((event) => event.requestId),
    ]);
  }

  function schedule(delayMs: number): void {
    if (timer !== undefined || ended) return;
    timer = setTimeout(() => {
      timer = undefined;
      drainTarget = written + queue.length;
      void writeQueued();
    }, delayMs);
    // A queued write or an outage's retries must not keep the process alive; close() flushes.
    timer.unref();
  }

  /** Writes now instead of at the pending interval or retry. */
  function writeNow(): void {
    clearTimeout(timer);
    timer = undefined;
    if (!writing) void writeQueued();
  }

  async function writeQueued(): Promise<void> {
    writing = true;
    let failed = false;
    try {
      // Full batches always; a partial one only when the interval is up or someone flushes.
      while (queue.length > 0 && (written < drainTarget || queue.length >= batchSize)) {
        const batch = queue.slice(0, batchSize);
        try {
          await insert(batch);
        } catch (error) {
          noteFailure(FStoreError.from(error), batch.length);
          failed = true;
          break;
        }
        queue.splice(0, batch.length);
        written += batch.length;
        noteSuccess();
      }
    } finally {
      writing = false;
    }
    if (failed) {
      // ±20 % so the processes of a fleet do not all retry in step after a database restart.
      schedule(retryDelayMs * (0.8 + Math.random() * 0.4));
    } else if (queue.length > 0) schedule(flushIntervalMs);
  }

  function noteFailure(error: FStoreError, batchLength: number): void {
    lastError = error;
    retryDelayMs = retryDelayMs === 0 ? retryInitialDelayMs : Math.min(retryDelayMs * 2, retryMaxDelayMs);
    failuresInOutage += 1;
    // Once per outage: the retries that follow would only repeat it.
    if (failuresInOutage === 1)
      logger?.warn(
        { err: error, code: error.code, queued: queue.length, batch: batchLength },
        `audit log: writing ${batchLength} events failed; ${queue.length} events stay queued and are retried with backoff`,
      );
  }

  function noteSuccess(): void {
    if (failuresInOutage > 0)
      logger?.warn(
        { failures: failuresInOutage, queued: queue.length },
        `audit log: writing works again after ${failuresInOutage} failed attempts`,
      );
    failuresInOutage = 0;
    retryDelayMs = 0;
    lastError = undefined;
    for (const waiter of waiters)
      if (waiter.target <= written) {
        clearTimeout(waiter.timer);
        waiters.delete(waiter);
        waiter.resolve();
      }
    if (droppedUnrecorded > 0) {
      // The gap goes into the log itself, beyond the queue limit (one event).
      queue.push({
        timeMicros: Date.now() * 1000,
        principal: 'fstore',
        rpc: auditEventsDroppedRpc,
        project: '',
        object: '',
        outcome: 'RESOURCE_EXHAUSTED',
        rows: droppedUnrecorded,
        requestId: '',
      });
      reportDropped(true);
      droppedUnrecorded = 0;
    }
  }

  function drop(reason: string): void {
    droppedUnrecorded += 1;
    droppedUnlogged += 1;
    if (Date.now() - lastDropReport >= dropReportIntervalMs) reportDropped(false, reason);
  }

  function reportDropped(recovered: boolean, reason = 'the queue was full'): void {
    if (droppedUnlogged === 0) return;
    logger?.error(
      { dropped: droppedUnlogged, queued: queue.length, err: lastError },
      recovered
        ? `audit log: ${droppedUnlogged} audit events were dropped (${reason}); an ${auditEventsDroppedRpc} event records the count`
        : `audit log: dropped ${droppedUnlogged} audit events: ${reason} (${queue.length} events waiting for the database)`,
    );
    droppedUnlogged = 0;
    lastDropReport = Date.now();
  }

  /** Resolves once every event queued now is written; rejects 'unavailable' after `timeoutMs`. */
  function waitWritten(timeoutMs: number): Promise<void> {
    const target = written + queue.length;
    if (target <= written) return Promise.resolve();
    if (ended)
      return Promise.reject(
        new FStoreError('unavailable', `audit log is closed; ${target - written} events were not written`),
      );
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        target,
        resolve,
        timer: setTimeout(() => {
          waiters.delete(waiter);
          const missing = target - written;
          reject(
            new FStoreError(
              'unavailable',
              `audit log: ${missing} events are not written after ${timeoutMs} ms${
                lastError ? ` (${lastError.message})` : ''
              }; they stay queued and are retried`,
              { cause: lastError },
            ),
          );
        }, timeoutMs),
      };
      waiters.add(waiter);
      drainTarget = Math.max(drainTarget, target);
      // An explicit flush also cuts a backoff pause short.
      writeNow();
    });
  }

  return {
    record(event) {
      if (closing) {
        drop('the audit log is closed');
        return;
      }
      if (queue.length >= maxQueuedEvents) {
        drop(`the queue holds its maximum of ${maxQueuedEvents} events`);
        return;
      }
      queue.push(sanitize(event, Date.now() * 1000));
      // A full batch goes at once, unless a retry is pending (it writes the whole queue anyway).
      if (queue.length >= batchSize && retryDelayMs === 0) writeNow();
      else if (!writing) schedule(flushIntervalMs);
    },

    flush: () => waitWritten(flushTimeoutMs),

    async list(filter: AuditFilter) {
      checkInteger('limit', filter.limit, 1, maxAuditListLimit);
      checkInteger('beforeId', filter.beforeId, 1, Number.MAX_SAFE_INTEGER);
      checkInteger('startMicros', filter.startMicros, Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
      checkInteger('endMicros', filter.endMicros, Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
      if (filter.projects?.length === 0) return [];
      const conditions: string[] = [];
      const values: unknown[] = [];
      const parameter = (value: unknown) => {
        values.push(value);
        return `$${values.length}`;
      };
      if (filter.projects) conditions.push(`project = ANY(${parameter(filter.projects)}::text[])`);
      if (filter.principal !== undefined) conditions.push(`principal = ${parameter(filter.principal)}`);
      if (filter.rpc !== undefined) {
        if (filter.rpc.includes('/')) conditions.push(`rpc = ${parameter(filter.rpc)}`);
        else {
          // A method name alone: compare the tail (no LIKE, so '_' and '%' in it mean themselves).
          const suffix = parameter(`/${filter.rpc}`);
          conditions.push(`right(rpc, length(${suffix}::text)) = ${suffix}::text`);
        }
      }
      if (filter.startMicros !== undefined)
        conditions.push(
          `time >= timestamptz 'epoch' + ${parameter(String(filter.startMicros))}::bigint * interval '1 microsecond'`,
        );
      if (filter.endMicros !== undefined)
        conditions.push(
          `time < timestamptz 'epoch' + ${parameter(String(filter.endMicros))}::bigint * interval '1 microsecond'`,
        );
      if (filter.beforeId !== undefined)
        conditions.push(`id < ${parameter(String(filter.beforeId))}::bigint`);
      const where = conditions.length > 0 ? `WHERE ${conditions.join(' AND ')}` : '';
      const result = await pool.query<AuditRow>(
        // Qualified: a bare `id` would sort by the selected id::text.
        `SELECT ${selectColumns} FROM audit_events ${where}
           ORDER BY audit_events.id DESC LIMIT ${parameter(filter.limit)}`,
        values,
      );
      return result.rows.map(toEvent);
    },

    close() {
      closed ??= (async () => {
        closing = true;
        try {
          await waitWritten(options.closeTimeoutMs);
        } catch (error) {
          logger?.error(
            { err: error, lost: queue.length },
            `audit log: closing with ${queue.length} audit events that could not be written; they are lost`,
          );
        }
        reportDropped(false, 'they were recorded while the audit log was closing or full');
        ended = true;
        clearTimeout(timer);
        timer = undefined;
        await pool.end();
      })();
      return closed;
    },
  };
}
