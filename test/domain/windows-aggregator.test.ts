import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type AggregateValue, aggregationFunctions, type EventValue } from '../../src/domain/aggregations.js';
import { decodeStreamCheckpoint, encodeStreamCheckpoint } from '../../src/domain/stream-checkpoint.js';
import { createWatermarkTracker, type WatermarkTracker } from '../../src/domain/watermarks.js';
import {
  createWindowAggregator,
  type EventOutcome,
  type StreamEvent,
  validateWindowAggregationSpec,
  type WindowAggregationSpec,
  type WindowAggregator,
  type WindowEmission,
} from '../../src/domain/window-aggregator.js';
import { floorMod } from '../../src/domain/windows.js';
import {
  type AppliedEvent,
  bruteForce,
  floorDivide,
  numericFunctions,
  startsHolding,
} from '../support/window-oracle.js';

// ---------------------------------------------------------------------------------------------
// The brute-force oracle: the same lateness rule over the same arrival order, then every window's
// aggregates computed from scratch over the applied events, with BigInt window arithmetic.

function isInvalid(spec: WindowAggregationSpec, event: StreamEvent): boolean {
  return spec.aggregations.some(({ function: fn, field }) => {
    if (field === undefined) return false;
    const value = event.fields[field];
    if (value === null || value === undefined) return false;
    if (typeof value === 'number') return !Number.isFinite(value);
    if (typeof value === 'bigint') return false;
    return numericFunctions.includes(fn);
  });
}

function greatestCommonDivisor(a: number, b: number): number {
  return b === 0 ? a : greatestCommonDivisor(b, a % b);
}

/** Identifies a window independently of the aggregator's shape numbering. */
const windowId = (key: string, size: number, slide: number, start: number) =>
  `${key}|${size}|${slide}|${start}`;

interface ExpectedWindow {
  readonly results: Record<string, AggregateValue>;
  /** Largest |input| of the window, the scale of float tolerances. */
  readonly scale: number;
}

interface OracleRun {
  readonly outcomes: EventOutcome['status'][];
  /** Expected (keys, tiles) of the state after each operation. */
  readonly stateSizes: { keys: number; tiles: number }[];
  readonly windows: Map<string, ExpectedWindow>;
}

/** `watermarks[i]` is the watermark given at operation i (undefined for events). */
function oracle(
  spec: WindowAggregationSpec,
  operations: readonly Operation[],
  watermarks: readonly (number | undefined)[],
): OracleRun {
  const lateness = spec.allowedLatenessMicros;
  const shapes = [
    ...new Map(spec.aggregations.map((a) => [`${a.sizeMicros}/${a.slideMicros}`, a])).values(),
  ].map(({ sizeMicros, slideMicros }) => ({ size: sizeMicros, slide: slideMicros }));
  const tile = shapes.reduce((divisor, { slide }) => greatestCommonDivisor(divisor, slide), 0);
  let watermark = Number.NEGATIVE_INFINITY;
  const applied: AppliedEvent[] = [];
  const outcomes: EventOutcome['status'][] = [];
  const stateSizes: { keys: number; tiles: number }[] = [];

  /** A tile is kept while a window holding it may fire, change, or decide its following window. */
  function stateSize() {
    const tiles = new Set<string>();
    const keys = new Set<string>();
    for (const e of applied) {
      const tileStart = Number(floorDivide(BigInt(e.time), BigInt(tile)) * BigInt(tile));
      const needed = shapes.some(({ size, slide }) =>
        startsHolding(tileStart, size, slide).some((start) => {
          const end = start + size;
          return (
            end > watermark ||
            end + lateness - 1 > watermark ||
            (spec.emitFollowingEmptyWindow && end + slide > watermark)
          );
        }),
      );
      if (!needed) continue;
      tiles.add(`${e.key}|${tileStart}`);
      keys.add(e.key);
    }
    return { keys: keys.size, tiles: tiles.size };
  }

  for (const [index, operation] of operations.entries()) {
    if (operation.kind === 'event') {
      const { event } = operation;
      if (isInvalid(spec, event)) outcomes.push('invalid');
      else if (event.time + lateness <= watermark) outcomes.push('late');
      else {
        applied.push({ ...event, arrival: applied.length });
        outcomes.push('applied');
      }
    } else watermark = Math.max(watermark, watermarks[index]!);
    stateSizes.push(stateSize());
  }

  const windows = new Map<string, ExpectedWindow>();
  for (const { size, slide } of shapes) {
    const aggregations = spec.aggregations.filter((a) => a.sizeMicros === size && a.slideMicros === slide);
    for (const key of new Set(applied.map((e) => e.key))) {
      const events = applied.filter((e) => e.key === key);
      const starts = new Set<number>();
      for (const e of events)
        for (const start of startsHolding(e.time, size, slide)) {
          starts.add(start);
          if (spec.emitFollowingEmptyWindow) starts.add(start + slide);
        }
      for (const start of starts) {
        if (start + size > watermark) continue; // not fired
        const inside = events.filter((e) => start <= e.time && e.time < start + size);
        const results: Record<string, AggregateValue> = {};
        for (const { name, function: fn, field } of aggregations)
          results[name] = bruteForce(fn, field, inside);
        const scale = Math.max(
          0,
          ...inside.flatMap((e) =>
            Object.values(e.fields).map((v) => (typeof v === 'number' ? Math.abs(v) : 0)),
          ),
        );
        windows.set(windowId(key, size, slide, start), { results, scale });
      }
    }
  }
  return { outcomes, stateSizes, windows };
}

