import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { PoolClient } from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { FStoreError, invalidArgument } from '../../../domain/errors.js';
import type { FeatureView } from '../../../domain/model.js';
import type {
  OfflineRowBatch,
  OfflineStore,
  OfflineWriteResult,
  StoredStreamCheckpoint,
  StreamBatchCommit,
  StreamBatchCommitResult,
} from '../../../ports/offline-store.js';
import {
  createPostgresPool,
  type PostgresPool,
  quoteIdentifier,
  type TransactionOptions,
  translateDatabaseError,
} from '../pool.js';
import { copyColumns, encodeBatch, encodeKeyTable, valuePath } from './binary-copy.js';
import { createRowSegmenter, type RowSegment } from './binary-rows.js';
import { decodeLatestRows, latestRowsCopy, latestRowsFieldCount, timeLiteral } from './latest-rows.js';
import { type PostgresOfflineStoreOptionsInput, resolvePostgresOfflineStoreOptions } from './options.js';
import {
  entityTimesQuery,
  keyTableDefinition,
  pointInTimeQuery,
  toEntityTimes,
} from './point-in-time-rows.js';
import {
  columnsTable,
  layoutFromStored,
  monthBoundLiteral,
  monthOfPartition,
  monthStartMicros,
  monthsOf,
  partitionName,
  planLayout,
  postgresTypeOf,
  qualified,
  type StoredMapping,
  type ViewLayout,
  viewTableName,
  writeOrderColumn,
  writeOrderSequenceName,
} from './table-layout.js';

/** The port plus what only operators use so far. */
export interface PostgresOfflineStore extends OfflineStore {
  /**
   * Retention: drops the month partitions of `view` that end at or before `beforeMicros` (whole
   * partitions only: a month that straddles the cutoff stays). Returns the dropped tables' names.
   */
  dropPartitionsBefore(view: Pick<FeatureView, 'id'>, beforeMicros: number): Promise<string[]>;
}

const purpose = 'offline database';

/**
 * The offline store in PostgreSQL. One table per view id (`offline_view_<id>`), range-partitioned
 * by month of event time, with no default partition; see table-layout.ts for columns and
 * binary-copy.ts for the COPY encoding.
 *
 * Locks, and why: a month partition is created as a plain table and then ATTACHed, which takes
 * only SHARE UPDATE EXCLUSIVE on the parent (PostgreSQL ≥ 12), so a writer that adds a month does
 * not block readers or other writers' COPY for the rest of its transaction, as
 * `CREATE TABLE … PARTITION OF` (ACCESS EXCLUSIVE on the parent) would. Schema changes
 * (ensureView of a new version) take a per-view advisory lock and ACCESS EXCLUSIVE briefly, in
 * their own transaction; call ensureView before writing so that never happens inside a long ingest.
 *
 * Stream checkpoints (`offline_stream_checkpoints`) live in the same database so that a stream
 * batch's window rows and its checkpoint commit in one transaction (exactly-once results).
 */
