import type { MessageInitShape } from '@bufbuild/protobuf';
import { type DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IngestFeaturesRequestSchema } from '../../gen/fstore/v1/feature_service_pb.js';
import { FeatureStatus, ValueType } from '../../gen/fstore/v1/values_pb.js';
import { randomName } from '../support/environment.js';
import { doubles, int64s, strings } from '../support/fixtures.js';
import { type HistoricalResult, historicalRequests, retrieveHistorical } from '../support/historical.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

/**
 * GetHistoricalFeatures cross-checked against DuckDB's ASOF JOIN on a larger seeded data set: the
 * same feature rows go through IngestFeatures (real gRPC, real PostgreSQL) and into DuckDB tables,
 * and every output row (status, value, event time of each feature) must equal what DuckDB computes
 * for it. The property test covers the corner cases on tiny inputs; this one covers volume: many
 * keys per block, segments of many keys, ties on event time everywhere, full ties
 * (equal event and created time) decided by the write order.
 */

const base = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z in microseconds
const second = 1_000_000;
const gridStep = 300 * second; // event times on a 5-minute grid: many equal times per key
const gridSlots = 200;
const pairTtlSeconds = 7_200; // two hours: 24 grid steps
const seed = 20_260_101;

const pairEntityCount = 2_000;
const pairRowCount = 50_000;
const fullTieCopies = 3_000;
const userRowCount = 3_000;
const entityRowCount = 20_000;
const inputChunkRows = 2_500;
const ingestChunkRows = 10_000;

/** mulberry32: a small seeded PRNG, so a failure reproduces exactly. */
function createRandom(state: number) {
  const next = () => {
    state = (state + 0x6d2b79f5) | 0;
    let mixed = Math.imul(state ^ (state >>> 15), 1 | state);
    mixed = (mixed + Math.imul(mixed ^ (mixed >>> 7), 61 | mixed)) ^ mixed;
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 4_294_967_296;
  };
  const integer = (below: number) => Math.floor(next() * below);
  return { next, integer, pick: <T>(values: readonly T[]) => values[integer(values.length)] as T };
}

interface PairRow {
  user: string;
  merchant: bigint;
  eventTime: number;
  createdTime: number;
  amount: number | null;
  label: string | null;
  clicks: bigint | null;
}
interface UserRow {
  user: string;
  eventTime: number;
  createdTime: number;
  risk: number | null;
}
interface EntityRow {
  user: string;
  merchant: bigint;
  time: number;
}

