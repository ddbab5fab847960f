import { describe, expect, it } from 'vitest';
import { createPointInTimeMerger, pointInTimeStatus } from '../../src/domain/point-in-time.js';

/**
 * Full ties in the merge kernel: of feature rows equal in key, event time and created time, the
 * last in feature order is chosen (the offline store sends them in write order, so the row
 * written last wins), also when the tied rows straddle feature chunks.
 */
describe('point-in-time merge: full ties', () => {
  // Key 0: a row at (10, 4), then three tied at (10, 5); key 1: two tied at (20, 7), one at (30, 1).
  const keyRanks = Int32Array.from([0, 0, 0, 0, 1, 1, 1]);
  const eventTimes = Float64Array.from([10, 10, 10, 10, 20, 20, 30]);
  const createdTimes = Float64Array.from([4, 5, 5, 5, 7, 7, 1]);
  const rowIndex = Int32Array.from([100, 101, 102, 103, 104, 105, 106]);
  const entities = {
    keyRanks: Int32Array.from([0, 0, 1, 1, 1]),
    times: Float64Array.from([9, 10, 20, 29, 30]),
    inputIndex: Int32Array.from([0, 1, 2, 3, 4]),
  };
  const { present, notFound } = pointInTimeStatus;

  for (const cuts of [[], [1], [2], [3], [2, 3], [1, 2, 3, 4, 5, 6], [5], [6]]) {
    it(`keeps the last of tied rows with feature chunks cut at ${JSON.stringify(cuts)}`, () => {
      const merger = createPointInTimeMerger(0);
      const bounds = [0, ...cuts, keyRanks.length];
      const out = merger.pushEntityRows(entities);
      for (let part = 0; part + 1 < bounds.length && merger.resolved < entities.keyRanks.length; part++) {
        const [start, end] = [bounds[part] as number, bounds[part + 1] as number];
        merger.pushFeatureRows({
          keyRanks: keyRanks.subarray(start, end),
          eventTimes: eventTimes.subarray(start, end),
          createdTimes: createdTimes.subarray(start, end),
          rowIndex: rowIndex.subarray(start, end),
        });
      }
      if (merger.resolved < entities.keyRanks.length) merger.finish();
      expect([...out.status]).toEqual([notFound, present, present, present, present]);
      expect([...out.match]).toEqual([-1, 103, 105, 105, 106]);
    });
  }
});