export async function createPostgresOfflineStore(
  input: PostgresOfflineStoreOptionsInput,
): Promise<PostgresOfflineStore> {
  const options = resolvePostgresOfflineStoreOptions(input);
  const pool: PostgresPool = options.ownsPool ? createPostgresPool(options.postgres, purpose) : options.pool;
  const { schema } = options;
  const table = (name: string) => qualified(schema, name);
  const lockKey = (what: string) => `fstore.${schema}.offline.${what}`;
  const lock = (client: PoolClient, what: string) =>
    client.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [lockKey(what)]);

  try {
    // What must exist once per schema; idempotent, under a lock so concurrent starts do not race.
    await pool.transaction(async (client) => {
      await lock(client, 'bootstrap');
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdentifier(schema)}`);
      await client.query(`CREATE TABLE IF NOT EXISTS ${table(columnsTable)} (
        view_id     integer NOT NULL,
        version     integer NOT NULL,
        role        text    NOT NULL CHECK (role IN ('key', 'feature')),
        name        text    NOT NULL,
        column_name text    NOT NULL,
        value_type  text    NOT NULL,
        PRIMARY KEY (view_id, version, role, name)
      )`);
      await client.query(`CREATE TABLE IF NOT EXISTS ${table(materializationsTable)} (
        view_id     integer     PRIMARY KEY,
        start_time  timestamptz NOT NULL,
        end_time    timestamptz NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now()
      )`);
      await client.query(`CREATE TABLE IF NOT EXISTS ${table(streamCheckpointsTable)} (
        project     text        NOT NULL,
        aggregation text        NOT NULL,
        topic       text        NOT NULL,
        partition   integer     NOT NULL,
        generation  bigint      NOT NULL,
        state       bytea       NOT NULL,
        updated_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (project, aggregation, topic, partition)
      )`);
    });
    // Tables made before rows had a write order get it now, before any read depends on it.
    const unordered = await pool.query<{ name: string }>(
      `SELECT c.relname AS name FROM pg_class c
       WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
         AND c.relkind = 'p' AND c.relname ~ '^offline_view_[0-9]+$'
         AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                         WHERE a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped)
       ORDER BY 1`,
      [schema, writeOrderColumn],
    );
    for (const { name } of unordered.rows)
      await pool.transaction(async (client) => {
        // A one-off rewrite of a table of any size: not a runaway statement.
        await client.query('SET LOCAL statement_timeout = 0');
        await addWriteOrder(client, Number(name.slice('offline_view_'.length)));
      });
  } catch (error) {
    if (options.ownsPool) await pool.end();
    throw translateDatabaseError(error, purpose);
  }

  /** Layouts known to be committed, by "id:version". */
  const layouts = new Map<string, ViewLayout>();
  const layoutKey = (view: Pick<FeatureView, 'id' | 'version'>) => `${view.id}:${view.version}`;
  let closed = false;

  const readMappings = async (client: PoolClient, viewId: number, version?: number) => {
    const result = await client.query<{
      version: number;
      role: 'key' | 'feature';
      name: string;
      column_name: string;
      value_type: string;
    }>(
      `SELECT version, role, name, column_name, value_type FROM ${table(columnsTable)}
       WHERE view_id = $1 AND ($2::integer IS NULL OR version = $2)`,
      [viewId, version ?? null],
    );
    return result.rows.map(
      (row): StoredMapping => ({
        version: row.version,
        role: row.role,
        name: row.name,
        columnName: row.column_name,
        valueType: row.value_type as StoredMapping['valueType'],
      }),
    );
  };

  /** The write-order column's type and default (see `writeOrderColumn`). */
  function writeOrderDefinition(viewId: number): string {
    const sequence = stringLiteral(table(writeOrderSequenceName(viewId)));
    return `${writeOrderColumn} bigint NOT NULL DEFAULT nextval(${sequence}::regclass)`;
  }

  /**
   * Gives an existing view table made before rows had a write order its `seq` column, in the
   * caller's transaction; does nothing when it has one or does not exist. Adding a column with a
   * volatile default rewrites the table (every partition) under ACCESS EXCLUSIVE, once: the stored
   * rows get distinct values in the order the rewrite reads them, arbitrary but fixed, all below
   * those of rows written afterwards.
   */
  async function addWriteOrder(client: PoolClient, viewId: number): Promise<void> {
    const parent = table(viewTableName(viewId));
    const present = async () => {
      const result = await client.query<{ table: boolean; column: boolean }>(
        `SELECT to_regclass($1) IS NOT NULL AS table,
                EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2
                        AND NOT attisdropped) AS column`,
        [parent, writeOrderColumn],
      );
      const row = result.rows[0];
      return !row?.table || row.column;
    };
    if (await present()) return;
    await lock(client, `view.${viewId}`);
    if (await present()) return; // another process added it meanwhile
    const sequence = table(writeOrderSequenceName(viewId));
    await client.query(`CREATE SEQUENCE IF NOT EXISTS ${sequence} AS bigint NO CYCLE`);
    await client.query(`ALTER TABLE ${parent} ADD COLUMN ${writeOrderDefinition(viewId)}`);
    await client.query(`ALTER SEQUENCE ${sequence} OWNED BY ${parent}.${quoteIdentifier(writeOrderColumn)}`);
  }

  /** Makes the table and columns of a view version exist; in the caller's transaction. */
  async function ensureLayout(client: PoolClient, view: FeatureView): Promise<ViewLayout> {
    // A table another process made without a write order since this one started (an older server
    // during a rolling upgrade): readers of this process order by it.
    await addWriteOrder(client, view.id);
    const known = layoutFromStored(view, await readMappings(client, view.id, view.version));
    if (known) return known;
    await lock(client, `view.${view.id}`);
    const stored = await readMappings(client, view.id);
    const mine = stored.filter((mapping) => mapping.version === view.version);
    if (mine.length > 0) {
      const layout = layoutFromStored(view, mine);
      if (layout) return layout;
      throw new FStoreError(
        'failed_precondition',
        `offline store: feature view id ${view.id} version ${view.version} is already stored with other keys or features`,
      );
    }
    const layout = planLayout(view, stored);
    const parent = table(layout.table);
    const columns = [...layout.keys, ...layout.features];
    const exists = await client.query<{ exists: boolean }>('SELECT to_regclass($1) IS NOT NULL AS exists', [
      parent,
    ]);
    if (!exists.rows[0]?.exists) {
      const sequence = table(writeOrderSequenceName(view.id));
      await client.query(`CREATE SEQUENCE IF NOT EXISTS ${sequence} AS bigint NO CYCLE`);
      // Key columns may be null: rows of a version with other join keys have none there.
      await client.query(`CREATE TABLE ${parent} (
        ${layout.keys.map((key) => `${quoteIdentifier(key.columnName)} ${postgresTypeOf(key.valueType)},`).join('\n')}
        event_time   timestamptz NOT NULL,
        created_time timestamptz NOT NULL,
        view_version integer     NOT NULL,
        ${writeOrderDefinition(view.id)}
        ${layout.features.map((feature) => `, ${quoteIdentifier(feature.columnName)} ${postgresTypeOf(feature.valueType)}`).join('\n')}
      ) PARTITION BY RANGE (event_time)`);
      await client.query(
        `ALTER SEQUENCE ${sequence} OWNED BY ${parent}.${quoteIdentifier(writeOrderColumn)}`,
      );
      // Time-range scans (materialization, "every entity over a range").
      await client.query(
        `CREATE INDEX ${quoteIdentifier(`${layout.table}_time_idx`)} ON ${parent} (event_time)`,
      );
    } else {
      const added = columns.filter(
        (column) => !stored.some((other) => other.columnName === column.columnName),
      );
      if (added.length > 0)
        await client.query(
          `ALTER TABLE ${parent} ${added
            .map(
              (column) =>
                `ADD COLUMN IF NOT EXISTS ${quoteIdentifier(column.columnName)} ${postgresTypeOf(column.valueType)}`,
            )
            .join(', ')}`,
        );
    }
    // Point-in-time lookups ("greatest event time ≤ t per key, ties by latest created time") and
    // key-ordered merge scans: one index per distinct set of key columns. The write order is not
    // in it: it only orders full ties, a few rows sorted after the index scan, and tables made
    // before it existed keep the same indexes.
    const keyColumns = layout.keys.map((key) => key.columnName).join(',');
    const versions = new Set(stored.map((mapping) => mapping.version));
    const keySetSeen = [...versions].some(
      (version) =>
        stored
          .filter((mapping) => mapping.version === version && mapping.role === 'key')
          .map((mapping) => mapping.columnName)
          .join(',') === keyColumns,
    );
    if (!keySetSeen)
      await client.query(
        `CREATE INDEX IF NOT EXISTS ${quoteIdentifier(`${layout.table}_pit_v${view.version}_idx`)} ON ${parent} (${[
          ...layout.keys.map((key) => quoteIdentifier(key.columnName)),
          'event_time DESC',
          'created_time DESC',
        ].join(', ')})`,
      );
    for (const column of columns)
      await client.query(
        `INSERT INTO ${table(columnsTable)} (view_id, version, role, name, column_name, value_type)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`,
        [view.id, view.version, column.role, column.name, column.columnName, column.valueType],
      );
    return layout;
  }

  /**
   * Makes the month partitions of `months` exist; in the writer's transaction (see the lock note
   * above). `held` lists the partitions this transaction already locked, which need no check.
   */
  async function ensurePartitions(
    client: PoolClient,
    layout: ViewLayout,
    months: readonly number[],
    held: Set<string>,
  ) {
    const needed = months
      .map((month) => partitionName(layout.viewId, month))
      .filter((name) => !held.has(name));
    if (needed.length === 0) return;
    // pg_class read with the statement's snapshot, not to_regclass(): name lookups go through a
    // cache that can still hold "no such table" after another writer created it.
    const missing = async () => {
      const result = await client.query<{ name: string }>(
        `SELECT relname AS name FROM pg_class WHERE relnamespace = $1::regnamespace AND relname = ANY($2::text[])`,
        [schema, needed],
      );
      const present = new Set(result.rows.map((row) => row.name));
      return needed.filter((name) => !present.has(name));
    };
    if ((await missing()).length > 0) {
      // Two writers needing the same new month: the second waits here and then finds it.
      await lock(client, `partitions.${layout.viewId}`);
      for (const name of await missing()) {
        const month = monthOfPartition(layout.viewId, name) as number;
        await client.query(
          `CREATE TABLE ${table(name)} (LIKE ${table(layout.table)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`,
        );
        await client.query(
          `ALTER TABLE ${table(layout.table)} ATTACH PARTITION ${table(name)}
           FOR VALUES FROM (${monthBoundLiteral(month)}) TO (${monthBoundLiteral(month + 1)})`,
        );
      }
    }
    // Locking a table this transaction has not locked yet makes PostgreSQL apply pending catalog
    // changes, so the COPY routes rows with a partition list that includes months another writer
    // attached since this transaction first touched the table. It also keeps retention from
    // dropping them under the COPY.
    await client.query(`LOCK TABLE ${needed.map(table).join(', ')} IN ROW EXCLUSIVE MODE`);
    for (const name of needed) held.add(name);
  }

  /** COPYs the chunks of `encodeBatch` into the view's table. */
  async function copyBatch(
    client: PoolClient,
    chunks: Iterable<Buffer>,
    layout: ViewLayout,
    batchIndex: number,
  ) {
    const columns = copyColumns(layout).map(quoteIdentifier).join(', ');
    const copy = client.query(
      copyFrom(`COPY ${table(layout.table)} (${columns}) FROM STDIN (FORMAT binary)`),
    );
    try {
      await pipeline(Readable.from(chunks), copy);
    } catch (error) {
      throw describeCopyError(error, layout, batchIndex);
    }
  }

  /**
   * Deletes the stored rows of the batch's view (any version) that have the keys and event time of
   * a row of the batch. The point-in-time index (keys, event_time DESC, created_time DESC) finds
   * them. Event times go as bigint microseconds and become timestamps in SQL, exactly: float8 holds
   * every safe integer, and adding a microseconds-only interval does not depend on the time zone.
   */
  async function deleteReplacedRows(
    client: PoolClient,
    batch: OfflineRowBatch,
    layout: ViewLayout,
    batchIndex: number,
  ) {
    const arrays = [
      ...layout.keys.map((key, index) => `$${index + 1}::${postgresTypeOf(key.valueType)}[]`),
      `$${layout.keys.length + 1}::bigint[]`,
    ];
    const names = [...layout.keys.map((_, index) => `key_${index}`), 'event_micros'];
    const matches = [
      ...layout.keys.map((key, index) => `stored.${quoteIdentifier(key.columnName)} = replaced.key_${index}`),
      `stored.event_time = timestamptz 'epoch' + replaced.event_micros * interval '1 microsecond'`,
    ];
    try {
      await client.query(
        `DELETE FROM ${table(layout.table)} AS stored
         USING unnest(${arrays.join(', ')}) AS replaced(${names.join(', ')})
         WHERE ${matches.join(' AND ')}`,
        [...batch.keys.map((column) => column.map(String)), batch.eventTimes.map(String)],
      );
    } catch (error) {
      throw describeCopyError(error, layout, batchIndex);
    }
  }

  /**
   * Stores one batch in the writer's transaction: makes its view's layout and month partitions
   * exist, then COPYs it in; `replace` first deletes the stored rows it replaces (same keys and
   * event time). Returns the row count.
   */
  async function storeBatch(
    client: PoolClient,
    batch: OfflineRowBatch,
    batchIndex: number,
    writing: WritingTransaction,
    mode: 'append' | 'replace',
  ): Promise<number> {
    const rowCount = assertBatchShape(batch, batchIndex);
    if (rowCount === 0) return 0;
    const key = layoutKey(batch.view);
    let layout = layouts.get(key) ?? writing.ensured.get(key);
    if (!layout) {
      layout = await ensureLayout(client, batch.view);
      writing.ensured.set(key, layout);
    }
    await ensurePartitions(client, layout, monthsOf(batch.eventTimes), writing.heldPartitions);
    if (mode === 'append') {
      await copyBatch(client, encodeBatch(batch, layout, batchIndex), layout, batchIndex);
    } else {
      // Encoded before the DELETE, so a bad value is reported by the encoder, naming its row, and
      // the DELETE's parameters are known to be valid keys. Stream batches are small enough to hold.
      const chunks = [...encodeBatch(batch, layout, batchIndex)];
      await deleteReplacedRows(client, batch, layout, batchIndex);
      await copyBatch(client, chunks, layout, batchIndex);
    }
    return rowCount;
  }

  /** The layouts a committed transaction ensured become known. */
  const rememberLayouts = (writing: WritingTransaction) => {
    for (const [key, layout] of writing.ensured) layouts.set(key, layout);
  };

  /**
   * The compare-and-set of a stream commit, first in its transaction: a fenced writer then leaves
   * without having locked any row of the view tables. In READ COMMITTED a concurrent commit of the
   * same partition makes this wait for it and then re-check the generation it stored.
   */
  async function setStreamCheckpoint(
    client: PoolClient,
    commit: StreamBatchCommit,
  ): Promise<StreamBatchCommitResult> {
    const { scope, partition, expectedGeneration, state } = commit;
    const row = [scope.project, scope.aggregation, scope.topic, partition];
    const checkpoints = table(streamCheckpointsTable);
    const thisRow = 'project = $1 AND aggregation = $2 AND topic = $3 AND partition = $4';
    const stored =
      expectedGeneration === null
        ? await client.query<{ generation: string }>(
            `INSERT INTO ${checkpoints} (project, aggregation, topic, partition, generation, state)
             VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT DO NOTHING RETURNING generation::text`,
            [...row, state],
          )
        : await client.query<{ generation: string }>(
            `UPDATE ${checkpoints} SET generation = generation + 1, state = $5, updated_at = now()
             WHERE ${thisRow} AND generation = $6 RETURNING generation::text`,
            [...row, state, expectedGeneration],
          );
    const committed = stored.rows[0];
    if (committed) return { committed: true, generation: Number(committed.generation) };
    const current = await client.query<{ generation: string }>(
      `SELECT generation::text FROM ${checkpoints} WHERE ${thisRow}`,
      row,
    );
    const found = current.rows[0];
    return { committed: false, generation: found ? Number(found.generation) : null };
  }

  const assertOpen = () => {
    if (closed) throw new FStoreError('unavailable', `${purpose} (PostgreSQL): the offline store is closed`);
  };

  async function ensureViewLayout(view: FeatureView): Promise<void> {
    assertOpen();
    const key = layoutKey(view);
    if (layouts.has(key)) return;
    const layout = await pool.transaction((client) => ensureLayout(client, view));
    layouts.set(key, layout);
  }

  /**
   * The rows of `query` through a cursor in one REPEATABLE READ snapshot, converted batch by batch.
   * Batches are handed over one at a time, so the database is read no faster than the consumer
   * takes them; stopping early ends the transaction.
   */
  async function* cursorBatches<T>(
    query: string,
    parameters: readonly unknown[],
    options: { readonly batchRows: number; readonly signal?: AbortSignal },
    convert: (rows: unknown[][]) => T,
  ): AsyncGenerator<T> {
    const handoff = createHandoff<T>();
    const reading = pool
      .transaction(
        async (client) => {
          // DISTINCT and ORDER BY sort every row of the range: give the sort memory, not disk files.
          await client.query(`SET LOCAL work_mem = '${latestRowsWorkMem}'`);
          await client.query(`DECLARE batches NO SCROLL CURSOR FOR ${query}`, parameters as unknown[]);
          for (;;) {
            const result = await client.query<unknown[]>({
              text: `FETCH ${options.batchRows} FROM batches`,
              rowMode: 'array',
            });
            if (result.rows.length === 0) return;
            if (!(await handoff.put(convert(result.rows)))) return; // the consumer stopped
          }
        },
        { isolation: 'repeatable read', readOnly: true, attempts: 1 },
      )
      .then(
        () => handoff.end(),
        (error: unknown) => handoff.fail(translateDatabaseError(error, purpose)),
      );
    yield* takeAll(handoff, reading, options.signal);
  }

  /**
   * The rows of a binary `COPY (…) TO STDOUT` in one transaction, cut into segments of
   * `segmentRows` rows (with `ranked`, only where the first column, a rank, changes). `prepare`
   * runs first in the transaction and returns the COPY statement (undefined: no rows) and an
   * optional statement to run after the last row. A segment is cut only when the previous one was
   * taken, and the socket is not read meanwhile, so PostgreSQL sends no faster than the consumer
   * takes; stopping early (break, throw, `signal`) cancels the statement and rolls back.
   */
  async function* copyOutSegments(
    prepare: (client: PoolClient) => Promise<{ readonly copy: string; readonly after?: string } | undefined>,
    fieldCount: number,
    options: {
      readonly segmentRows: number;
      readonly ranked: boolean;
      readonly signal?: AbortSignal;
      readonly transaction: TransactionOptions;
    },
  ): AsyncGenerator<RowSegment> {
    const handoff = createHandoff<RowSegment>();
    const reading = pool
      .transaction(async (client) => {
        await client.query(`SET LOCAL work_mem = '${latestRowsWorkMem}'`);
        const statements = await prepare(client);
        if (!statements) return;
        // Stopped already: throwing rolls back whatever `prepare` made.
        if (handoff.stopped) throw new FStoreError('cancelled', 'the reader stopped');
        const rows = client.query(copyTo(statements.copy));
        const segmenter = createRowSegmenter(fieldCount, options.segmentRows, { ranked: options.ranked });
        let taking = true;
        try {
          for await (const chunk of rows as AsyncIterable<Buffer>) {
            if (!taking) continue; // draining what was in flight before the cancel took effect
            for (const segment of segmenter.push(chunk)) {
              if (await handoff.put(segment)) continue;
              taking = false;
              // A send blocked on a full socket only ends on a cancel; read on until it lands.
              pool
                .query('SELECT pg_cancel_backend($1)', [
                  (client as unknown as { processID: number }).processID,
                ])
                .catch(() => {});
              break;
            }
          }
        } catch (error) {
          // The cancel we asked for: the transaction is aborted, its end rolls everything back.
          if (!taking) throw new FStoreError('cancelled', 'the reader stopped');
          throw error;
        }
        if (!taking) throw new FStoreError('cancelled', 'the reader stopped'); // ended before the cancel
        const last = segmenter.end();
        if (last) await handoff.put(last);
        if (statements.after) await client.query(statements.after);
      }, options.transaction)
      .then(
        () => handoff.end(),
        (error: unknown) =>
          // A stop the consumer asked for is no failure: it is not waiting for anything.
          handoff.stopped ? handoff.end() : handoff.fail(translateDatabaseError(error, purpose)),
      );
    yield* takeAll(handoff, reading, options.signal);
    // takeAll ends without a word when the abort stopped the reader before its next segment.
    options.signal?.throwIfAborted();
  }

  return {
    async ensureView(view) {
      await ensureViewLayout(view);
    },

    async writeRows(batches): Promise<OfflineWriteResult> {
      assertOpen();
      const writing = createWritingTransaction();
      // Not retried: the input is a stream, read once (attempts: 1).
      const rows = await pool.transaction(
        async (client) => {
          let total = 0;
          let batchIndex = 0;
          const iterator = toAsyncIterator(batches);
          for (;;) {
            let next: IteratorResult<OfflineRowBatch>;
            try {
              next = await iterator.next();
            } catch (error) {
              throw inputError(error, batchIndex);
            }
            if (next.done) break;
            total += await storeBatch(client, next.value, batchIndex, writing, 'append');
            batchIndex += 1;
          }
          return total;
        },
        { attempts: 1 },
      );
      rememberLayouts(writing);
      return { rows };
    },

    async loadStreamCheckpoints(scope, partitions) {
      assertOpen();
      for (const [index, partition] of partitions.entries())
        assertPartition(partition, `partitions[${index}]`);
      const loaded = new Map<number, StoredStreamCheckpoint>();
      if (partitions.length === 0) return loaded;
      const result = await pool.query<{ partition: number; generation: string; state: Buffer }>(
        `SELECT partition, generation::text, state FROM ${table(streamCheckpointsTable)}
         WHERE project = $1 AND aggregation = $2 AND topic = $3 AND partition = ANY($4::integer[])`,
        [scope.project, scope.aggregation, scope.topic, partitions],
      );
      for (const row of result.rows)
        loaded.set(row.partition, {
          partition: row.partition,
          generation: Number(row.generation),
          // A copy that owns its buffer: pg's small Buffers are slices of a shared pool.
          state: new Uint8Array(row.state),
        });
      return loaded;
    },

    async commitStreamBatch(commit) {
      assertOpen();
      assertStreamBatchCommit(commit);
      const writing = createWritingTransaction();
      const result = await pool.transaction(
        async (client) => {
          const checkpoint = await setStreamCheckpoint(client, commit);
          // Fenced: nothing was written, so ending the transaction stores nothing.
          if (!checkpoint.committed) return checkpoint;
          for (const [batchIndex, batch] of commit.rows.entries())
            await storeBatch(client, batch, batchIndex, writing, 'replace');
          return checkpoint;
        },
        // Not retried here, like writeRows: the caller decides, and its next try re-checks the generation.
        { attempts: 1 },
      );
      rememberLayouts(writing);
      return result;
    },

    async replaceRows(batches) {
      assertOpen();
      const writing = createWritingTransaction();
      const rows = await pool.transaction(async (client) => {
        let total = 0;
        for (const [batchIndex, batch] of batches.entries())
          total += await storeBatch(client, batch, batchIndex, writing, 'replace');
        return total;
      });
      rememberLayouts(writing);
      return { rows };
    },

    async deleteStreamCheckpoints(scope) {
      assertOpen();
      const result = await pool.query(
        `DELETE FROM ${table(streamCheckpointsTable)} WHERE project = $1 AND aggregation = $2 AND topic = $3`,
        [scope.project, scope.aggregation, scope.topic],
      );
      return result.rowCount ?? 0;
    },

    async dropPartitionsBefore(view, beforeMicros) {
      assertOpen();
      if (!Number.isSafeInteger(beforeMicros))
        throw invalidArgument(
          'beforeMicros',
          `must be integer microseconds since the epoch, got ${beforeMicros}`,
        );
      return pool.transaction(async (client) => {
        await lock(client, `partitions.${view.id}`);
        const result = await client.query<{ name: string }>(
          `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = to_regclass($1)`,
          [table(viewTableName(view.id))],
        );
        const dropped = result.rows
          .map((row) => ({ name: row.name, month: monthOfPartition(view.id, row.name) }))
          .filter(({ month }) => month !== undefined && monthStartMicros(month + 1) <= beforeMicros)
          .map(({ name }) => name)
          .sort();
        for (const name of dropped) await client.query(`DROP TABLE ${table(name)}`);
        return dropped;
      });
    },

    async *readLatest(view, range, { batchRows, signal }) {
      assertOpen();
      await ensureViewLayout(view);
      const layout = layouts.get(layoutKey(view)) as ViewLayout;
      const segments = copyOutSegments(
        async (client) =>
          (await tableExists(client, table(layout.table)))
            ? { copy: latestRowsCopy(layout, table(layout.table), range) }
            : undefined,
        latestRowsFieldCount(layout),
        {
          segmentRows: batchRows,
          ranked: false,
          signal,
          transaction: { isolation: 'repeatable read', readOnly: true, attempts: 1 },
        },
      );
      for await (const segment of segments)
        yield { view, ...decodeLatestRows(layout, segment.bytes, segment.rows) };
    },

    async *readPointInTime(view, keys, { segmentRows, signal }) {
      assertOpen();
      await ensureViewLayout(view);
      const layout = layouts.get(layoutKey(view)) as ViewLayout;
      if (keys.maxTimes.length === 0) return;
      const keyTable = table(`fstore_pit_keys_${randomBytes(8).toString('hex')}`);
      yield* copyOutSegments(
        async (client) => {
          if (!(await tableExists(client, table(layout.table)))) return undefined;
          // The key table lives in this transaction: a failed or cancelled read rolls it back.
          await client.query(keyTableDefinition(layout, keyTable));
          await pipeline(
            Readable.from(
              encodeKeyTable(
                layout.keys.map((key) => key.valueType as 'string' | 'int64'),
                keys.keys,
                keys.maxTimes,
              ),
            ),
            client.query(copyFrom(`COPY ${keyTable} FROM STDIN (FORMAT binary)`)),
          );
          // Row counts for the planner: index lookups for few keys, a parallel hash join for many.
          await client.query(`ANALYZE ${keyTable}`);
          return {
            copy: `COPY (${pointInTimeQuery(layout, table(layout.table), keyTable)}) TO STDOUT (FORMAT binary)`,
            after: `DROP TABLE ${keyTable}`,
          };
        },
        3 + layout.features.length,
        { segmentRows, ranked: true, signal, transaction: { attempts: 1 } },
      );
    },

    async *readFeatureValues(view, range, { features, segmentRows, signal }) {
      assertOpen();
      await ensureViewLayout(view);
      const layout = layouts.get(layoutKey(view)) as ViewLayout;
      const columns = features.map((index, position) => {
        const mapping = layout.features[index];
        if (!mapping)
          throw invalidArgument(`features[${position}]`, `view "${view.name}" has no feature ${index}`);
        return quoteIdentifier(mapping.columnName);
      });
      yield* copyOutSegments(
        async (client) =>
          (await tableExists(client, table(layout.table)))
            ? {
                copy: `COPY (SELECT event_time${columns.map((column) => `, ${column}`).join('')}
                  FROM ${table(layout.table)}
                  WHERE event_time >= ${timeLiteral(range.startMicros, 'startMicros')}
                    AND event_time < ${timeLiteral(range.endMicros, 'endMicros')}) TO STDOUT (FORMAT binary)`,
              }
            : undefined,
        1 + columns.length,
        {
          segmentRows,
          ranked: false,
          signal,
          transaction: { isolation: 'repeatable read', readOnly: true, attempts: 1 },
        },
      );
    },

    async *readEntityTimes(views, range, { batchRows, signal }) {
      assertOpen();
      const tables: { layout: ViewLayout; table: string }[] = [];
      for (const view of views) {
        await ensureViewLayout(view);
        const layout = layouts.get(layoutKey(view)) as ViewLayout;
        tables.push({ layout, table: table(layout.table) });
      }
      if (tables.length === 0) return;
      yield* cursorBatches(
        entityTimesQuery(tables),
        [String(range.startMicros), String(range.endMicros)],
        { batchRows, signal },
        (rows) => toEntityTimes(tables[0]!.layout, rows),
      );
    },

    async lastMaterializedEnd(viewId) {
      assertOpen();
      const result = await pool
        .query<{ end_micros: string }>(
          `SELECT ${microsOf('end_time')} AS end_micros FROM ${table(materializationsTable)} WHERE view_id = $1`,
          [viewId],
        )
        .catch((error: unknown) => {
          throw translateDatabaseError(error, purpose);
        });
      const row = result.rows[0];
      return row ? Number(row.end_micros) : undefined;
    },

    async recordMaterialized(viewId, range) {
      assertOpen();
      await pool
        .query(
          `INSERT INTO ${table(materializationsTable)} (view_id, start_time, end_time)
           VALUES ($1, to_timestamp($2::numeric / 1000000), to_timestamp($3::numeric / 1000000))
           ON CONFLICT (view_id) DO UPDATE SET start_time = EXCLUDED.start_time, end_time = EXCLUDED.end_time,
             recorded_at = now()
           WHERE ${table(materializationsTable)}.end_time < EXCLUDED.end_time`,
          [viewId, String(range.startMicros), String(range.endMicros)],
        )
        .catch((error: unknown) => {
          throw translateDatabaseError(error, purpose);
        });
    },

    async ping() {
      await pool.query('SELECT 1').catch((error: unknown) => {
        throw translateDatabaseError(error, 'ping');
      });
    },

    async close() {
      if (closed) return;
      closed = true;
      if (options.ownsPool) await pool.end();
    },
  };
}

const materializationsTable = 'offline_materializations';
const streamCheckpointsTable = 'offline_stream_checkpoints';

/**
 * What one writing transaction has set up so far: the layouts it ensured (known to other calls
 * only once it commits) and the month partitions it locked.
 */
interface WritingTransaction {
  readonly ensured: Map<string, ViewLayout>;
  readonly heldPartitions: Set<string>;
}

const createWritingTransaction = (): WritingTransaction => ({
  ensured: new Map(),
  heldPartitions: new Set(),
});

// Measured: 1 M rows of 10 doubles sorted on disk with the default 4 MB took 2.9 s, 1.2 s in memory.
const latestRowsWorkMem = '256MB';

async function tableExists(client: PoolClient, qualifiedName: string): Promise<boolean> {
  const result = await client.query<{ exists: boolean }>('SELECT to_regclass($1) IS NOT NULL AS exists', [
    qualifiedName,
  ]);
  return result.rows[0]?.exists === true;
}

/** A SQL string literal. */
const stringLiteral = (text: string) => `'${text.replaceAll("'", "''")}'`;

const microsOf = (column: string) => `((EXTRACT(EPOCH FROM ${column}) * 1000000)::bigint)::text`;

/**
 * A one-slot channel between the cursor's transaction (producer) and the consumer's iteration:
 * `put` resolves once the item is taken (true) or the consumer stopped (false).
 */
function createHandoff<T>() {
  let item: T | undefined;
  let done = false;
  let failure: unknown;
  let stopped = false;
  let wakeConsumer: (() => void) | undefined;
  let wakeProducer: ((taken: boolean) => void) | undefined;
  const notifyConsumer = () => {
    wakeConsumer?.();
    wakeConsumer = undefined;
  };
  return {
    put(value: T): Promise<boolean> {
      if (stopped) return Promise.resolve(false);
      item = value;
      notifyConsumer();
      return new Promise<boolean>((resolve) => {
        wakeProducer = resolve;
      });
    },
    end() {
      done = true;
      notifyConsumer();
    },
    fail(error: unknown) {
      failure = error;
      done = true;
      notifyConsumer();
    },
    get stopped() {
      return stopped;
    },
    stop() {
      stopped = true;
      wakeProducer?.(false);
      wakeProducer = undefined;
    },
    async take(): Promise<T | undefined> {
      for (;;) {
        if (item !== undefined) {
          const value = item;
          item = undefined;
          wakeProducer?.(true);
          wakeProducer = undefined;
          return value;
        }
        if (failure !== undefined) throw failure;
        if (done) return undefined;
        await new Promise<void>((resolve) => {
          wakeConsumer = resolve;
        });
      }
    },
  };
}

/**
 * The consumer side of a handoff: yields its items until the producer ends, fails or the signal
 * aborts; stopping early stops the producer and waits for its transaction to finish.
 */
async function* takeAll<T>(
  handoff: ReturnType<typeof createHandoff<T>>,
  reading: Promise<void>,
  signal: AbortSignal | undefined,
): AsyncGenerator<T> {
  const onAbort = () => handoff.stop();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for (;;) {
      const next = await handoff.take();
      if (next === undefined) break;
      if (signal?.aborted) throw signal.reason;
      yield next;
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
    handoff.stop();
    await reading;
  }
}

function toAsyncIterator<T>(source: AsyncIterable<T> | Iterable<T>): AsyncIterator<T> | Iterator<T> {
  return Symbol.asyncIterator in source
    ? (source as AsyncIterable<T>)[Symbol.asyncIterator]()
    : (source as Iterable<T>)[Symbol.iterator]();
}

/** An error thrown by the caller's batches: passed on, never mistaken for a database failure. */
function inputError(error: unknown, batchIndex: number): FStoreError {
  if (error instanceof FStoreError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new FStoreError(
    'internal',
    `reading batches[${batchIndex}] of the offline write failed: ${message}`,
    {
      cause: error,
    },
  );
}

/** Checks the shape the encoder relies on; returns the row count. */
function assertBatchShape(batch: OfflineRowBatch, batchIndex: number): number {
  const at = `batches[${batchIndex}]`;
  const { view } = batch;
  const rowCount = batch.eventTimes.length;
  if (batch.keys.length !== view.joinKeys.length)
    throw invalidArgument(
      `${at}.keys`,
      `has ${batch.keys.length} columns, the view has ${view.joinKeys.length} join keys`,
    );
  if (batch.values.length !== view.features.length)
    throw invalidArgument(
      `${at}.values`,
      `has ${batch.values.length} columns, the view has ${view.features.length} features`,
    );
  const columns: [string, { length: number }][] = [
    ['createdTimes', batch.createdTimes],
    ...batch.keys.map((column, index): [string, { length: number }] => [`keys[${index}]`, column]),
    ...batch.values.map((column, index): [string, { length: number }] => [`values[${index}]`, column]),
  ];
  for (const [name, column] of columns)
    if (column.length !== rowCount)
      throw invalidArgument(`${at}.${name}`, `has ${column.length} values, eventTimes has ${rowCount}`);
  for (let row = 0; row < rowCount; row += 1) {
    if (!Number.isSafeInteger(batch.eventTimes[row]))
      throw invalidArgument(
        `${valuePath(batchIndex, row, 'eventTime')}`,
        'must be integer microseconds since the epoch',
      );
    if (!Number.isSafeInteger(batch.createdTimes[row]))
      throw invalidArgument(
        `${valuePath(batchIndex, row, 'createdTime')}`,
        'must be integer microseconds since the epoch',
      );
  }
  return rowCount;
}

const maxPartition = 2 ** 31 - 1; // Kafka partitions are int32

function assertPartition(partition: number, field: string): void {
  if (!Number.isInteger(partition) || partition < 0 || partition > maxPartition)
    throw invalidArgument(
      field,
      `must be a Kafka partition (an integer from 0 to ${maxPartition}), got ${partition}`,
    );
}

/** Checks what PostgreSQL would otherwise reject as a failed statement rather than a bad argument. */
function assertStreamBatchCommit(commit: StreamBatchCommit): void {
  assertPartition(commit.partition, 'partition');
  const { expectedGeneration } = commit;
  if (expectedGeneration !== null && !(Number.isSafeInteger(expectedGeneration) && expectedGeneration >= 1))
    throw invalidArgument(
      'expectedGeneration',
      `must be null or a generation read from the store (an integer ≥ 1), got ${expectedGeneration}`,
    );
  if (!(commit.state instanceof Uint8Array)) throw invalidArgument('state', 'must be bytes (a Uint8Array)');
}

/**
 * A failed COPY (or DELETE of the rows a batch replaces) → FStoreError. Data errors (SQLSTATE
 * classes 22 and 23) are the caller's: they become 'invalid_argument' naming the row and feature
 * from PostgreSQL's context ("COPY offline_view_7, line 3, column f_note"; in binary format "line"
 * counts rows from 1).
 */
function describeCopyError(error: unknown, layout: ViewLayout, batchIndex: number): unknown {
  if (error instanceof FStoreError) return error;
  const code = (error as { code?: unknown }).code;
  if (typeof code !== 'string' || !(code.startsWith('22') || code.startsWith('23'))) return error;
  const where = String((error as { where?: unknown }).where ?? '');
  const match = /line (\d+)(?:, column (\w+))?/.exec(where);
  const message = error instanceof Error ? error.message : String(error);
  if (!match) return invalidArgument(`batches[${batchIndex}]`, `PostgreSQL rejected a row: ${message}`);
  const row = Number(match[1]) - 1;
  const column = match[2];
  const mapping = [...layout.keys, ...layout.features].find((candidate) => candidate.columnName === column);
  const name = mapping?.name ?? column;
  return invalidArgument(
    name === undefined ? `batches[${batchIndex}].rows[${row}]` : valuePath(batchIndex, row, name),
    `PostgreSQL rejected the value: ${message}`,
  );
}