function generate() {
  const random = createRandom(seed);
  // Plain, unicode and empty user ids; merchants across the int64 range.
  const users = [...Array.from({ length: 600 }, (_, index) => `user-${index}`), '', 'é', 'ü ß', '用户'];
  const merchants = [
    ...Array.from({ length: 40 }, (_, index) => BigInt(index * 7919)),
    -1n,
    2n ** 40n,
    -(2n ** 62n),
    2n ** 63n - 1n,
  ];
  const pairs = new Map<string, { user: string; merchant: bigint }>();
  while (pairs.size < pairEntityCount) {
    const user = random.pick(users);
    const merchant = random.pick(merchants);
    pairs.set(`${user}\u0001${merchant}`, { user, merchant });
  }
  const entities = [...pairs.values()];
  // Distinct created times in an order unrelated to event times: ties on event time are decided
  // by them, and never left open.
  const createdOrder = Array.from({ length: pairRowCount + userRowCount }, (_, index) => index);
  for (let index = createdOrder.length - 1; index > 0; index--) {
    const other = random.integer(index + 1);
    [createdOrder[index], createdOrder[other]] = [
      createdOrder[other] as number,
      createdOrder[index] as number,
    ];
  }
  const createdTime = (index: number) => base + 10_000 * second + (createdOrder[index] as number);
  const eventTime = () => base + random.integer(gridSlots) * gridStep + (random.next() < 0.05 ? 1 : 0);

  const pairRows: PairRow[] = Array.from({ length: pairRowCount }, (_, index) => {
    const entity = random.pick(entities);
    return {
      ...entity,
      eventTime: eventTime(),
      createdTime: createdTime(index),
      amount: random.next() < 0.1 ? null : Math.round((random.next() - 0.5) * 2e6) / 1000,
      label: random.next() < 0.02 ? null : `label-${index}${random.next() < 0.1 ? '-é' : ''}`,
      clicks: random.next() < 0.02 ? null : BigInt(random.integer(1e9)) * BigInt(random.integer(1e9) - 5e8),
    };
  });
  const userRows: UserRow[] = Array.from({ length: userRowCount }, (_, index) => ({
    user: random.pick(users),
    eventTime: eventTime(),
    createdTime: createdTime(pairRowCount + index),
    risk: random.next() < 0.05 ? null : random.next(),
  }));

  // Label times: mostly derived from a feature row (exact hit, a microsecond either side, exactly at
  // the ttl and just over it), some before every row, some anywhere; a few unknown keys.
  const offsets = [0, 0, 0, -1, 1, pairTtlSeconds * second, pairTtlSeconds * second + 1];
  const entityRows: EntityRow[] = Array.from({ length: entityRowCount }, () => {
    const draw = random.next();
    if (draw < 0.05)
      return { user: `nobody-${random.integer(100)}`, merchant: random.pick(merchants), time: base };
    if (draw < 0.1) return { ...random.pick(entities), time: base - 1 - random.integer(3_600) * second };
    if (draw < 0.25)
      return { ...random.pick(entities), time: base + Math.floor(random.next() * gridSlots * gridStep) };
    const row = random.pick(pairRows);
    return { user: row.user, merchant: row.merchant, time: row.eventTime + random.pick(offsets) };
  });

  // Full ties: copies of some rows (copies included, so some ties are three-way or more) with the
  // same keys, event AND created time but other values, anywhere in the stream. The answer is the
  // row written last: the later one in the ingested order, which `seq` records for DuckDB.
  const tieRandom = createRandom(seed + 1);
  const written = [...pairRows];
  for (let copy = 0; copy < fullTieCopies; copy++) {
    const source = tieRandom.pick(written);
    written.splice(tieRandom.integer(written.length + 1), 0, {
      ...source,
      amount: copy % 50 === 0 ? null : copy + 0.5,
      label: `tie-${copy}`,
      clicks: BigInt(copy),
    });
  }
  return { pairRows: written, userRows, entityRows };
}

type IngestRequest = MessageInitShape<typeof IngestFeaturesRequestSchema>;

/** One IngestFeatures stream of `rows` in chunks: header, chunks, end. */
function ingestStream<Row extends { eventTime: number; createdTime: number }>(
  project: string,
  featureView: string,
  rows: readonly Row[],
  chunk: (
    part: readonly Row[],
  ) => Pick<Extract<IngestRequest['message'], { case: 'rows' }>['value'], 'entities' | 'features'>,
): IngestRequest[] {
  const requests: IngestRequest[] = [{ message: { case: 'header', value: { project, featureView } } }];
  for (let start = 0; start < rows.length; start += ingestChunkRows) {
    const part = rows.slice(start, start + ingestChunkRows);
    requests.push({
      message: {
        case: 'rows',
        value: {
          ...chunk(part),
          eventTimestamps: part.map((row) => BigInt(row.eventTime)),
          createdTimestamps: part.map((row) => BigInt(row.createdTime)),
        },
      },
    });
  }
  requests.push({ message: { case: 'end', value: { rowCount: BigInt(rows.length) } } });
  return requests;
}

const nullRowsOf = <Row>(rows: readonly Row[], isNull: (row: Row) => boolean) =>
  rows.flatMap((row, index) => (isNull(row) ? [index] : []));