// ---------------------------------------------------------------------------------------------
// Scenarios and the driver (what the stream tier will do): events in arrival order, a watermark
// tracker per consumer, watermark advances, checkpoints.

type Operation =
  | {
      readonly kind: 'event';
      readonly event: StreamEvent;
      readonly partition: number;
      readonly elapsedMs: number;
    }
  /** W from the tracker at the current processing time. */
  | { readonly kind: 'advance'; readonly elapsedMs: number }
  /** W set directly (lower values must be ignored). */
  | { readonly kind: 'jump'; readonly watermark: number };

interface Scenario {
  readonly spec: WindowAggregationSpec;
  readonly boundMicros: number;
  readonly idleTimeoutMs: number;
  readonly partitions: number;
  readonly operations: readonly Operation[];
  /** The last operation moves W past every window and drop time. */
  readonly finished: boolean;
}

interface LogEntry {
  readonly watermark?: number;
  readonly outcome?: EventOutcome;
  readonly emissions: readonly WindowEmission[];
  readonly stateSize: { readonly keys: number; readonly tiles: number };
}

class Driver {
  now = 0;
  constructor(
    readonly scenario: Scenario,
    public aggregator: WindowAggregator,
    public tracker: WatermarkTracker,
  ) {}

  static start(scenario: Scenario): Driver {
    const tracker = createWatermarkTracker(scenario, 0);
    for (let partition = 0; partition < scenario.partitions; partition++)
      tracker.assignPartition(partition, 0);
    return new Driver(scenario, createWindowAggregator(scenario.spec), tracker);
  }

  step(operation: Operation): LogEntry {
    switch (operation.kind) {
      case 'event': {
        this.now += operation.elapsedMs;
        const outcome = this.aggregator.pushEvent(operation.event);
        if (outcome.status !== 'invalid')
          this.tracker.observe(
            operation.partition % this.scenario.partitions,
            operation.event.time,
            this.now,
          );
        return {
          outcome,
          emissions: outcome.status === 'applied' ? outcome.emissions : [],
          stateSize: this.aggregator.stateSize,
        };
      }
      case 'advance': {
        this.now += operation.elapsedMs;
        const watermark = this.tracker.advance(this.now);
        return {
          watermark,
          emissions: this.aggregator.advanceWatermark(watermark),
          stateSize: this.aggregator.stateSize,
        };
      }
      case 'jump':
        return {
          watermark: operation.watermark,
          emissions: this.aggregator.advanceWatermark(operation.watermark),
          stateSize: this.aggregator.stateSize,
        };
    }
  }

  checkpoint(position: number): Uint8Array {
    return encodeStreamCheckpoint({
      positions: { '0': String(position) },
      watermarks: this.tracker.snapshot(),
      windows: this.aggregator.snapshot(),
    });
  }

