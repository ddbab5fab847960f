import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FeatureStatus } from '../../gen/fstore/v1/values_pb.js';
import {
  createPointInTimeMerger,
  type EntityRows,
  type FeatureRows,
  type PointInTimeMatches,
  pointInTimeStatus,
} from '../../src/domain/point-in-time.js';

/** A composite entity key of two parts, as a client would send it (e.g. user id, country). */
type CompositeKey = readonly [bigint, string];
interface EntityRow {
  readonly key: CompositeKey;
  readonly t: number;
}
interface FeatureRow {
  readonly key: CompositeKey;
  readonly eventTime: number;
  readonly createdTime: number;
}
interface Expected {
  readonly match: number;
  readonly status: number;
  readonly eventTime: number;
}

const compareKeys = (x: CompositeKey, y: CompositeKey): number =>
  x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0;

/**
 * The caller's job, done independently here: one sorted dictionary of every composite key on
 * either side, mapped to dense or sparse ranks (offset negative) to show the kernel needs only
 * order and equality.
 */
function keyRanker(keys: readonly CompositeKey[], spacing: number): (key: CompositeKey) => number {
  const sorted = [...keys].sort(compareKeys);
  const ranks = new Map<string, number>();
  let rank = -7;
  for (const [i, key] of sorted.entries()) {
    if (i > 0 && compareKeys(sorted[i - 1]!, key) !== 0) rank += spacing;
    ranks.set(`${key[0]}|${key[1]}`, rank);
  }
  return (key) => ranks.get(`${key[0]}|${key[1]}`)!;
}

/**
 * Brute force straight from DESIGN §4: scan every feature row; same composite key, event time ≤ t;
 * greatest event time, then greatest created time, then the last in feature order. Ttl in BigInt.
 */
function oracle(row: EntityRow, features: readonly FeatureRow[], rowIndex: readonly number[], ttl: number) {
  let best = -1;
  for (const [i, feature] of features.entries()) {
    if (compareKeys(feature.key, row.key) !== 0 || feature.eventTime > row.t) continue;
    const chosen = best < 0 ? undefined : features[best]!;
    if (
      !chosen ||
      feature.eventTime > chosen.eventTime ||
      (feature.eventTime === chosen.eventTime && feature.createdTime >= chosen.createdTime)
    )
      best = i;
  }
  if (best < 0) return { match: -1, status: FeatureStatus.NOT_FOUND, eventTime: 0 };
  const { eventTime } = features[best]!;
  if (ttl > 0 && BigInt(row.t) - BigInt(eventTime) > BigInt(ttl))
    return { match: -1, status: FeatureStatus.OUTSIDE_MAX_AGE, eventTime };
  return { match: rowIndex[best]!, status: FeatureStatus.PRESENT, eventTime };
}

/** Splits [0, length) at the given cuts (duplicates give empty chunks). */
function chunkBounds(length: number, cuts: readonly number[]): [number, number][] {
  const points = [0, ...cuts.map((cut) => cut % (length + 1)).sort((x, y) => x - y), length];
  return points.slice(1).map((end, i) => [points[i]!, end]);
}

const sliceEntities = (rows: EntityRows, [start, end]: [number, number]): EntityRows => ({
  keyRanks: rows.keyRanks.subarray(start, end),
  times: rows.times.subarray(start, end),
  inputIndex: rows.inputIndex.subarray(start, end),
});
const sliceFeatures = (rows: FeatureRows, [start, end]: [number, number]): FeatureRows => ({
  keyRanks: rows.keyRanks.subarray(start, end),
  eventTimes: rows.eventTimes.subarray(start, end),
  createdTimes: rows.createdTimes.subarray(start, end),
  rowIndex: rows.rowIndex.subarray(start, end),
});

/**
 * Runs the merger over both sides in chunks, honouring its protocol; `preferEntityRows` decides
 * which side to push when both are wanted, so the interleaving is random too.
 */
function runMerger(
  entities: EntityRows,
  entityChunks: [number, number][],
  features: FeatureRows,
  featureChunks: [number, number][],
  ttl: number,
  preferEntityRows: readonly boolean[],
): Expected[] {
  const merger = createPointInTimeMerger(ttl);
  const outputs: PointInTimeMatches[] = [];
  let nextEntityChunk = 0;
  let nextFeatureChunk = 0;
  for (let step = 0; ; step++) {
    const canPushEntities = merger.wantsEntityRows && nextEntityChunk < entityChunks.length;
    const canPushFeatures = merger.wantsFeatureRows;
    if (!canPushEntities && !canPushFeatures) break;
    const pushEntities =
      canPushEntities &&
      (!canPushFeatures || (preferEntityRows[step % Math.max(1, preferEntityRows.length)] ?? true));
    if (pushEntities) {
      outputs.push(merger.pushEntityRows(sliceEntities(entities, entityChunks[nextEntityChunk++]!)));
    } else if (nextFeatureChunk < featureChunks.length) {
      merger.pushFeatureRows(sliceFeatures(features, featureChunks[nextFeatureChunk++]!));
    } else {
      merger.finish();
    }
  }
  expect(nextEntityChunk).toBe(entityChunks.length);
  expect(merger.wantsEntityRows).toBe(true);
  return outputs.flatMap((out) =>
    Array.from(out.match, (match, i) => ({ match, status: out.status[i]!, eventTime: out.eventTime[i]! })),
  );
}