async function loadDuckDB(
  connection: DuckDBConnection,
  { pairRows, userRows, entityRows }: ReturnType<typeof generate>,
) {
  // Times stay BIGINT microseconds: the comparison and the ttl arithmetic are exact integers.
  // seq: the order the rows were ingested in (one stream each), which breaks full ties.
  await connection.run(`CREATE TABLE pair_rows (user_id VARCHAR, merchant_id BIGINT, event_time BIGINT,
    created_time BIGINT, amount DOUBLE, label VARCHAR, clicks BIGINT, seq BIGINT)`);
  await connection.run(
    'CREATE TABLE user_rows (user_id VARCHAR, event_time BIGINT, created_time BIGINT, risk DOUBLE, seq BIGINT)',
  );
  await connection.run('CREATE TABLE entity_rows (i INTEGER, user_id VARCHAR, merchant_id BIGINT, t BIGINT)');
  const pairs = await connection.createAppender('pair_rows');
  for (const [seq, row] of pairRows.entries()) {
    pairs.appendVarchar(row.user);
    pairs.appendBigInt(row.merchant);
    pairs.appendBigInt(BigInt(row.eventTime));
    pairs.appendBigInt(BigInt(row.createdTime));
    if (row.amount === null) pairs.appendNull();
    else pairs.appendDouble(row.amount);
    if (row.label === null) pairs.appendNull();
    else pairs.appendVarchar(row.label);
    if (row.clicks === null) pairs.appendNull();
    else pairs.appendBigInt(row.clicks);
    pairs.appendBigInt(BigInt(seq));
    pairs.endRow();
  }
  pairs.closeSync();
  const users = await connection.createAppender('user_rows');
  for (const [seq, row] of userRows.entries()) {
    users.appendVarchar(row.user);
    users.appendBigInt(BigInt(row.eventTime));
    users.appendBigInt(BigInt(row.createdTime));
    if (row.risk === null) users.appendNull();
    else users.appendDouble(row.risk);
    users.appendBigInt(BigInt(seq));
    users.endRow();
  }
  users.closeSync();
  const entities = await connection.createAppender('entity_rows');
  entityRows.forEach((row, index) => {
    entities.appendInteger(index);
    entities.appendVarchar(row.user);
    entities.appendBigInt(row.merchant);
    entities.appendBigInt(BigInt(row.time));
    entities.endRow();
  });
  entities.closeSync();
}

interface ViewSpec {
  readonly view: string;
  readonly table: string;
  readonly keys: readonly string[];
  readonly ttlSeconds: number;
  /** Feature name → the SQL zero value of its type (what FStore sends when not PRESENT). */
  readonly features: Readonly<Record<string, string>>;
}

/**
 * DESIGN §4 in SQL: ASOF picks the row with the greatest event_time ≤ t, but any one among equal
 * event times, so the table is first reduced to one row per (keys, event time): the latest
 * created, and of those the one written last (greatest seq). Then the ttl (t − event time > ttl:
 * OUTSIDE_MAX_AGE, value withheld) and per-feature nulls.
 */
function expectedSql(spec: ViewSpec): string {
  const keys = spec.keys.join(', ');
  const ttl = spec.ttlSeconds * second;
  const aged =
    spec.ttlSeconds > 0 ? `WHEN e.t - f.event_time > ${ttl} THEN ${FeatureStatus.OUTSIDE_MAX_AGE}` : '';
  const columns = Object.entries(spec.features).flatMap(([name, zero]) => {
    const status = `CASE WHEN f.event_time IS NULL THEN ${FeatureStatus.NOT_FOUND} ${aged}
      WHEN f.${name} IS NULL THEN ${FeatureStatus.NULL_VALUE} ELSE ${FeatureStatus.PRESENT} END`;
    return [
      `${status} AS ${name}_status`,
      `CASE WHEN ${status} = ${FeatureStatus.PRESENT} THEN f.${name} ELSE ${zero} END AS ${name}_value`,
    ];
  });
  return `WITH latest AS (
      SELECT * FROM ${spec.table}
      QUALIFY row_number() OVER (PARTITION BY ${keys}, event_time ORDER BY created_time DESC, seq DESC) = 1
    )
    SELECT e.i, coalesce(f.event_time, 0) AS event_time, ${columns.join(', ')}
    FROM entity_rows e ASOF LEFT JOIN latest f
      ON ${spec.keys.map((key) => `e.${key} = f.${key}`).join(' AND ')} AND e.t >= f.event_time
    ORDER BY e.i`;
}

