import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  createWatermarkTracker,
  validateWatermarkOptions,
  type WatermarkOptions,
  watermarkDefaults,
} from '../../src/domain/watermarks.js';

const noWatermark = Number.NEGATIVE_INFINITY;

describe('watermarks, by example', () => {
  const options: WatermarkOptions = { boundMicros: 5, idleTimeoutMs: 1_000 };

  it('is the minimum over partitions of max event time − bound, and never goes back', () => {
    const tracker = createWatermarkTracker(options, 0);
    tracker.assignPartition(0, 0);
    tracker.assignPartition(1, 0);
    tracker.observe(0, 100, 10);
    expect(tracker.advance(10)).toBe(noWatermark); // partition 1 has no event yet: it holds W
    tracker.observe(1, 50, 20);
    expect(tracker.advance(20)).toBe(45);
    tracker.observe(1, 40, 30); // out of order: the maximum stays 50
    expect(tracker.advance(30)).toBe(45);
    tracker.observe(1, 120, 40);
    expect(tracker.advance(40)).toBe(95);
    tracker.revokePartition(0);
    tracker.assignPartition(2, 50, 60); // arrives lagging (from a checkpoint): W does not go back
    expect(tracker.advance(50)).toBe(95);
    expect(tracker.watermark).toBe(95);
    expect(tracker.partitions).toEqual([1, 2]);
    expect(tracker.maxEventTime(2)).toBe(60);
  });

  it('stops waiting for a partition idle for longer than the timeout (exactly at it: still waits)', () => {
    const tracker = createWatermarkTracker(options, 0);
    tracker.assignPartition(0, 0);
    tracker.assignPartition(1, 0);
    tracker.observe(0, 10, 0);
    tracker.observe(1, 100, 0);
    tracker.observe(1, 200, 500);
    expect(tracker.advance(1_000)).toBe(5); // partition 0: 1,000 ms quiet, not longer
    expect(tracker.advance(1_001)).toBe(195); // now idle: only partition 1 counts
    tracker.observe(0, 20, 1_002); // active again, far behind: W holds, it does not go back
    expect(tracker.advance(1_002)).toBe(195);
    tracker.observe(0, 300, 1_003);
    tracker.observe(1, 400, 1_003);
    expect(tracker.advance(1_003)).toBe(295);
  });

  it('holds W while a new partition has no event, until it has been idle for the timeout', () => {
    const tracker = createWatermarkTracker(options, 0);
    tracker.assignPartition(0, 0);
    tracker.observe(0, 100, 0);
    expect(tracker.advance(0)).toBe(95);
    tracker.assignPartition(1, 100);
    tracker.observe(0, 200, 200);
    expect(tracker.advance(200)).toBe(95);
    expect(tracker.advance(1_101)).toBe(195);
  });

  it('takes the furthest partition when every partition is idle, whichever fell idle first', () => {
    for (const lastActive of [0, 1]) {
      const tracker = createWatermarkTracker(options, 0);
      tracker.assignPartition(0, 0);
      tracker.assignPartition(1, 0);
      tracker.observe(0, 100, 0);
      tracker.observe(1, 50, 0);
      tracker.observe(lastActive, lastActive === 0 ? 100 : 50, 500);
      expect(tracker.advance(1_200)).toBe(lastActive === 0 ? 95 : 45);
      expect(tracker.advance(2_000)).toBe(95);
    }
    const empty = createWatermarkTracker(options, 0);
    expect(empty.advance(5_000)).toBe(noWatermark);
    empty.assignPartition(3, 0);
    expect(empty.advance(5_000)).toBe(noWatermark);
  });

  it('never treats a partition as idle with an infinite timeout', () => {
    const tracker = createWatermarkTracker({ ...options, idleTimeoutMs: Number.POSITIVE_INFINITY }, 0);
    tracker.assignPartition(0, 0);
    tracker.assignPartition(1, 0);
    tracker.observe(0, 100, 0);
    expect(tracker.advance(1e12)).toBe(noWatermark);
  });

  it('restores W and the partitions from a snapshot, their idle clocks starting at the restore', () => {
    const tracker = createWatermarkTracker(options, 0);
    tracker.assignPartition(0, 0);
    tracker.assignPartition(2, 0);
    tracker.observe(0, 100, 0);
    tracker.observe(2, 70, 0);
    tracker.advance(0);
    expect(tracker.snapshot()).toEqual({
      watermark: 65,
      partitions: [
        [0, 100],
        [2, 70],
      ],
    });
    const restored = createWatermarkTracker(options, 50_000, tracker.snapshot());
    expect(restored.watermark).toBe(65);
    restored.observe(0, 300, 50_500);
    expect(restored.advance(51_000)).toBe(65); // partition 2 restored at 50,000: not idle yet
    expect(restored.advance(51_001)).toBe(295);
    expect(createWatermarkTracker(options, 0).snapshot()).toEqual({ watermark: null, partitions: [] });
    expect(() => createWatermarkTracker(options, 0, { watermark: 1.5, partitions: [] } as never)).toThrow(
      /not a safe integer/,
    );
  });

  it('rejects misuse as internal errors and bad options naming the field', () => {
    const tracker = createWatermarkTracker(options, 0);
    expect(() => tracker.observe(0, 1, 0)).toThrow(/partition 0 is not assigned/);
    tracker.assignPartition(0, 0);
    expect(() => tracker.observe(0, 1.5, 0)).toThrow(/not a safe integer/);
    expect(() => tracker.advance(Number.NaN)).toThrow(/nowMs/);
    expect(() => tracker.assignPartition(-1, 0)).toThrow(/partition -1/);
    expect(validateWatermarkOptions({ boundMicros: -1, idleTimeoutMs: 0 }).map((e) => e.message)).toEqual([
      'stream_aggregation.watermark_bound: must be whole microseconds from 0 to 316224000000000 (ten years), got -1',
      'stream_aggregation.idle_timeout: must be whole milliseconds ≥ 1 or Infinity, got 0',
    ]);
    expect(validateWatermarkOptions({ boundMicros: 0, ...watermarkDefaults })).toEqual([]);
    expect(() => createWatermarkTracker({ boundMicros: 0.5, idleTimeoutMs: 1 }, 0)).toThrow(
      /watermark_bound/,
    );
  });
});