/** Sorts both sides the way the pipeline will, and builds their columns. */
function prepare(entityRows: readonly EntityRow[], featureRows: readonly FeatureRow[], rankSpacing = 1) {
  const rank = keyRanker(
    [...entityRows.map((row) => row.key), ...featureRows.map((row) => row.key)],
    rankSpacing,
  );
  // Stable sorts: feature rows tied on (key, event, created) keep their original order.
  const entityOrder = entityRows
    .map((_, i) => i)
    .sort(
      (x, y) => compareKeys(entityRows[x]!.key, entityRows[y]!.key) || entityRows[x]!.t - entityRows[y]!.t,
    );
  const featureOrder = featureRows
    .map((_, i) => i)
    .sort((x, y) => {
      const [p, q] = [featureRows[x]!, featureRows[y]!];
      return compareKeys(p.key, q.key) || p.eventTime - q.eventTime || p.createdTime - q.createdTime;
    });
  const sortedEntities = entityOrder.map((i) => entityRows[i]!);
  const sortedFeatures = featureOrder.map((i) => featureRows[i]!);
  const entities: EntityRows = {
    keyRanks: Int32Array.from(sortedEntities, (row) => rank(row.key)),
    times: Float64Array.from(sortedEntities, (row) => row.t),
    inputIndex: Int32Array.from(entityOrder),
  };
  const features: FeatureRows = {
    keyRanks: Int32Array.from(sortedFeatures, (row) => rank(row.key)),
    eventTimes: Float64Array.from(sortedFeatures, (row) => row.eventTime),
    createdTimes: Float64Array.from(sortedFeatures, (row) => row.createdTime),
    rowIndex: Int32Array.from(featureOrder),
  };
  return { sortedEntities, sortedFeatures, featureOrder, entities, features };
}

/** Everything in one chunk each, fed in the natural order. */
function mergeAll(entityRows: readonly EntityRow[], featureRows: readonly FeatureRow[], ttl: number) {
  const { entities, features } = prepare(entityRows, featureRows);
  return runMerger(entities, [[0, entityRows.length]], features, [[0, featureRows.length]], ttl, []);
}

describe('point-in-time merge, by example', () => {
  const user: CompositeKey = [42n, 'FR'];
  const day = 86_400_000_000; // one day in microseconds

  it('never uses a feature computed after the label time (label leakage)', () => {
    // A fraud label at day 10. The account's "chargebacks in 30 days" feature was 0 on day 5 and
    // became 3 on day 11, after the fraud was found: training on 3 would leak the label.
    const results = mergeAll(
      [{ key: user, t: 10 * day }],
      [
        { key: user, eventTime: 5 * day, createdTime: 5 * day },
        { key: user, eventTime: 11 * day, createdTime: 11 * day },
      ],
      0,
    );
    expect(results).toEqual([{ match: 0, status: pointInTimeStatus.present, eventTime: 5 * day }]);
  });

  it('takes a row exactly at t, the latest created among equal event times, and ages out past ttl', () => {
    const rows = [
      { key: user, eventTime: 10 * day, createdTime: 10 * day }, // row 0
      { key: user, eventTime: 10 * day, createdTime: 12 * day }, // row 1: a later correction of row 0
    ];
    const labels = [
      { key: user, t: 10 * day }, // exactly at the event time: row 1 wins the tie
      { key: user, t: 11 * day }, // exactly one ttl (a day) old: still present
      { key: user, t: 11 * day + 1 }, // one microsecond over: withheld, event time still reported
      { key: [42n, 'DE'] as const, t: 11 * day }, // an entity the view has never seen
    ];
    expect(mergeAll(labels, rows, day)).toEqual([
      { match: -1, status: pointInTimeStatus.notFound, eventTime: 0 },
      { match: 1, status: pointInTimeStatus.present, eventTime: 10 * day },
      { match: 1, status: pointInTimeStatus.present, eventTime: 10 * day },
      { match: -1, status: pointInTimeStatus.outsideMaxAge, eventTime: 10 * day },
    ]);
  });

  it('uses the status numbers of fstore.v1.FeatureStatus', () => {
    expect(pointInTimeStatus).toEqual({
      present: FeatureStatus.PRESENT,
      notFound: FeatureStatus.NOT_FOUND,
      outsideMaxAge: FeatureStatus.OUTSIDE_MAX_AGE,
    });
  });
});