/** Rows where FStore and DuckDB disagree, described for the failure message (at most `limit`). */
function differences(
  actual: HistoricalResult,
  expected: Record<string, unknown[]>,
  spec: ViewSpec,
  entityRows: readonly EntityRow[],
  limit = 10,
): string[] {
  const found: string[] = [];
  for (const feature of Object.keys(spec.features)) {
    const reference = `${spec.view}:${feature}`;
    const column = actual.features[reference];
    if (!column) return [`${reference}: missing from the output`];
    for (let row = 0; row < entityRows.length && found.length < limit; row++) {
      const want = {
        status: expected[`${feature}_status`]?.[row],
        value: expected[`${feature}_value`]?.[row],
        eventTime: expected.event_time?.[row],
      };
      const got = {
        status: column.statuses[row],
        value: column.values[row],
        eventTime: column.eventTimes[row],
      };
      if (
        want.status !== got.status ||
        !Object.is(want.value, got.value) ||
        want.eventTime !== got.eventTime
      ) {
        const input = entityRows[row] as EntityRow;
        found.push(
          `row ${row} (${JSON.stringify(input.user)}, ${input.merchant}, t=${input.time}) ${reference}: ` +
            `FStore ${String(got.status)}/${String(got.value)}/${String(got.eventTime)}, ` +
            `DuckDB ${String(want.status)}/${String(want.value)}/${String(want.eventTime)}`,
        );
      }
    }
  }
  return found;
}

const pairSpec: ViewSpec = {
  view: 'pair_stats',
  table: 'pair_rows',
  keys: ['user_id', 'merchant_id'],
  ttlSeconds: pairTtlSeconds,
  features: { amount: '0::DOUBLE', label: "''", clicks: '0::BIGINT' },
};
const userSpec: ViewSpec = {
  view: 'user_risk',
  table: 'user_rows',
  keys: ['user_id'],
  ttlSeconds: 0,
  features: { risk: '0::DOUBLE' },
};

