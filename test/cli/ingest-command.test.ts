import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ValueType } from '../../gen/fstore/v1/values_pb.js';
import { parseTimestampMicros } from '../../src/domain/timestamps.js';
import { randomName, requireEnvironment } from '../support/environment.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { runCli } from './run-cli.js';

const runIngest = (args: string[]) => runCli(['ingest', ...args]);

describe('fstore ingest (CSV)', () => {
  let server: TestServer;
  let database: pg.Client;
  let directory: string;
  const project = randomName('p');

  const stored = async () => {
    const schema = server.config.postgresSchema;
    const { rows } = await database.query(
      `SELECT id FROM "${schema}".feature_views WHERE project = $1 AND name = 'rides'`,
      [project],
    );
    const table = `"${schema}".offline_view_${rows[0]?.id}`;
    if (!(await database.query('SELECT to_regclass($1) AS t', [table])).rows[0]?.t) return [];
    return (
      await database.query(
        `SELECT k_rider_id::text AS rider, (EXTRACT(EPOCH FROM event_time)::numeric * 1000000)::bigint::text AS micros,
                f_fare AS fare, f_tags AS tags FROM ${table} ORDER BY event_time`,
      )
    ).rows;
  };

  beforeAll(async () => {
    server = await startTestServer('memory');
    database = new pg.Client({ connectionString: requireEnvironment('FSTORE_TEST_POSTGRES_URL') });
    await database.connect();
    directory = await mkdtemp(join(tmpdir(), 'fstore-ingest-'));
    await server.registry.applyEntity({
      project,
      entity: { name: 'rider', joinKeys: [{ name: 'rider_id', type: ValueType.INT64 }] },
    });
    await server.registry.applyFeatureView({
      project,
      featureView: {
        name: 'rides',
        entities: ['rider'],
        features: [
          { name: 'fare', type: ValueType.DOUBLE },
          { name: 'tags', type: ValueType.STRING_LIST },
        ],
      },
    });
  });
  afterAll(async () => {
    await database?.end();
    await server?.stop();
    if (directory) await rm(directory, { recursive: true, force: true });
  });

  it('parses ISO 8601 and integer microsecond times exactly', () => {
    expect(parseTimestampMicros('2026-01-02T03:04:05.123456Z')).toBe(
      Date.UTC(2026, 0, 2, 3, 4, 5) * 1000 + 123_456,
    );
    expect(parseTimestampMicros('2026-01-02 03:04:05+01:00')).toBe(Date.UTC(2026, 0, 2, 2, 4, 5) * 1000);
    expect(parseTimestampMicros('-5')).toBe(-5);
    expect(() => parseTimestampMicros('yesterday')).toThrow();
  });

  it('loads a file in chunks and stores every row with exact times and nulls', async () => {
    const file = join(directory, 'rides.csv');
    const lines = ['rider_id,event_timestamp,fare,tags'];
    for (let row = 0; row < 25; row++)
      lines.push(
        `${row},2026-01-02T03:04:05.${String(row).padStart(6, '0')}Z,${row === 3 ? '' : row * 1.5},"[""a"",""b,${row}""]"`,
      );
    await writeFile(file, `${lines.join('\n')}\n`);
    const result = await runIngest([
      '--address',
      server.address,
      '--project',
      project,
      '--view',
      'rides',
      '--file',
      file,
      '--chunk-rows',
      '10',
    ]);
    expect(result).toMatchObject({ code: 0, output: expect.stringContaining('ingested 25 rows') });
    const rows = await stored();
    expect(rows).toHaveLength(25);
    expect(rows[3]).toEqual({
      rider: '3',
      micros: String(Date.UTC(2026, 0, 2, 3, 4, 5) * 1000 + 3),
      fare: null,
      tags: ['a', 'b,3'],
    });
    expect(rows[24]?.fare).toBe(36);
  });

  it('with --write-online, also writes the latest row per rider online', async () => {
    await server.registry.applyFeatureView({
      project,
      featureView: {
        name: 'rides_online',
        entities: ['rider'],
        online: true,
        features: [{ name: 'fare', type: ValueType.DOUBLE }],
      },
    });
    const file = join(directory, 'online.csv');
    await writeFile(file, 'rider_id,event_timestamp,fare\n1,5,1.5\n1,9,9.5\n1,7,7.5\n2,6,2.5\n');
    const ingest = (view: string) =>
      runIngest([
        '--address',
        server.address,
        '--project',
        project,
        '--view',
        view,
        '--file',
        file,
        '--write-online',
      ]);
    expect(await ingest('rides_online')).toMatchObject({
      code: 0,
      output: expect.stringContaining('online: 2 written, 0 stale'),
    });
    const response = await server.features.getOnlineFeatures({
      project,
      features: ['rides_online:fare'],
      entities: { rider_id: { values: { case: 'int64Values', value: { values: [1n, 2n] } } } },
    });
    expect(response.features[0]?.values?.values.value).toEqual(
      expect.objectContaining({ values: [9.5, 2.5] }),
    );
    // A view that is not served online is refused before anything is stored.
    await writeFile(file, 'rider_id,event_timestamp,fare,tags\n1,5,1.5,[]\n');
    expect(await ingest('rides')).toMatchObject({
      code: 1,
      output: expect.stringMatching(/write_online.*not served online.*nothing was stored/),
    });
  });

  it('names the line and column of a bad cell and stores nothing', async () => {
    const before = (await stored()).length;
    const file = join(directory, 'bad.csv');
    await writeFile(file, 'rider_id,event_timestamp,fare,tags\n1,5,1.5,[]\n2,6,2.5,[]\n3,7,lots,[]\n');
    const result = await runIngest([
      '--address',
      server.address,
      '--project',
      project,
      '--view',
      'rides',
      '--file',
      file,
    ]);
    expect(result.code).toBe(1);
    expect(result.output).toContain('line 4, column "fare": "lots" is not a number');
    const missing = join(directory, 'missing.csv');
    await writeFile(missing, 'rider_id,fare,tags\n1,1.5,[]\n');
    const noTime = await runIngest([
      '--address',
      server.address,
      '--project',
      project,
      '--view',
      'rides',
      '--file',
      missing,
    ]);
    expect(noTime).toMatchObject({
      code: 1,
      output: expect.stringContaining('missing columns: event_timestamp'),
    });
    expect((await stored()).length).toBe(before);
  });

  it('materializes the ingested rows of an online view with fstore materialize', async () => {
    await server.registry.applyFeatureView({
      project,
      featureView: {
        name: 'live',
        entities: ['rider'],
        online: true,
        features: [{ name: 'fare', type: ValueType.DOUBLE }],
      },
    });
    const file = join(directory, 'live.csv');
    await writeFile(
      file,
      'rider_id,event_timestamp,fare\n7,2026-01-01T00:00:01Z,1.5\n7,2026-01-01T00:00:02Z,2.5\n8,2026-01-01T00:00:03Z,8\n',
    );
    expect(
      (await runIngest(['--address', server.address, '--project', project, '--view', 'live', '--file', file]))
        .code,
    ).toBe(0);
    const result = await runCli([
      'materialize',
      '--address',
      server.address,
      '--project',
      project,
      '--view',
      'live',
      '--start',
      '2026-01-01T00:00:00Z',
      '--end',
      '2026-01-02T00:00:00Z',
    ]);
    expect(result).toMatchObject({
      code: 0,
      output: expect.stringContaining('live: 2 entities read, 2 written online'),
    });
    const response = await server.features.getOnlineFeatures({
      project,
      features: ['live:fare'],
      entities: { rider_id: { values: { case: 'int64Values', value: { values: [7n, 8n] } } } },
    });
    expect(response.features[0]?.values?.values.value).toMatchObject({ values: [2.5, 8] });
    const bad = await runCli([
      'materialize',
      '--address',
      server.address,
      '--project',
      project,
      '--view',
      'nope',
    ]);
    expect(bad).toMatchObject({ code: 1, output: expect.stringContaining('no feature view "nope"') });
  });
});
