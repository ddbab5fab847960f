import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import {
  Binary,
  Bool,
  Field,
  Float32,
  Float64,
  Int32,
  Int64,
  List,
  makeData,
  makeVector,
  Table,
  TimestampMicrosecond,
  TimestampNanosecond,
  TimestampSecond,
  tableToIPC,
  Uint16,
  Utf8,
  type Vector,
  vectorFromArray,
} from 'apache-arrow';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ValueType } from '../../gen/fstore/v1/values_pb.js';
import { randomName, requireEnvironment } from '../support/environment.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { runCli } from './run-cli.js';

/**
 * `fstore ingest` of Parquet files (written by DuckDB) and Arrow IPC files and streams (written by
 * apache-arrow) into the real PostgreSQL offline store through a real gRPC server.
 */

const base = 1_767_225_600_000_000n; // 2026-01-01T00:00:00Z in microseconds

const features = [
  { name: 'fare', type: ValueType.DOUBLE },
  { name: 'ratio', type: ValueType.FLOAT },
  { name: 'tags', type: ValueType.STRING_LIST },
  { name: 'seen', type: ValueType.TIMESTAMP },
  { name: 'ok', type: ValueType.BOOL },
  { name: 'blob', type: ValueType.BYTES },
  { name: 'visits', type: ValueType.INT64 },
];