/** A model of the documented rules over the full history, recomputed from scratch at each advance. */
interface ModelPartition {
  readonly assignedAt: number;
  readonly restoredMax: number | null;
  readonly observations: { readonly time: number; readonly now: number }[];
}

const knownTimes = (p: ModelPartition): (number | null)[] => [
  p.restoredMax,
  ...p.observations.map((o) => o.time),
];

function maxOrNull(times: readonly (number | null)[]): number | null {
  const known = times.filter((time) => time !== null);
  return known.length === 0 ? null : Math.max(...known);
}

function modelCandidate(
  partitions: ReadonlyMap<number, ModelPartition>,
  now: number,
  options: WatermarkOptions,
) {
  const views = [...partitions.values()].map((p) => {
    const max = maxOrNull(knownTimes(p));
    const lastActivity = Math.max(p.assignedAt, ...p.observations.map((o) => o.now));
    return {
      watermark: max === null ? undefined : max - options.boundMicros,
      idle: now - lastActivity > options.idleTimeoutMs,
    };
  });
  const active = views.filter((view) => !view.idle);
  if (active.length > 0)
    return active.some((view) => view.watermark === undefined)
      ? undefined
      : Math.min(...active.map((view) => view.watermark!));
  const known = views.flatMap((view) => (view.watermark === undefined ? [] : [view.watermark]));
  return known.length === 0 ? undefined : Math.max(...known);
}