  static restore(scenario: Scenario, bytes: Uint8Array, now: number): { driver: Driver; position: number } {
    const checkpoint = decodeStreamCheckpoint(bytes);
    const driver = new Driver(
      scenario,
      createWindowAggregator(scenario.spec, checkpoint.windows),
      createWatermarkTracker(scenario, now, checkpoint.watermarks),
    );
    driver.now = now;
    return { driver, position: Number(checkpoint.positions['0']) };
  }
}

const xValue = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: -20, max: 20 }) },
  { weight: 2, arbitrary: fc.double({ min: -1e3, max: 1e3, noNaN: true }) },
  { weight: 1, arbitrary: fc.bigInt({ min: -5n, max: 5n }) },
  { weight: 2, arbitrary: fc.constantFrom(null, undefined) },
  { weight: 1, arbitrary: fc.constant('oops') }, // invalid for numeric functions
);
const yValue = fc.constantFrom<EventValue>('p', 'q', 'r', true, 3, null);

const scenarioArbitrary = (options: { checkpoints: boolean }) =>
  fc
    .record({
      base: fc.constantFrom(0, 1_700_000_000_000_000, -2_208_988_800_000_000, -35),
      unit: fc.constantFrom(1, 3, 10),
      shapes: fc.array(
        fc.record({ slides: fc.integer({ min: 1, max: 3 }), windows: fc.integer({ min: 1, max: 4 }) }),
        {
          minLength: 1,
          maxLength: 2,
        },
      ),
      aggregations: fc.array(
        fc.record({
          fn: fc.constantFrom(...aggregationFunctions),
          field: fc.constantFrom('x', 'y', undefined),
          shape: fc.nat(),
        }),
        { minLength: 1, maxLength: 5 },
      ),
      lateness: fc.integer({ min: 0, max: 25 }),
      bound: fc.integer({ min: 0, max: 15 }),
      emitFollowing: fc.boolean(),
      partitions: fc.integer({ min: 1, max: 2 }),
      idleTimeoutMs: options.checkpoints
        ? fc.constant(Number.POSITIVE_INFINITY) // a restore restarts idle clocks: keep runs comparable
        : fc.oneof(fc.integer({ min: 1, max: 8 }), fc.constant(Number.POSITIVE_INFINITY)),
      events: fc.array(
        fc.record({
          key: fc.constantFrom('a', 'b', 'c'),
          at: fc.integer({ min: 0, max: 80 }),
          delay: fc.integer({ min: 0, max: 12 }),
          x: xValue,
          y: yValue,
          partition: fc.nat(1),
          elapsedMs: fc.nat(3),
        }),
        { maxLength: 50, size: 'max' },
      ),
      /** Full shuffle instead of bounded disorder. */
      shuffled: fc.boolean(),
      advances: fc.array(
        fc.oneof(
          { weight: 3, arbitrary: fc.constant('none' as const) },
          { weight: 3, arbitrary: fc.constant('tracker' as const) },
          { weight: 1, arbitrary: fc.integer({ min: -10, max: 100 }) },
        ),
        { maxLength: 50, size: 'max' },
      ),
      finish: fc.boolean(),
    })
    .map((s): Scenario => {
      const shapes = s.shapes.map(({ slides, windows }) => ({
        slideMicros: slides * s.unit,
        sizeMicros: slides * s.unit * windows,
      }));
      const spec: WindowAggregationSpec = {
        allowedLatenessMicros: s.lateness,
        emitFollowingEmptyWindow: s.emitFollowing,
        aggregations: s.aggregations.map(({ fn, field, shape }, index) => ({
          name: `f${index}`,
          function: fn,
          // Numeric functions read x (mostly numbers); count may count events.
          field: numericFunctions.includes(fn) || (field === undefined && fn !== 'count') ? 'x' : field,
          ...shapes[shape % shapes.length]!,
        })),
      };
      const arrival = s.events
        .map((e) => ({ ...e, order: s.shuffled ? e.delay : e.at + e.delay }))
        .sort((a, b) => a.order - b.order);
      const operations: Operation[] = [];
      for (const [index, e] of arrival.entries()) {
        const fields: Record<string, EventValue> = { y: e.y };
        if (e.x !== undefined) fields.x = e.x;
        operations.push({
          kind: 'event',
          event: { key: e.key, time: s.base + e.at, fields },
          partition: e.partition,
          elapsedMs: e.elapsedMs,
        });
        const advance = s.advances[index] ?? 'none';
        if (advance === 'tracker') operations.push({ kind: 'advance', elapsedMs: e.elapsedMs });
        else if (advance !== 'none') operations.push({ kind: 'jump', watermark: s.base + advance });
      }
      if (s.finish) operations.push({ kind: 'jump', watermark: s.base + 1_000_000 });
      return {
        spec,
        boundMicros: s.bound,
        idleTimeoutMs: s.idleTimeoutMs,
        partitions: s.partitions,
        operations,
        finished: s.finish,
      };
    });