describe('fstore ingest (Parquet and Arrow IPC)', () => {
  let server: TestServer;
  let database: pg.Client;
  let duckdb: DuckDBInstance;
  let directory: string;
  const project = randomName('p');

  const ingest = (view: string, file: string, ...extra: string[]) =>
    runCli([
      'ingest',
      '--address',
      server.address,
      '--project',
      project,
      '--view',
      view,
      '--file',
      file,
      ...extra,
    ]);

  /** DuckDB writes `select` to a Parquet file in the temp directory. */
  const parquetFile = async (name: string, select: string, options = ''): Promise<string> => {
    const file = join(directory, name);
    const connection = await duckdb.connect();
    try {
      await connection.run(`COPY (${select}) TO '${file}' (FORMAT parquet${options})`);
    } finally {
      connection.closeSync();
    }
    return file;
  };

  const arrowFile = async (name: string, table: Table, format: 'file' | 'stream'): Promise<string> => {
    const file = join(directory, name);
    await writeFile(file, tableToIPC(table, format));
    return file;
  };

  const micros = (column: string) => `(EXTRACT(EPOCH FROM ${column})::numeric * 1000000)::bigint::text`;

  const stored = async (view: string) => {
    const schema = server.config.postgresSchema;
    const { rows } = await database.query(
      `SELECT id FROM "${schema}".feature_views WHERE project = $1 AND name = $2`,
      [project, view],
    );
    const table = `"${schema}".offline_view_${rows[0]?.id}`;
    if (!(await database.query('SELECT to_regclass($1) AS t', [table])).rows[0]?.t) return [];
    return (
      await database.query(
        `SELECT k_rider_id::text AS rider, ${micros('event_time')} AS event, ${micros('created_time')} AS created,
                f_fare AS fare, f_ratio AS ratio, f_tags AS tags, ${micros('f_seen')} AS seen, f_ok AS ok,
                encode(f_blob, 'escape') AS blob, f_visits::text AS visits
         FROM ${table} ORDER BY k_rider_id, event_time`,
      )
    ).rows;
  };

  beforeAll(async () => {
    server = await startTestServer('memory');
    database = new pg.Client({ connectionString: requireEnvironment('FSTORE_TEST_POSTGRES_URL') });
    await database.connect();
    duckdb = await DuckDBInstance.create(':memory:');
    directory = await mkdtemp(join(tmpdir(), 'fstore-ingest-typed-'));
    await server.registry.applyEntity({
      project,
      entity: { name: 'rider', joinKeys: [{ name: 'rider_id', type: ValueType.INT64 }] },
    });
    for (const name of ['from_parquet', 'from_arrow'])
      await server.registry.applyFeatureView({
        project,
        featureView: { name, entities: ['rider'], features },
      });
  });
  afterAll(async () => {
    duckdb?.closeSync();
    await database?.end();
    await server?.stop();
    if (directory) await rm(directory, { recursive: true, force: true });
  });

  describe('Parquet', () => {
    // 5000 rows in row groups of 2048 (DuckDB's smallest), sent in chunks of 1000: chunks straddle
    // row groups. Every kind of column, three timestamp units, nulls, a list, zstd compression.
    const select = (rows: number) => `
      SELECT i::INTEGER AS rider_id,
        make_timestamp(${base} + i * 1000000 + 123000)::TIMESTAMP_MS AS event_timestamp,
        make_timestamp(${base} + i + 7)::TIMESTAMPTZ AS created_timestamp,
        CASE WHEN i % 7 = 3 THEN NULL ELSE i * 0.5 END::DOUBLE AS fare,
        (i / 4)::FLOAT AS ratio,
        CASE WHEN i % 5 = 1 THEN NULL WHEN i % 5 = 2 THEN [] ELSE ['a', 'b' || i] END AS tags,
        make_timestamp_ns(${base * 1000n} + 123456789 + i) AS seen,
        CASE WHEN i % 11 = 4 THEN NULL ELSE i % 2 = 0 END AS ok,
        encode('b' || i) AS blob,
        (i % 1000)::SMALLINT AS visits,
        'ignored' AS note
      FROM range(${rows}) t(i)`;

    it('loads every row group in chunks with exact times, nulls and lists', async () => {
      const file = await parquetFile(
        'rides.parquet',
        select(5000),
        ', ROW_GROUP_SIZE 2048, COMPRESSION zstd',
      );
      const result = await ingest('from_parquet', file, '--chunk-rows', '1000');
      expect(result).toMatchObject({ code: 0, output: expect.stringContaining('ingested 5000 rows') });
      const rows = await stored('from_parquet');
      expect(rows).toHaveLength(5000);
      expect(rows[0]).toEqual({
        rider: '0',
        event: String(base + 123_000n),
        created: String(base + 7n),
        fare: 0,
        ratio: 0,
        tags: ['a', 'b0'],
        seen: String(base + 123_456n),
        ok: true,
        blob: 'b0',
        visits: '0',
      });
      expect(rows[1]).toMatchObject({ tags: null, ok: false });
      expect(rows[2]).toMatchObject({ tags: [] });
      expect(rows[3]).toMatchObject({ fare: null, ratio: 0.75 });
      expect(rows[4]).toMatchObject({ ok: null });
      expect(rows[4999]).toEqual({
        rider: '4999',
        event: String(base + 4999n * 1_000_000n + 123_000n),
        created: String(base + 4999n + 7n),
        fare: 2499.5,
        ratio: 1249.75,
        tags: ['a', 'b4999'],
        seen: String(base + 123_461n), // 123 456 789 + 4999 ns, rounded down to the microsecond
        ok: false,
        blob: 'b4999',
        visits: '999',
      });
    });

    it('refuses a column whose type cannot hold the view type, naming both', async () => {
      const before = (await stored('from_parquet')).length;
      const file = await parquetFile(
        'text-fare.parquet',
        `SELECT * REPLACE (fare::VARCHAR AS fare) FROM (${select(3)})`,
      );
      const result = await ingest('from_parquet', file);
      expect(result.code).toBe(1);
      expect(result.output).toContain(
        `${file} schema, column "fare": the file's type string cannot hold the view's type double; nothing was stored`,
      );
      const ints = await parquetFile(
        'int-tags.parquet',
        `SELECT * REPLACE ([1, 2]::INTEGER[] AS tags) FROM (${select(3)})`,
      );
      expect((await ingest('from_parquet', ints)).output).toContain(
        `column "tags": the file's type list<int32> cannot hold the view's type string_list`,
      );
      const micros = await parquetFile(
        'int-time.parquet',
        `SELECT * REPLACE (epoch_us(event_timestamp) AS event_timestamp) FROM (${select(3)})`,
      );
      expect((await ingest('from_parquet', micros)).output).toContain(
        `column "event_timestamp": the file's type int64 cannot hold the view's type timestamp`,
      );
      expect((await stored('from_parquet')).length).toBe(before);
    });

    it('names the row (0-based in the file) and column of a bad value and stores nothing', async () => {
      const before = (await stored('from_parquet')).length;
      // Row 2500 is in the second row group, after two chunks were already streamed.
      const nullTime = await parquetFile(
        'null-time.parquet',
        `SELECT * REPLACE (CASE WHEN rider_id = 2500 THEN NULL ELSE event_timestamp END AS event_timestamp)
         FROM (${select(3000)})`,
        ', ROW_GROUP_SIZE 2048',
      );
      const result = await ingest('from_parquet', nullTime, '--chunk-rows', '1000');
      expect(result.code).toBe(1);
      expect(result.output).toContain('row 2500, column "event_timestamp": is null; nothing was stored');
      const nullElement = await parquetFile(
        'null-element.parquet',
        `SELECT * REPLACE (CASE WHEN rider_id = 7 THEN ['x', NULL] ELSE tags END AS tags) FROM (${select(10)})`,
      );
      expect((await ingest('from_parquet', nullElement)).output).toContain(
        'row 7, column "tags": list element 1 is null',
      );
      expect((await stored('from_parquet')).length).toBe(before);
    });

    it('takes the format from --format when the extension does not tell', async () => {
      const file = await parquetFile(
        'one.parquet',
        `SELECT * REPLACE (rider_id + 10000 AS rider_id) FROM (${select(1)})`,
      );
      const renamed = join(directory, 'one.data');
      await copyFile(file, renamed);
      expect((await ingest('from_parquet', renamed)).output).toContain(
        'cannot tell the format from the extension',
      );
      expect(await ingest('from_parquet', renamed, '--format', 'parquet')).toMatchObject({
        code: 0,
        output: expect.stringContaining('ingested 1 rows'),
      });
      expect((await ingest('from_parquet', renamed, '--format', 'arrow')).output).toContain(
        'is not an Arrow IPC file or stream',
      );
    });
  });

  describe('Arrow IPC', () => {
    /** A timestamp column from raw int64s in its unit (vectorFromArray goes through milliseconds). */
    const timestamps = (
      type: TimestampSecond | TimestampMicrosecond | TimestampNanosecond,
      values: readonly bigint[],
    ): Vector => makeVector(makeData({ type, length: values.length, data: BigInt64Array.from(values) }));

    /** Rows `first`... of the test view as one record batch's worth of columns. */
    const batch = (first: number, rows: number, override: Record<string, Vector> = {}) => {
      const index = Array.from({ length: rows }, (_, row) => first + row);
      return new Table({
        rider_id: vectorFromArray(
          index.map((row) => BigInt(row)),
          new Int64(),
        ),
        // Seconds, microseconds with a time zone, nanoseconds: all become microseconds.
        event_timestamp: timestamps(
          new TimestampSecond(),
          index.map((row) => base / 1_000_000n + BigInt(row)),
        ),
        created_timestamp: timestamps(
          new TimestampMicrosecond('UTC'),
          index.map((row) => base + BigInt(row) + 7n),
        ),
        fare: vectorFromArray(
          index.map((row) => (row % 3 === 1 ? null : row * 0.5)),
          new Float64(),
        ),
        ratio: vectorFromArray(
          index.map((row) => row / 4),
          new Float32(),
        ),
        tags: vectorFromArray(
          index.map((row) => (row % 4 === 2 ? null : row % 4 === 3 ? [] : ['a', `b${row}`])),
          new List(new Field('item', new Utf8(), true)),
        ),
        seen: timestamps(
          new TimestampNanosecond(),
          index.map((row) => base * 1000n + 123_456_789n + BigInt(row)),
        ),
        ok: vectorFromArray(
          index.map((row) => row % 2 === 0),
          new Bool(),
        ),
        blob: vectorFromArray(
          index.map((row) => new TextEncoder().encode(`b${row}`)),
          new Binary(),
        ),
        visits: vectorFromArray(
          index.map((row) => row * 3),
          new Uint16(),
        ),
        ...override,
      });
    };

    it('loads a file of several record batches with exact times, nulls and lists', async () => {
      const file = await arrowFile('rides.arrow', batch(0, 5).concat(batch(5, 5)), 'file');
      const result = await ingest('from_arrow', file, '--chunk-rows', '3');
      expect(result).toMatchObject({ code: 0, output: expect.stringContaining('ingested 10 rows') });
      const rows = await stored('from_arrow');
      expect(rows).toHaveLength(10);
      expect(rows[0]).toEqual({
        rider: '0',
        event: String(base),
        created: String(base + 7n),
        fare: 0,
        ratio: 0,
        tags: ['a', 'b0'],
        seen: String(base + 123_456n),
        ok: true,
        blob: 'b0',
        visits: '0',
      });
      expect(rows[1]).toMatchObject({ fare: null, ratio: 0.25 });
      expect(rows[2]).toMatchObject({ tags: null });
      expect(rows[3]).toMatchObject({ tags: [] });
      expect(rows[9]).toEqual({
        rider: '9',
        event: String(base + 9_000_000n),
        created: String(base + 16n),
        fare: 4.5,
        ratio: 2.25,
        tags: ['a', 'b9'],
        seen: String(base + 123_456n),
        ok: false,
        blob: 'b9',
        visits: '27',
      });
    });

    it('loads the stream format', async () => {
      const file = await arrowFile('more.arrows', batch(100, 4).concat(batch(104, 4)), 'stream');
      expect(await ingest('from_arrow', file)).toMatchObject({
        code: 0,
        output: expect.stringContaining('ingested 8 rows'),
      });
    });

    it('refuses a column whose type cannot hold the view type, naming both', async () => {
      const before = (await stored('from_arrow')).length;
      const file = await arrowFile(
        'int-tags.arrow',
        batch(200, 2, {
          tags: vectorFromArray([[1], [2]], new List(new Field('item', new Int32(), true))),
        }),
        'file',
      );
      const result = await ingest('from_arrow', file);
      expect(result.code).toBe(1);
      expect(result.output).toContain(
        `${file} schema, column "tags": the file's type list<int32> cannot hold the view's type string_list`,
      );
      expect((await stored('from_arrow')).length).toBe(before);
    });

    it('names the row (0-based in the file) and column of a bad value and stores nothing', async () => {
      const before = (await stored('from_arrow')).length;
      const nullKey = batch(303, 3, { rider_id: vectorFromArray([303n, null, 305n], new Int64()) });
      const file = await arrowFile('null-key.arrows', batch(300, 3).concat(nullKey), 'stream');
      const result = await ingest('from_arrow', file, '--chunk-rows', '2');
      expect(result.code).toBe(1);
      expect(result.output).toContain('row 4, column "rider_id": is null; nothing was stored');
      const nullElement = batch(310, 2, {
        tags: vectorFromArray([['x'], ['y', null]], new List(new Field('item', new Utf8(), true))),
      });
      const elementFile = await arrowFile('null-element.arrow', nullElement, 'file');
      expect((await ingest('from_arrow', elementFile)).output).toContain(
        'row 1, column "tags": list element 1 is null',
      );
      expect((await stored('from_arrow')).length).toBe(before);
    });
  });
});