describe('GetHistoricalFeatures agrees with DuckDB ASOF JOIN', () => {
  let server: TestServer;
  let duck: DuckDBInstance;
  let connection: DuckDBConnection;
  const project = randomName('p');
  const data = generate();

  beforeAll(async () => {
    // Blocks, segments and chunks that the 20,000 input rows cross many times, and input chunks
    // that do not line up with blocks.
    server = await startTestServer('memory', {
      maxBatchRows: ingestChunkRows,
      historicalBlockRows: 6_000,
      historicalSegmentRows: 4_096,
      historicalChunkRows: 3_000, // also the most input rows per chunk
    });
    const { registry, features } = server;
    await registry.applyEntity({
      project,
      entity: { name: 'user', joinKeys: [{ name: 'user_id', type: ValueType.STRING }] },
    });
    await registry.applyEntity({
      project,
      entity: { name: 'merchant', joinKeys: [{ name: 'merchant_id', type: ValueType.INT64 }] },
    });
    await registry.applyFeatureView({
      project,
      featureView: {
        name: pairSpec.view,
        entities: ['user', 'merchant'],
        ttl: { seconds: BigInt(pairTtlSeconds) },
        features: [
          { name: 'amount', type: ValueType.DOUBLE },
          { name: 'label', type: ValueType.STRING },
          { name: 'clicks', type: ValueType.INT64 },
        ],
      },
    });
    await registry.applyFeatureView({
      project,
      featureView: {
        name: userSpec.view,
        entities: ['user'],
        features: [{ name: 'risk', type: ValueType.DOUBLE }],
      },
    });
    const { pairRows, userRows } = data;
    await features.ingestFeatures(
      ingestStream(project, pairSpec.view, pairRows, (part) => ({
        entities: {
          user_id: strings(...part.map((row) => row.user)),
          merchant_id: int64s(...part.map((row) => row.merchant)),
        },
        features: [
          {
            name: 'amount',
            values: doubles(...part.map((row) => row.amount ?? 0)),
            nullRows: nullRowsOf(part, (row) => row.amount === null),
          },
          {
            name: 'label',
            values: strings(...part.map((row) => row.label ?? '')),
            nullRows: nullRowsOf(part, (row) => row.label === null),
          },
          {
            name: 'clicks',
            values: int64s(...part.map((row) => row.clicks ?? 0n)),
            nullRows: nullRowsOf(part, (row) => row.clicks === null),
          },
        ],
      })),
      { timeoutMs: 60_000 },
    );
    await features.ingestFeatures(
      ingestStream(project, userSpec.view, userRows, (part) => ({
        entities: { user_id: strings(...part.map((row) => row.user)) },
        features: [
          {
            name: 'risk',
            values: doubles(...part.map((row) => row.risk ?? 0)),
            nullRows: nullRowsOf(part, (row) => row.risk === null),
          },
        ],
      })),
      { timeoutMs: 60_000 },
    );
    duck = await DuckDBInstance.create(':memory:', { threads: '2' });
    connection = await duck.connect();
    await loadDuckDB(connection, data);
  }, 90_000);

  afterAll(async () => {
    connection?.closeSync();
    duck?.closeSync();
    await server?.stop();
  });

  it('on 20,000 labelled rows × 53,000 + 3,000 feature rows, row by row in input order', async () => {
    const { entityRows } = data;
    const chunks = [];
    for (let start = 0; start < entityRows.length; start += inputChunkRows) {
      const part = entityRows.slice(start, start + inputChunkRows);
      chunks.push({
        entities: {
          user_id: strings(...part.map((row) => row.user)),
          merchant_id: int64s(...part.map((row) => row.merchant)),
        },
        timestamps: part.map((row) => BigInt(row.time)),
      });
    }
    const references = [
      ...Object.keys(userSpec.features).map((name) => `${userSpec.view}:${name}`),
      ...Object.keys(pairSpec.features).map((name) => `${pairSpec.view}:${name}`),
    ];
    const result = await retrieveHistorical(
      server.features,
      historicalRequests({ project, features: references, chunkRows: 1_700 }, chunks),
      { timeoutMs: 60_000 },
    );
    expect(result.timestamps).toEqual(entityRows.map((row) => BigInt(row.time)));
    expect(result.keys.user_id).toEqual(entityRows.map((row) => row.user));
    expect(result.keys.merchant_id).toEqual(entityRows.map((row) => row.merchant));

    for (const spec of [pairSpec, userSpec]) {
      const expected = (await connection.runAndReadAll(expectedSql(spec))).getColumnsObjectJS();
      expect(expected.i).toEqual(entityRows.map((_, index) => index));
      expect(differences(result, expected, spec, entityRows)).toEqual([]);
    }

    // The data must exercise every case, or agreement proves little.
    const count = (reference: string, status: FeatureStatus) =>
      result.features[reference]?.statuses.filter((value) => value === status).length ?? 0;
    for (const status of [
      FeatureStatus.PRESENT,
      FeatureStatus.NOT_FOUND,
      FeatureStatus.NULL_VALUE,
      FeatureStatus.OUTSIDE_MAX_AGE,
    ])
      expect(count('pair_stats:amount', status), FeatureStatus[status]).toBeGreaterThan(200);
    expect(count('user_risk:risk', FeatureStatus.NULL_VALUE)).toBeGreaterThan(0);
    // Label times that hit a tie of event times on their key, where the created time decides.
    const ties = await connection.runAndReadAll(`WITH chosen AS (
        SELECT e.user_id, e.merchant_id, f.event_time FROM entity_rows e
        ASOF JOIN (SELECT DISTINCT user_id, merchant_id, event_time FROM pair_rows) f
          ON e.user_id = f.user_id AND e.merchant_id = f.merchant_id AND e.t >= f.event_time
      ), tied AS (SELECT user_id, merchant_id, event_time FROM pair_rows GROUP BY ALL HAVING count(*) > 1)
      SELECT count(*)::INTEGER AS n FROM chosen JOIN tied USING (user_id, merchant_id, event_time)`);
    expect(ties.getColumnsObjectJS().n?.[0]).toBeGreaterThan(500);
    // Label times that hit a full tie (equal event and created time), where the write order decides.
    const fullTies = await connection.runAndReadAll(`WITH chosen AS (
        SELECT e.user_id, e.merchant_id, f.event_time FROM entity_rows e
        ASOF JOIN (SELECT DISTINCT user_id, merchant_id, event_time FROM pair_rows) f
          ON e.user_id = f.user_id AND e.merchant_id = f.merchant_id AND e.t >= f.event_time
      ), top AS (
        SELECT user_id, merchant_id, event_time, count(*) AS n FROM pair_rows
        GROUP BY user_id, merchant_id, event_time, created_time
        QUALIFY row_number() OVER (PARTITION BY user_id, merchant_id, event_time ORDER BY created_time DESC) = 1
      )
      SELECT count(*)::INTEGER AS n FROM chosen JOIN top USING (user_id, merchant_id, event_time) WHERE top.n > 1`);
    expect(fullTies.getColumnsObjectJS().n?.[0]).toBeGreaterThan(300);
  }, 60_000);
});
