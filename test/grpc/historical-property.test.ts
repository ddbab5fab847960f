import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FeatureStatus, ValueType } from '../../gen/fstore/v1/values_pb.js';
import { randomName } from '../support/environment.js';
import { doubles, int64s, strings } from '../support/fixtures.js';
import { historicalRequests, ingestRequests, retrieveHistorical } from '../support/historical.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

const base = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z in microseconds
const second = 1_000_000;
const ttlSeconds = 3;

interface FeatureRow {
  user: string;
  merchant: bigint;
  eventTime: number;
  createdTime: number;
  amount: number | null;
}
interface EntityRow {
  user: string;
  merchant: bigint;
  time: number;
}

/**
 * The brute-force definition (DESIGN §4): greatest event time ≤ t, ties by latest created time,
 * full ties (equal event and created time) by the row written last. `rows` are in the order they
 * were written (the ingests in order, each in stream order), so a later row wins a full tie (>=).
 */
function oracle(rows: readonly FeatureRow[], entity: EntityRow, ttlMicros: number) {
  let best: FeatureRow | undefined;
  for (const row of rows) {
    if (row.user !== entity.user || row.merchant !== entity.merchant || row.eventTime > entity.time) continue;
    if (
      !best ||
      row.eventTime > best.eventTime ||
      (row.eventTime === best.eventTime && row.createdTime >= best.createdTime)
    )
      best = row;
  }
  if (!best) return { status: FeatureStatus.NOT_FOUND, value: 0, eventTime: 0n };
  const eventTime = BigInt(best.eventTime);
  if (ttlMicros > 0 && entity.time - best.eventTime > ttlMicros)
    return { status: FeatureStatus.OUTSIDE_MAX_AGE, value: 0, eventTime };
  if (best.amount === null) return { status: FeatureStatus.NULL_VALUE, value: 0, eventTime };
  return { status: FeatureStatus.PRESENT, value: best.amount, eventTime };
}

const users = fc.constantFrom('a', 'é', '');
const merchants = fc.constantFrom(-1n, 2n ** 40n);
// Times on a coarse grid, plus the microsecond just after: equal times, "exactly at t", "exactly at
// ttl" and "one microsecond over" all come up often.
const times = fc
  .tuple(fc.integer({ min: -2, max: 8 }), fc.constantFrom(0, 1))
  .map(([seconds, extra]) => base + seconds * second + extra);

const featureRows = fc
  .array(
    fc.record({
      user: users,
      merchant: merchants,
      eventTime: times,
      amount: fc.option(fc.double({ noNaN: true, noDefaultInfinity: true }), { nil: null, freq: 5 }),
    }),
    { maxLength: 25 },
  )
  // Created times from a few values, in random order relative to event times: ties on event time
  // are decided by them, and full ties (equal event and created time) by the write order.
  .chain((rows) =>
    fc
      .array(fc.integer({ min: 0, max: 2 }), { minLength: rows.length, maxLength: rows.length })
      .map((created) =>
        rows.map((row, index) => ({ ...row, createdTime: base + (created[index] as number) })),
      ),
  );

// Label times mostly derived from a feature row: exactly at it, a microsecond before or after,
// exactly at the ttl and one microsecond over; the rest anywhere.
const offsets = [0, -1, 1, ttlSeconds * second, ttlSeconds * second + 1, second];
const anyEntityRow = fc.record({ user: users, merchant: merchants, time: times });
const entityRowsFor = (rows: readonly FeatureRow[]) =>
  fc.array(
    rows.length === 0
      ? anyEntityRow
      : fc.oneof(
          anyEntityRow,
          fc.tuple(fc.nat(), fc.constantFrom(...offsets)).map(([pick, offset]) => {
            const row = rows[pick % rows.length] as FeatureRow;
            return { user: row.user, merchant: row.merchant, time: row.eventTime + offset };
          }),
        ),
    { minLength: 1, maxLength: 25 },
  );

/**
 * GetHistoricalFeatures against a brute-force oracle on random data, end to end (real gRPC,
 * PostgreSQL, the worker pool), with blocks, segments and chunks small enough that every
 * boundary is crossed.
 */
describe('GetHistoricalFeatures matches the point-in-time oracle', () => {
  let server: TestServer;
  const project = randomName('p');

  beforeAll(async () => {
    server = await startTestServer('memory', {
      historicalBlockRows: 7,
      historicalSegmentRows: 3,
      historicalChunkRows: 25,
    });
    await server.registry.applyEntity({
      project,
      entity: { name: 'user', joinKeys: [{ name: 'user_id', type: ValueType.STRING }] },
    });
    await server.registry.applyEntity({
      project,
      entity: { name: 'merchant', joinKeys: [{ name: 'merchant_id', type: ValueType.INT64 }] },
    });
  });
  afterAll(async () => server?.stop());

  it('for composite keys, equal times, created-time and full ties, ttl boundaries, nulls and missing entities', async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        featureRows.chain((rows) => fc.tuple(fc.constant(rows), entityRowsFor(rows))),
        fc.boolean(),
        fc.nat(),
        async ([rows, entities], withTtl, cut) => {
          // A view of its own per run: no run sees another's rows.
          const view = `v${run++}`;
          await server.registry.applyFeatureView({
            project,
            featureView: {
              name: view,
              entities: ['user', 'merchant'],
              ...(withTtl ? { ttl: { seconds: BigInt(ttlSeconds) } } : {}),
              features: [{ name: 'amount', type: ValueType.DOUBLE }],
            },
          });
          // One ingest, or two in a row: a full tie across them goes to the second.
          const ingestSplit = cut % (rows.length + 1);
          for (const part of [rows.slice(0, ingestSplit), rows.slice(ingestSplit)].filter(
            (each) => each.length > 0,
          ))
            await server.features.ingestFeatures(
              ingestRequests(
                project,
                view,
                {
                  entities: {
                    user_id: strings(...part.map((row) => row.user)),
                    merchant_id: int64s(...part.map((row) => row.merchant)),
                  },
                  eventTimestamps: part.map((row) => BigInt(row.eventTime)),
                  createdTimestamps: part.map((row) => BigInt(row.createdTime)),
                  features: [
                    {
                      name: 'amount',
                      values: doubles(...part.map((row) => row.amount ?? 0)),
                      nullRows: part.flatMap((row, index) => (row.amount === null ? [index] : [])),
                    },
                  ],
                },
                part.length,
              ),
            );
          const split = Math.floor(entities.length / 2);
          const chunk = (part: EntityRow[]) => ({
            entities: {
              user_id: strings(...part.map((row) => row.user)),
              merchant_id: int64s(...part.map((row) => row.merchant)),
            },
            timestamps: part.map((row) => BigInt(row.time)),
          });
          const parts = [entities.slice(0, split), entities.slice(split)].filter((part) => part.length > 0);
          const result = await retrieveHistorical(
            server.features,
            historicalRequests({ project, features: [`${view}:amount`] }, parts.map(chunk)),
            { timeoutMs: 10_000 },
          );
          const expected = entities.map((entity) => oracle(rows, entity, withTtl ? ttlSeconds * second : 0));
          const column = result.features[`${view}:amount`];
          expect(result.keys.user_id).toEqual(entities.map((entity) => entity.user));
          expect(column?.statuses).toEqual(expected.map((row) => row.status));
          expect(column?.values).toEqual(expected.map((row) => row.value));
          expect(column?.eventTimes).toEqual(expected.map((row) => row.eventTime));
        },
      ),
      { numRuns: 40 },
    );
  }, 120_000);
});