describe('watermarks against a model of the rules', () => {
  // Weighted towards records, so most scenarios reach real watermarks.
  const operation = fc.oneof(
    {
      weight: 6,
      arbitrary: fc.record({
        kind: fc.constant('observe' as const),
        partition: fc.nat(3),
        time: fc.integer({ min: -50, max: 50 }),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant('assign' as const),
        partition: fc.nat(3),
        restoredMax: fc.option(fc.integer({ min: -50, max: 50 })),
      }),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('revoke' as const), partition: fc.nat(3) }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('advance' as const) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('checkpoint' as const) }) },
  );
  const scenario = fc.record({
    options: fc.record({
      boundMicros: fc.integer({ min: 0, max: 10 }),
      idleTimeoutMs: fc.oneof(fc.integer({ min: 1, max: 6 }), fc.constant(Number.POSITIVE_INFINITY)),
    }),
    steps: fc.array(fc.record({ operation, elapsedMs: fc.integer({ min: 0, max: 4 }) }), {
      maxLength: 60,
      size: 'max',
    }),
  });

  it('computes W by the documented rules; W is monotone and never ahead of the data', () => {
    let finiteAdvances = 0;
    let totalAdvances = 0;
    fc.assert(
      fc.property(scenario, ({ options, steps }) => {
        let tracker = createWatermarkTracker(options, 0);
        const model = new Map<number, ModelPartition>();
        let expected = noWatermark;
        let greatestSeen = noWatermark;
        let now = 0;
        for (const { operation, elapsedMs } of steps) {
          now += elapsedMs;
          switch (operation.kind) {
            case 'observe': {
              const partition = model.get(operation.partition);
              if (!partition) {
                expect(() => tracker.observe(operation.partition, operation.time, now)).toThrow(
                  /not assigned/,
                );
                break;
              }
              tracker.observe(operation.partition, operation.time, now);
              partition.observations.push({ time: operation.time, now });
              greatestSeen = Math.max(greatestSeen, operation.time);
              break;
            }
            case 'assign': {
              tracker.assignPartition(operation.partition, now, operation.restoredMax);
              const existing = model.get(operation.partition);
              // Assigning a tracked partition again keeps its greatest event time, refreshes its activity.
              model.set(operation.partition, {
                assignedAt: now,
                restoredMax: maxOrNull([operation.restoredMax, ...(existing ? knownTimes(existing) : [])]),
                observations: [],
              });
              if (operation.restoredMax !== null)
                greatestSeen = Math.max(greatestSeen, operation.restoredMax);
              break;
            }
            case 'revoke':
              tracker.revokePartition(operation.partition);
              model.delete(operation.partition);
              break;
            case 'advance': {
              const candidate = modelCandidate(model, now, options);
              if (candidate !== undefined && candidate > expected) expected = candidate;
              const before = tracker.watermark;
              expect(tracker.advance(now)).toBe(expected);
              if (expected !== noWatermark) finiteAdvances++;
              totalAdvances++;
              expect(tracker.watermark).toBeGreaterThanOrEqual(before);
              expect(tracker.watermark).toBeLessThanOrEqual(greatestSeen - options.boundMicros);
              break;
            }
            case 'checkpoint': {
              // A restore restarts every partition's idle clock: the model does the same.
              tracker = createWatermarkTracker(options, now, tracker.snapshot());
              for (const [partition, state] of model)
                model.set(partition, {
                  assignedAt: now,
                  restoredMax: maxOrNull(knownTimes(state)),
                  observations: [],
                });
              expect(tracker.watermark).toBe(expected);
              break;
            }
          }
          expect(tracker.partitions).toEqual([...model.keys()].sort((a, b) => a - b));
        }
      }),
      { numRuns: 300 },
    );
    // The scenarios reach real watermarks, not only −∞.
    expect(finiteAdvances).toBeGreaterThan(totalAdvances / 2);
  });
});