function expectResultsClose(
  actual: Readonly<Record<string, AggregateValue>>,
  expected: ExpectedWindow,
  spec: WindowAggregationSpec,
) {
  expect(Object.keys(actual).sort()).toEqual(Object.keys(expected.results).sort());
  for (const { name, function: fn } of spec.aggregations) {
    if (!(name in expected.results)) continue;
    const [a, e] = [actual[name], expected.results[name]];
    if (typeof e === 'number' && ['sum', 'mean', 'stddev_pop', 'stddev_samp'].includes(fn)) {
      expect(typeof a, `${fn} ${name}`).toBe('number');
      expect(Math.abs((a as number) - e), `${fn} ${name}: ${a} vs ${e}`).toBeLessThanOrEqual(
        1e-9 * (1 + expected.scale),
      );
    } else expect(a, `${fn} ${name}`).toEqual(e);
  }
}

describe('window aggregator against a brute-force batch oracle', () => {
  it('emits, as the last result of every window, what a batch computation over the applied events gives', () => {
    let emitted = 0;
    let reemitted = 0;
    let lateEvents = 0;
    fc.assert(
      fc.property(scenarioArbitrary({ checkpoints: false }), (scenario) => {
        const driver = Driver.start(scenario);
        const { aggregator } = driver;
        const watermarks: (number | undefined)[] = [];
        const last = new Map<string, WindowEmission>();
        /** The last emission of each (key, end): its row must hold every shape's final result at end. */
        const lastAtEnd = new Map<string, WindowEmission>();
        const fired = new Set<string>();
        let watermark = Number.NEGATIVE_INFINITY;
        const log = scenario.operations.map((operation) => driver.step(operation));
        for (const entry of log) {
          watermarks.push(entry.watermark);
          if (entry.watermark !== undefined) watermark = Math.max(watermark, entry.watermark);
          for (const emission of entry.emissions) {
            const { sizeMicros, slideMicros } = aggregator.shapes[emission.shape]!;
            expect(emission.end - emission.start).toBe(sizeMicros);
            expect(startsHolding(emission.start, sizeMicros, slideMicros)).toContain(emission.start);
            expect(emission.end).toBeLessThanOrEqual(watermark); // never early
            const id = windowId(emission.key, sizeMicros, slideMicros, emission.start);
            expect(emission.trigger).toBe(entry.outcome ? 'late_event' : 'watermark');
            if (emission.trigger === 'watermark') {
              expect(fired.has(id), `${id} fired twice`).toBe(false);
              fired.add(id);
            } else reemitted++;
            last.set(id, emission);
            lastAtEnd.set(`${emission.key}|${emission.end}`, emission);
            emitted++;
          }
        }
        expect(aggregator.watermark).toBe(watermark);
        const expected = oracle(scenario.spec, scenario.operations, watermarks);
        expect(log.flatMap((entry) => (entry.outcome ? [entry.outcome.status] : []))).toEqual(
          expected.outcomes,
        );
        lateEvents += expected.outcomes.filter((status) => status === 'late').length;
        expect(log.map((entry) => entry.stateSize)).toEqual(expected.stateSizes);
        expect([...last.keys()].sort()).toEqual([...expected.windows.keys()].sort());
        for (const [id, emission] of last)
          expectResultsClose(emission.results, expected.windows.get(id)!, scenario.spec);
        for (const emission of lastAtEnd.values())
          for (const { sizeMicros, slideMicros, aggregations } of aggregator.shapes) {
            const start = emission.end - sizeMicros;
            const shapeRow = Object.fromEntries(
              Object.entries(emission.row).filter(([name]) => aggregations.includes(name)),
            );
            if (floorMod(start, slideMicros) !== 0) {
              expect(shapeRow, 'no window of the shape ends there').toEqual({});
              continue;
            }
            const window = expected.windows.get(windowId(emission.key, sizeMicros, slideMicros, start));
            if (window) expectResultsClose(shapeRow, window, scenario.spec);
            else
              expect(shapeRow, 'an empty window').toEqual(
                Object.fromEntries(
                  aggregations.map((name) => {
                    const fn = scenario.spec.aggregations.find((a) => a.name === name)!.function;
                    return [name, fn === 'count' || fn === 'distinct_count' ? 0 : null];
                  }),
                ),
              );
          }
        if (scenario.finished) expect(aggregator.stateSize).toEqual({ keys: 0, tiles: 0 });
      }),
      { numRuns: 300 },
    );
    // The scenarios do exercise firing, re-emission and lateness.
    expect(emitted).toBeGreaterThan(3_000);
    expect(reemitted).toBeGreaterThan(300);
    expect(lateEvents).toBeGreaterThan(500);
  });

  it('continues from a checkpoint (through its bytes) exactly as an uninterrupted run', () => {
    fc.assert(
      fc.property(
        scenarioArbitrary({ checkpoints: true }),
        fc.array(fc.nat(), { minLength: 1, maxLength: 3 }),
        (scenario, cuts) => {
          const operations = scenario.operations;
          const uninterrupted = Driver.start(scenario);
          const expected = operations.map((operation) => uninterrupted.step(operation));

          const cutPoints = new Set(cuts.map((cut) => cut % (operations.length + 1)));
          let driver = Driver.start(scenario);
          const actual: LogEntry[] = [];
          for (let position = 0; position <= operations.length; position++) {
            if (cutPoints.has(position)) {
              const bytes = driver.checkpoint(position);
              const restored = Driver.restore(scenario, bytes, driver.now);
              expect(restored.position).toBe(position);
              // Restoring is exact: the restored state checkpoints to the same bytes.
              expect(Buffer.from(restored.driver.checkpoint(position)).equals(Buffer.from(bytes))).toBe(true);
              driver = restored.driver;
              expect(driver.aggregator.stateSize).toEqual(
                expected[position - 1]?.stateSize ?? { keys: 0, tiles: 0 },
              );
            }
            const operation = operations[position];
            if (operation) actual.push(driver.step(operation));
          }
          expect(actual).toEqual(expected);
        },
      ),
      { numRuns: 250 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Boundary cases, by example.

const count = (overrides: Partial<WindowAggregationSpec['aggregations'][number]> = {}) => ({
  name: 'events',
  function: 'count' as const,
  sizeMicros: 10,
  slideMicros: 10,
  ...overrides,
});
const event = (time: number, fields: Record<string, EventValue> = {}, key = 'user'): StreamEvent => ({
  key,
  time,
  fields,
});
const windows = (emissions: readonly WindowEmission[]) =>
  emissions.map(({ key, start, end, results, trigger }) => ({ key, start, end, results, trigger }));

describe('window aggregator boundaries', () => {
  it('puts an event exactly at a window end in the next window, and fires exactly when W reaches the end', () => {
    const aggregator = createWindowAggregator({
      aggregations: [count()],
      allowedLatenessMicros: 0,
      emitFollowingEmptyWindow: false,
    });
    aggregator.pushEvent(event(9));
    aggregator.pushEvent(event(10));
    expect(aggregator.advanceWatermark(9)).toEqual([]);
    expect(windows(aggregator.advanceWatermark(10))).toEqual([
      { key: 'user', start: 0, end: 10, results: { events: 1 }, trigger: 'watermark' },
    ]);
    expect(windows(aggregator.advanceWatermark(20))).toEqual([
      { key: 'user', start: 10, end: 20, results: { events: 1 }, trigger: 'watermark' },
    ]);
    expect(aggregator.advanceWatermark(15)).toEqual([]); // W never goes back
    expect(aggregator.watermark).toBe(20);
  });

  it('is late exactly at t + allowed lateness = W, and re-emits fired windows for an event one microsecond later', () => {
    const aggregator = createWindowAggregator({
      aggregations: [count(), count({ name: 'total', function: 'sum', field: 'amount' })],
      allowedLatenessMicros: 5,
      emitFollowingEmptyWindow: false,
    });
    aggregator.pushEvent(event(12, { amount: 1 }));
    aggregator.advanceWatermark(20);
    expect(aggregator.pushEvent(event(15, { amount: 2 }))).toEqual({ status: 'late' });
    const outcome = aggregator.pushEvent(event(16, { amount: 3 }));
    expect(outcome.status).toBe('applied');
    expect(outcome.status === 'applied' && windows(outcome.emissions)).toEqual([
      { key: 'user', start: 10, end: 20, results: { events: 2, total: 4 }, trigger: 'late_event' },
    ]);
    // Lateness 0: an event at W is late, one after it is not (and its window has not fired).
    const strict = createWindowAggregator({
      aggregations: [count()],
      allowedLatenessMicros: 0,
      emitFollowingEmptyWindow: false,
    });
    strict.advanceWatermark(20);
    expect(strict.pushEvent(event(20)).status).toBe('late');
    expect(strict.pushEvent(event(21))).toEqual({ status: 'applied', emissions: [] });
  });

  it('keeps a tile exactly as long as a window may still change, fire or decide its following window', () => {
    // Sliding windows of 20 every 10, lateness 5: the tile [0, 10) is in [-10, 10) and [0, 20); the
    // last event [0, 20) can take is at 19, late once 19 + 5 ≤ W.
    const aggregator = createWindowAggregator({
      aggregations: [count({ sizeMicros: 20 })],
      allowedLatenessMicros: 5,
      emitFollowingEmptyWindow: false,
    });
    aggregator.pushEvent(event(3));
    expect(aggregator.stateSize).toEqual({ keys: 1, tiles: 1 });
    expect(windows(aggregator.advanceWatermark(23))).toEqual([
      { key: 'user', start: -10, end: 10, results: { events: 1 }, trigger: 'watermark' },
      { key: 'user', start: 0, end: 20, results: { events: 1 }, trigger: 'watermark' },
    ]);
    expect(aggregator.stateSize).toEqual({ keys: 1, tiles: 1 });
    expect(aggregator.pushEvent(event(19)).status).toBe('applied'); // 19 + 5 > 23
    aggregator.advanceWatermark(24);
    expect(aggregator.stateSize).toEqual({ keys: 1, tiles: 1 }); // [10, 20) is still needed by [10, 30)
    aggregator.advanceWatermark(34);
    expect(aggregator.stateSize).toEqual({ keys: 0, tiles: 0 });
  });

  it('emits the first empty window after a non-empty one, so the value falls back to zero', () => {
    const spec = (emitFollowingEmptyWindow: boolean): WindowAggregationSpec => ({
      aggregations: [
        count({ sizeMicros: 30 }),
        count({ name: 'amount', function: 'sum', field: 'amount', sizeMicros: 30 }),
        count({ name: 'payees', function: 'distinct_count', field: 'payee', sizeMicros: 30 }),
      ],
      allowedLatenessMicros: 0,
      emitFollowingEmptyWindow,
    });
    for (const following of [true, false]) {
      const aggregator = createWindowAggregator(spec(following));
      aggregator.pushEvent(event(5, { amount: 7, payee: 'shop' }));
      const ends = windows(aggregator.advanceWatermark(100)).map(({ start, end, results }) => ({
        start,
        end,
        results,
      }));
      const busy = { events: 1, amount: 7, payees: 1 };
      expect(ends).toEqual([
        { start: -20, end: 10, results: busy },
        { start: -10, end: 20, results: busy },
        { start: 0, end: 30, results: busy },
        ...(following ? [{ start: 10, end: 40, results: { events: 0, amount: null, payees: 0 } }] : []),
      ]);
      expect(aggregator.stateSize).toEqual({ keys: 0, tiles: 0 });
    }
  });

  it('puts times before the epoch in the windows a true modulo gives', () => {
    const aggregator = createWindowAggregator({
      aggregations: [count()],
      allowedLatenessMicros: 0,
      emitFollowingEmptyWindow: false,
    });
    aggregator.pushEvent(event(-1));
    aggregator.pushEvent(event(-10));
    aggregator.pushEvent(event(-11));
    expect(
      windows(aggregator.advanceWatermark(0)).map(({ start, results }) => [start, results.events]),
    ).toEqual([
      [-20, 1],
      [-10, 2],
    ]);
  });

  it('merges tiles of the greatest common divisor of the slides for windows of several shapes', () => {
    const aggregator = createWindowAggregator({
      aggregations: [
        count({ name: 'per_six', sizeMicros: 6, slideMicros: 6 }),
        count({ name: 'per_four', sizeMicros: 8, slideMicros: 4 }),
        count({ name: 'max_four', function: 'max', field: 'v', sizeMicros: 8, slideMicros: 4 }),
      ],
      allowedLatenessMicros: 0,
      emitFollowingEmptyWindow: false,
    });
    expect(aggregator.tileMicros).toBe(2);
    expect(aggregator.shapes).toEqual([
      { sizeMicros: 6, slideMicros: 6, aggregations: ['per_six'] },
      { sizeMicros: 8, slideMicros: 4, aggregations: ['per_four', 'max_four'] },
    ]);
    for (const [time, v] of [
      [1, 5],
      [5, 9],
      [7, 2],
    ] as const)
      aggregator.pushEvent(event(time, { v }));
    expect(
      aggregator
        .advanceWatermark(12)
        .map(({ shape, start, end, results }) => ({ shape, start, end, results })),
    ).toEqual([
      { shape: 1, start: -4, end: 4, results: { per_four: 1, max_four: 5 } },
      { shape: 0, start: 0, end: 6, results: { per_six: 2 } },
      { shape: 1, start: 0, end: 8, results: { per_four: 3, max_four: 9 } },
      { shape: 0, start: 6, end: 12, results: { per_six: 1 } },
      { shape: 1, start: 4, end: 12, results: { per_four: 2, max_four: 9 } },
    ]);
  });

  it('orders fired windows by end, then key, then shape', () => {
    const aggregator = createWindowAggregator({
      aggregations: [count(), count({ name: 'longer', sizeMicros: 20 })],
      allowedLatenessMicros: 0,
      emitFollowingEmptyWindow: false,
    });
    for (const key of ['b', 'a', 'c']) aggregator.pushEvent(event(5, {}, key));
    aggregator.pushEvent(event(15, {}, 'a'));
    expect(aggregator.advanceWatermark(20).map(({ key, shape, end }) => `${end}:${key}:${shape}`)).toEqual([
      '10:a:0',
      '10:a:1',
      '10:b:0',
      '10:b:1',
      '10:c:0',
      '10:c:1',
      '20:a:0',
      '20:a:1',
      '20:b:1',
      '20:c:1',
    ]);
  });

  it('refuses bad events whole, naming the field, and keeps nothing of them', () => {
    const aggregator = createWindowAggregator({
      aggregations: [count(), count({ name: 'total', function: 'sum', field: 'amount' })],
      allowedLatenessMicros: 0,
      emitFollowingEmptyWindow: true,
    });
    expect(aggregator.pushEvent(event(1, { amount: 'ten' }))).toEqual({
      status: 'invalid',
      problem: 'field amount: a number is required, got a string',
    });
    expect(aggregator.pushEvent(event(1.5)).status).toBe('invalid');
    expect(aggregator.pushEvent(event(Number.MAX_SAFE_INTEGER))).toEqual({
      status: 'invalid',
      problem: `time: ${Number.MAX_SAFE_INTEGER} is not whole microseconds from ${aggregator.eventTimeRange.min} to ${aggregator.eventTimeRange.max}`,
    });
    // An inherited property is not a field.
    expect(aggregator.pushEvent(event(1, Object.create({ amount: 'ten' }))).status).toBe('applied');
    expect(aggregator.stateSize).toEqual({ keys: 1, tiles: 1 });
    expect(() => aggregator.advanceWatermark(Number.NaN)).toThrow(/NaN/);
  });

  it('validates the spec, naming every bad field', () => {
    const messages = (spec: WindowAggregationSpec) =>
      validateWindowAggregationSpec(spec).map((e) => e.message);
    expect(
      messages({ aggregations: [count()], allowedLatenessMicros: 0, emitFollowingEmptyWindow: true }),
    ).toEqual([]);
    expect(
      messages({
        aggregations: [
          count({ sizeMicros: 25 }),
          count({ function: 'sum' }),
          count({ name: '9lives', function: 'median' as never, field: '' }),
        ],
        allowedLatenessMicros: -1,
        emitFollowingEmptyWindow: 'yes' as never,
      }),
    ).toEqual([
      'stream_aggregation.aggregations[0].slide: 10 µs does not divide the window size 25 µs (a window must be whole slides)',
      'stream_aggregation.aggregations[1].name: duplicate name "events"',
      'stream_aggregation.aggregations[1].field: is required for sum',
      'stream_aggregation.aggregations[2].name: "9lives" must start with a letter and hold only letters, digits and _',
      'stream_aggregation.aggregations[2].function: must be one of count, sum, mean, min, max, stddev_pop, stddev_samp, last, distinct_count',
      'stream_aggregation.aggregations[2].field: must be a field name of 1 to 256 characters',
      'stream_aggregation.allowed_lateness: must be whole microseconds from 0 to 316224000000000 (ten years), got -1',
      'stream_aggregation.emit_following_empty_window: must be true or false',
    ]);
    expect(
      messages({
        aggregations: [
          count({ sizeMicros: 86_400_000_000, slideMicros: 86_400_000_000 }),
          count({ name: 'b', sizeMicros: 7, slideMicros: 7 }),
        ],
        allowedLatenessMicros: 0,
        emitFollowingEmptyWindow: true,
      }),
    ).toEqual([
      'stream_aggregation.aggregations[0].window_size: would merge 86400000000 tiles of 1 µs (the greatest common divisor of the slides); at most 100000',
    ]);
    expect(messages({ aggregations: [], allowedLatenessMicros: 0, emitFollowingEmptyWindow: true })).toEqual([
      'stream_aggregation.aggregations: at least one aggregation is required',
    ]);
    expect(() =>
      createWindowAggregator({ aggregations: [], allowedLatenessMicros: 0, emitFollowingEmptyWindow: true }),
    ).toThrow(/at least one aggregation/);
  });

  it('refuses a checkpoint of another spec, and corrupt bytes, without guessing', () => {
    const spec: WindowAggregationSpec = {
      aggregations: [count()],
      allowedLatenessMicros: 0,
      emitFollowingEmptyWindow: true,
    };
    const aggregator = createWindowAggregator(spec);
    aggregator.pushEvent(event(1));
    const snapshot = aggregator.snapshot();
    const codeOf = (run: () => unknown) => {
      try {
        run();
        return 'ok';
      } catch (error) {
        return (error as { code: string }).code;
      }
    };
    expect(codeOf(() => createWindowAggregator({ ...spec, allowedLatenessMicros: 1 }, snapshot))).toBe(
      'failed_precondition',
    );
    expect(codeOf(() => createWindowAggregator(spec, { ...snapshot, keys: [['user', [[3, [1]]]]] }))).toBe(
      'data_loss',
    );
    expect(codeOf(() => createWindowAggregator(spec, { ...snapshot, keys: [['user', [[0, ['x']]]]] }))).toBe(
      'data_loss',
    );
    expect(codeOf(() => decodeStreamCheckpoint(Uint8Array.of(0xc1)))).toBe('data_loss');
    expect(codeOf(() => decodeStreamCheckpoint(Uint8Array.of(0x01)))).toBe('data_loss');
    const bytes = encodeStreamCheckpoint({
      positions: { '3': '42' },
      watermarks: { watermark: null, partitions: [] },
      windows: snapshot,
    });
    expect(decodeStreamCheckpoint(bytes).positions).toEqual({ '3': '42' });
    expect(codeOf(() => createWindowAggregator(spec, decodeStreamCheckpoint(bytes).windows))).toBe('ok');
  });
});