describe('point-in-time merge against a brute-force oracle', () => {
  // Small domains so keys, times and created times collide; a base far from 0 (or before the
  // epoch) checks large and negative times; small ttls land exactly on, and just past, the boundary.
  const key = fc.tuple(fc.bigInt({ min: -1n, max: 2n }), fc.constantFrom('a', 'b', 'c'));
  const offset = fc.integer({ min: -6, max: 6 });
  const scenario = fc
    .record({
      base: fc.constantFrom(0, 1_700_000_000_000_000, -2_208_988_800_000_000),
      rankSpacing: fc.integer({ min: 1, max: 3 }),
      ttl: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 5 })),
      entityRows: fc.array(fc.record({ key, t: offset }), { maxLength: 30 }),
      featureRows: fc.array(
        fc.record({ key, eventTime: offset, createdTime: fc.integer({ min: 0, max: 2 }) }),
        {
          maxLength: 40,
        },
      ),
      entityCuts: fc.array(fc.nat(), { maxLength: 6 }),
      featureCuts: fc.array(fc.nat(), { maxLength: 8 }),
      preferEntityRows: fc.array(fc.boolean(), { maxLength: 8 }),
    })
    .map(({ base, entityRows, featureRows, ...rest }) => ({
      ...rest,
      entityRows: entityRows.map((row) => ({ key: row.key, t: base + row.t })),
      featureRows: featureRows.map((row) => ({
        key: row.key,
        eventTime: base + row.eventTime,
        createdTime: base + row.createdTime,
      })),
    }));

  const property = fc.property(scenario, (s) => {
    const { sortedEntities, sortedFeatures, featureOrder, entities, features } = prepare(
      s.entityRows,
      s.featureRows,
      s.rankSpacing,
    );
    const results = runMerger(
      entities,
      chunkBounds(sortedEntities.length, s.entityCuts),
      features,
      chunkBounds(sortedFeatures.length, s.featureCuts),
      s.ttl,
      s.preferEntityRows,
    );
    expect(results).toEqual(sortedEntities.map((row) => oracle(row, sortedFeatures, featureOrder, s.ttl)));
  });

  it('agrees on random data, chunking and interleaving', () => {
    fc.assert(property, { numRuns: 1_000 });
  });

  it('agrees on a fixed seed (reproducible)', () => {
    fc.assert(property, { numRuns: 500, seed: 20_261_122 });
  });
});

describe('point-in-time merge protocol', () => {
  const entities = (keyRanks: number[], times: number[]): EntityRows => ({
    keyRanks: Int32Array.from(keyRanks),
    times: Float64Array.from(times),
    inputIndex: Int32Array.from(keyRanks, (_, i) => i),
  });
  const features = (keyRanks: number[], eventTimes: number[], createdTimes = eventTimes): FeatureRows => ({
    keyRanks: Int32Array.from(keyRanks),
    eventTimes: Float64Array.from(eventTimes),
    createdTimes: Float64Array.from(createdTimes),
    rowIndex: Int32Array.from(keyRanks, (_, i) => i),
  });

  it('resolves an entity row as soon as a feature row sorts after it, and carries a row across chunks', () => {
    const merger = createPointInTimeMerger(0);
    const out = merger.pushEntityRows(entities([1, 1, 2], [5, 9, 0]));
    expect(merger.resolved).toBe(0);
    merger.pushFeatureRows({ ...features([1], [4]), rowIndex: Int32Array.of(100) });
    expect(merger.resolved).toBe(0); // the next chunk may hold (1, 5)
    merger.pushFeatureRows({ ...features([1, 1], [6, 7]), rowIndex: Int32Array.of(101, 102) });
    expect(merger.resolved).toBe(1); // (1, 6) sorts after (1, 5): row 100, carried from the first chunk
    expect(merger.wantsFeatureRows).toBe(true);
    merger.finish();
    expect(merger.resolved).toBe(3);
    expect([...out.match]).toEqual([100, 102, -1]);
  });

  it('rejects unsorted rows and pushes out of turn', () => {
    const merger = createPointInTimeMerger(0);
    expect(() => merger.pushFeatureRows(features([1, 1], [5, 5], [2, 1]))).toThrow(/not sorted/);
    expect(() => merger.pushEntityRows(entities([2, 1], [0, 0]))).toThrow(/not sorted/);
    const next = createPointInTimeMerger(0);
    next.pushEntityRows(entities([1], [5]));
    expect(() => next.pushEntityRows(entities([1], [6]))).toThrow(/before the previous chunk was resolved/);
    next.pushFeatureRows(features([1, 3], [0, 0]));
    expect(() => next.pushFeatureRows(features([4], [0]))).toThrow(/before the previous chunk was consumed/);
    expect(() => createPointInTimeMerger(-1)).toThrow(/ttlMicros/);
  });
});
