/**
 * The per-key window state machine of a stream aggregation (DESIGN §4), driven by events in arrival
 * order and by watermark advances. Pure: no clock, no I/O; the stream tier feeds it and writes
 * what it emits.
 *
 * State is one tile per (key, tile start): tiles are `tileMicros` long, the greatest common
 * divisor of the aggregations' slides (the slide itself when all share one), and hold one partial
 * aggregate per (kind, input field). A window [s, s + size) merges its size / tileMicros tiles.
 *
 * The rules, exactly (W is the watermark given to `advanceWatermark`, −∞ at first):
 * - An event whose time is not a safe integer in `eventTimeRange`, or one of whose read fields holds
 *   a value its aggregation cannot take, is invalid: nothing changes (checked first, so an event
 *   both bad and late is reported invalid).
 * - An event with t + allowedLateness ≤ W is late: nothing changes and it is reported as late.
 * - Otherwise it updates its tile, and every window of it that already fired (end ≤ W) is emitted
 *   at once with its updated result (trigger `late_event`) — again, or for the first time if it
 *   was empty when it fired — as is, with `emitFollowingEmptyWindow`, the fired window after them.
 * - A window fires when W ≥ end (trigger `watermark`): its result, meant to be written with event
 *   time = end, is emitted if the window holds an event of the key or — with
 *   `emitFollowingEmptyWindow` — if the window one slide earlier does. That first empty window
 *   (count 0, distinct_count 0, other results null) makes the online value fall back to zero when
 *   a key goes quiet, instead of keeping its last non-empty window until the view's ttl.
 * - A tile is dropped once no window holding it can change or still has to fire: the last event a
 *   window [s, e) can take is at e − 1, late once e − 1 + allowedLateness ≤ W; so a tile goes when
 *   every window holding it has e ≤ W and e + allowedLateness − 1 ≤ W (and, with
 *   `emitFollowingEmptyWindow`, the window after the last of them has fired too). A key goes with
 *   its last tile.
 * - Emissions of one `advanceWatermark` come in the order (end, key in code-unit order, shape);
 *   those of one event in the order (end, shape). The order is a function of the state, so a run
 *   restored from a snapshot emits exactly what the uninterrupted run does.
 *
 * Checkpoints: `snapshot()` is plain data (for msgpack; see stream-checkpoint.ts) holding the
 * tiles, W and the arrival counter; `createWindowAggregator(spec, snapshot)` rebuilds the timers
 * from the tiles. Take the snapshot together with the source offsets it reflects. A typical driver
 * (one aggregator per Kafka partition lets a partition's state move with it on a rebalance):
 *
 *     const outcome = aggregator.pushEvent(event);          // per record, in arrival order
 *     if (outcome.status !== 'invalid') tracker.observe(partition, event.time, now);
 *     // sink outcome.emissions; send late and invalid events to the dead-letter topic
 *     const fired = aggregator.advanceWatermark(tracker.advance(now));   // per batch
 *     // sink `fired`; then checkpoint { positions, tracker.snapshot(), aggregator.snapshot() }
 *     // and only then commit the offsets
 */
import {
  type AggregateValue,
  type AggregationFunction,
  aggregationFunctions,
  createPartialAggregate,
  decodePartialAggregate,
  type EventValue,
  inputProblem,
  type PartialAggregate,
  type PartialKind,
  partialKindOf,
} from './aggregations.js';
import { FStoreError, invalidArgument } from './errors.js';
import { inputLimits } from './input-limits.js';
import { validateName } from './registry-rules.js';
import {
  alignDown,
  durationProblem,
  floorMod,
  greatestCommonDivisor,
  validateWindowShape,
  type WindowShape,
  windowLimits,
} from './windows.js';

export interface AggregationSpec extends WindowShape {
  /** The feature this aggregation produces in the stream view. */
  readonly name: string;
  readonly function: AggregationFunction;
  /** The input field of the event; only count may leave it out, to count events. */
  readonly field?: string;
}

export interface WindowAggregationSpec {
  readonly aggregations: readonly AggregationSpec[];
  /** How long after W passes a window's end its events are still applied, microseconds. */
  readonly allowedLatenessMicros: number;
  /** Whether the first empty window after a non-empty one is emitted (see the module comment). */
  readonly emitFollowingEmptyWindow: boolean;
}

export const windowAggregationLimits = {
  aggregations: 100,
  fieldLength: inputLimits.eventFieldLength,
} as const;

/** A decoded event: its entity key (encoded by the caller; compared as a string), time and fields. */
export interface StreamEvent {
  readonly key: string;
  /** Event time, microseconds since the epoch. */
  readonly time: number;
  readonly fields: Readonly<Record<string, EventValue>>;
}

export type EventOutcome =
  | { readonly status: 'applied'; readonly emissions: readonly WindowEmission[] }
  /** t + allowedLateness ≤ W: not applied (for the late-events metric and the dead-letter topic). */
  | { readonly status: 'late' }
  /** Not applied: a bad time or field value (for the dead-letter topic). Says what and where. */
  | { readonly status: 'invalid'; readonly problem: string };

/**
 * One window result of one key: write it with event time = end, keyed by (view, key, end). With
 * several shapes, emissions of different shapes can share (key, end); each carries only its own
 * aggregations' features.
 */
export interface WindowEmission {
  readonly key: string;
  /** Index into `WindowAggregator.shapes`. */
  readonly shape: number;
  readonly start: number;
  readonly end: number;
  /** By aggregation name: the aggregations of this shape. */
  readonly results: Readonly<Record<string, AggregateValue>>;
  /**
   * By aggregation name: every aggregation whose shape has a window ending at `end` (all of them
   * when the shapes share a slide), empty windows included — the feature row of (key, end). The
   * emissions of one (key, end) share it.
   */
  readonly row: Readonly<Record<string, AggregateValue>>;
  /** `watermark`: the window fired; `late_event`: an allowed late event changed a fired window. */
  readonly trigger: 'watermark' | 'late_event';
}

/** The aggregations sharing one window shape; one emission carries all their results. */
export interface ShapeAggregations extends WindowShape {
  readonly aggregations: readonly string[];
}

export interface WindowStateSnapshot {
  readonly format: 1;
  /** The spec the state was built for; restoring under another spec is refused. */
  readonly spec: string;
  /** null while W is −∞. */
  readonly watermark: number | null;
  /** Events applied so far (their arrival numbers order `last` ties). */
  readonly arrivals: number;
  /** [key, [tile start, encoded partials per slot][] ascending by start][]. */
  readonly keys: readonly (readonly [
    key: string,
    tiles: readonly (readonly [start: number, partials: readonly unknown[]])[],
  ])[];
}

export interface WindowAggregator {
  readonly shapes: readonly ShapeAggregations[];
  /** Tile length: the greatest common divisor of the slides, microseconds. */
  readonly tileMicros: number;
  /** Event times outside this range are invalid (their windows would leave the safe integers). */
  readonly eventTimeRange: { readonly min: number; readonly max: number };
  readonly watermark: number;
  readonly stateSize: { readonly keys: number; readonly tiles: number };
  pushEvent(event: StreamEvent): EventOutcome;
  /** Raises W (a lower or equal value is ignored: W never goes back), fires windows, drops tiles. */
  advanceWatermark(watermark: number): WindowEmission[];
  snapshot(): WindowStateSnapshot;
}

/**
 * Problems of a stream aggregation's windowing spec, each an `invalid_argument` error naming its
 * field (`<field>.aggregations[2].slide`, `<field>.allowed_lateness`...); empty when valid.
 */
export function validateWindowAggregationSpec(
  spec: WindowAggregationSpec,
  field = 'stream_aggregation',
): FStoreError[] {
  const problems: FStoreError[] = [];
  const { aggregations } = spec;
  if (!Array.isArray(aggregations) || aggregations.length === 0)
    problems.push(invalidArgument(`${field}.aggregations`, 'at least one aggregation is required'));
  else if (aggregations.length > windowAggregationLimits.aggregations)
    problems.push(
      invalidArgument(
        `${field}.aggregations`,
        `at most ${windowAggregationLimits.aggregations} aggregations`,
      ),
    );
  const names = new Set<string>();
  let shapesValid = true;
  for (const [index, aggregation] of (Array.isArray(aggregations) ? aggregations : []).entries()) {
    const path = `${field}.aggregations[${index}]`;
    try {
      validateName(`${path}.name`, aggregation.name);
      if (names.has(aggregation.name))
        problems.push(invalidArgument(`${path}.name`, `duplicate name "${aggregation.name}"`));
      names.add(aggregation.name);
    } catch (error) {
      problems.push(FStoreError.from(error, 'invalid_argument'));
    }
    if (!aggregationFunctions.includes(aggregation.function))
      problems.push(invalidArgument(`${path}.function`, `must be one of ${aggregationFunctions.join(', ')}`));
    const inputField = aggregation.field;
    if (inputField === undefined) {
      if (aggregation.function !== 'count')
        problems.push(invalidArgument(`${path}.field`, `is required for ${aggregation.function}`));
    } else if (
      typeof inputField !== 'string' ||
      inputField.length === 0 ||
      inputField.length > windowAggregationLimits.fieldLength
    )
      problems.push(
        invalidArgument(
          `${path}.field`,
          `must be a field name of 1 to ${windowAggregationLimits.fieldLength} characters`,
        ),
      );
    else if (inputField.includes('\u0000'))
      problems.push(invalidArgument(`${path}.field`, 'contains a NUL character'));
    const shapeProblems = validateWindowShape(aggregation, path);
    if (shapeProblems.length > 0) shapesValid = false;
    problems.push(...shapeProblems);
  }
  const latenessProblem = durationProblem(spec.allowedLatenessMicros, 0);
  if (latenessProblem) problems.push(invalidArgument(`${field}.allowed_lateness`, latenessProblem));
  if (typeof spec.emitFollowingEmptyWindow !== 'boolean')
    problems.push(invalidArgument(`${field}.emit_following_empty_window`, 'must be true or false'));
  if (shapesValid && Array.isArray(aggregations) && aggregations.length > 0) {
    const tile = aggregations.reduce(
      (divisor, { slideMicros }) => greatestCommonDivisor(divisor, slideMicros),
      0,
    );
    for (const [index, { sizeMicros }] of aggregations.entries())
      if (sizeMicros / tile > windowLimits.maxTilesPerWindow)
        problems.push(
          invalidArgument(
            `${field}.aggregations[${index}].window_size`,
            `would merge ${sizeMicros / tile} tiles of ${tile} µs (the greatest common divisor of the slides); at most ${windowLimits.maxTilesPerWindow}`,
          ),
        );
  }
  return problems;
}

/** Throws the first problem `validateWindowAggregationSpec` finds. */
export function assertWindowAggregationSpec(spec: WindowAggregationSpec, field = 'stream_aggregation'): void {
  const [problem] = validateWindowAggregationSpec(spec, field);
  if (problem) throw problem;
}

/** The spec's identity in snapshots. */
function specFingerprint(spec: WindowAggregationSpec): string {
  return JSON.stringify([
    spec.allowedLatenessMicros,
    spec.emitFollowingEmptyWindow,
    spec.aggregations.map((a) => [a.name, a.function, a.field ?? null, a.sizeMicros, a.slideMicros]),
  ]);
}

/** Times with keys, popped in ascending time order (fire and drop timers). */
class TimerQueue {
  private readonly keysByTime = new Map<number, Set<string>>();
  /** A binary min-heap of the distinct times of keysByTime. */
  private readonly heap: number[] = [];

  add(time: number, key: string): void {
    const keys = this.keysByTime.get(time);
    if (keys) {
      keys.add(key);
      return;
    }
    this.keysByTime.set(time, new Set([key]));
    const heap = this.heap;
    let child = heap.push(time) - 1;
    while (child > 0) {
      const parent = (child - 1) >> 1;
      if (heap[parent]! <= time) break;
      heap[child] = heap[parent]!;
      child = parent;
    }
    heap[child] = time;
  }

  /** Removes and returns the earliest time ≤ limit with its keys. */
  popDue(limit: number): [number, Set<string>] | undefined {
    const heap = this.heap;
    const time = heap[0];
    if (time === undefined || time > limit) return undefined;
    const last = heap.pop()!;
    if (heap.length > 0) {
      let parent = 0;
      for (;;) {
        let child = 2 * parent + 1;
        if (child >= heap.length) break;
        if (child + 1 < heap.length && heap[child + 1]! < heap[child]!) child++;
        if (heap[child]! >= last) break;
        heap[parent] = heap[child]!;
        parent = child;
      }
      heap[parent] = last;
    }
    const keys = this.keysByTime.get(time)!;
    this.keysByTime.delete(time);
    return [time, keys];
  }
}

interface KeyState {
  /** Tile starts, ascending. */
  readonly starts: number[];
  /** One partial per slot for each tile, in the order of `starts` (arrays, not a map: a window reads a run of them). */
  readonly partials: PartialAggregate[][];
  /** The key's fire timer: the end of its next window to emit (Infinity: none). */
  nextFire: number;
  /** The key's drop timer: when W reaches it, its first tile can go. */
  nextDrop: number;
}

const createKeyState = (): KeyState => ({
  starts: [],
  partials: [],
  nextFire: Number.POSITIVE_INFINITY,
  nextDrop: Number.POSITIVE_INFINITY,
});

interface Slot {
  readonly kind: PartialKind;
  /** undefined: count of events. */
  readonly field: string | undefined;
}

interface ShapePlan extends WindowShape {
  readonly aggregations: string[];
  /** The slots this shape's aggregations read. */
  readonly slots: number[];
  readonly outputs: { readonly name: string; readonly fn: AggregationFunction; readonly slot: number }[];
  /** How long past a window's end its tiles stay: allowed lateness − 1, or a slide for the following window. */
  readonly retentionMicros: number;
}

/** First index of `sorted` whose value is ≥ value. */
function lowerBound(sorted: readonly number[], value: number): number {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (sorted[middle]! < value) low = middle + 1;
    else high = middle;
  }
  return low;
}

const noEmissions: readonly WindowEmission[] = Object.freeze([]);
const lateOutcome: EventOutcome = Object.freeze({ status: 'late' });

function dataLoss(problem: string): FStoreError {
  return new FStoreError('data_loss', `window state snapshot: ${problem}`);
}

/**
 * An aggregator for a spec that passes `validateWindowAggregationSpec` (else it throws the first
 * problem), empty or restored from a snapshot taken under the same spec (else `failed_precondition`;
 * a malformed snapshot throws `data_loss`).
 */
export function createWindowAggregator(
  spec: WindowAggregationSpec,
  snapshot?: WindowStateSnapshot,
): WindowAggregator {
  assertWindowAggregationSpec(spec);
  const lateness = spec.allowedLatenessMicros;
  const emitFollowing = spec.emitFollowingEmptyWindow;

  const slots: Slot[] = [];
  const slotIndex = new Map<string, number>();
  const slotOf = (kind: PartialKind, field: string | undefined): number => {
    const id = JSON.stringify([kind, field ?? null]);
    let index = slotIndex.get(id);
    if (index === undefined) {
      index = slots.push({ kind, field }) - 1;
      slotIndex.set(id, index);
    }
    return index;
  };
  const plans: ShapePlan[] = [];
  for (const aggregation of spec.aggregations) {
    const slot = slotOf(partialKindOf[aggregation.function], aggregation.field);
    let plan = plans.find(
      (p) => p.sizeMicros === aggregation.sizeMicros && p.slideMicros === aggregation.slideMicros,
    );
    if (!plan) {
      plan = {
        sizeMicros: aggregation.sizeMicros,
        slideMicros: aggregation.slideMicros,
        aggregations: [],
        slots: [],
        outputs: [],
        retentionMicros: Math.max(0, lateness - 1, emitFollowing ? aggregation.slideMicros : 0),
      };
      plans.push(plan);
    }
    plan.aggregations.push(aggregation.name);
    plan.outputs.push({ name: aggregation.name, fn: aggregation.function, slot });
    if (!plan.slots.includes(slot)) plan.slots.push(slot);
  }
  const tileMicros = plans.reduce((divisor, plan) => greatestCommonDivisor(divisor, plan.slideMicros), 0);
  // The furthest an event's windows, following window and drop time reach from its time.
  const reach =
    2 * Math.max(...plans.map((plan) => plan.sizeMicros + plan.slideMicros)) + lateness + tileMicros;
  const eventTimeRange = { min: Number.MIN_SAFE_INTEGER + reach, max: Number.MAX_SAFE_INTEGER - reach };

  const keys = new Map<string, KeyState>();
  const fireTimers = new TimerQueue();
  const dropTimers = new TimerQueue();
  let watermark = Number.NEGATIVE_INFINITY;
  let arrivals = 0;
  let tileCount = 0;
  const values: (Exclude<EventValue, null | undefined> | undefined)[] = new Array(slots.length);

  /** When W reaches this, the tile starting at `start` is no longer needed. */
  function dropTime(start: number): number {
    let time = Number.NEGATIVE_INFINITY;
    for (const plan of plans)
      time = Math.max(time, alignDown(start, plan.slideMicros) + plan.sizeMicros + plan.retentionMicros);
    return time;
  }

  /**
   * The first window end after `after` at which a window of the key is emitted: per shape, take the
   * first tile that a window ending after `after` holds (or follows), then the first window end
   * past both.
   */
  function nextFireAfter(state: KeyState, after: number): number {
    const starts = state.starts;
    let next = Number.POSITIVE_INFINITY;
    for (const plan of plans) {
      // The last window end involving tile a, alignDown(a, slide) + reach, grows with a.
      const reach = plan.sizeMicros + (emitFollowing ? plan.slideMicros : 0);
      let low = 0;
      let high = starts.length;
      while (low < high) {
        const middle = (low + high) >>> 1;
        if (alignDown(starts[middle]!, plan.slideMicros) + reach > after) high = middle;
        else low = middle + 1;
      }
      const tile = starts[low];
      if (tile === undefined) continue;
      const from = Math.max(after, tile);
      next = Math.min(
        next,
        alignDown(from - plan.sizeMicros, plan.slideMicros) + plan.sizeMicros + plan.slideMicros,
      );
    }
    return next;
  }

  /**
   * Brings a key's timers forward after tiles were added: one fire timer and one drop timer per key,
   * so an event costs a few binary searches however many windows hold it.
   */
  function scheduleKey(key: string, state: KeyState): void {
    const nextFire = nextFireAfter(state, watermark);
    if (nextFire < state.nextFire) {
      state.nextFire = nextFire;
      fireTimers.add(nextFire, key);
    }
    const nextDrop = dropTime(state.starts[0]!);
    if (nextDrop < state.nextDrop) {
      state.nextDrop = nextDrop;
      dropTimers.add(nextDrop, key);
    }
  }

  function hasTileIn(state: KeyState, start: number, end: number): boolean {
    const first = state.starts[lowerBound(state.starts, start)];
    return first !== undefined && first < end;
  }

  /** Whether the window [start, end) of a shape is emitted: it holds a tile, or follows one that does. */
  function isEmitted(state: KeyState, plan: ShapePlan, start: number, end: number): boolean {
    return (
      hasTileIn(state, start, end) || (emitFollowing && hasTileIn(state, start - plan.slideMicros, start))
    );
  }

  /**
   * Every aggregation whose shape has a window ending at `end`, empty windows included (count 0,
   * others null): what a feature row of the key at event time `end` holds.
   */
  function rowAt(state: KeyState, end: number): Record<string, AggregateValue> {
    const starts = state.starts;
    const row: Record<string, AggregateValue> = {};
    for (const plan of plans) {
      const start = end - plan.sizeMicros;
      if (floorMod(start, plan.slideMicros) !== 0) continue;
      const merged: PartialAggregate[] = [];
      for (const slot of plan.slots) merged[slot] = createPartialAggregate(slots[slot]!.kind);
      for (
        let position = lowerBound(starts, start);
        position < starts.length && starts[position]! < end;
        position++
      ) {
        const partials = state.partials[position]!;
        for (const slot of plan.slots) merged[slot]!.merge(partials[slot]!);
      }
      for (const output of plan.outputs) row[output.name] = merged[output.slot]!.result(output.fn);
    }
    return row;
  }

  /**
   * Appends the emissions of a key's windows ending at `end` (of the shapes `only` lets through),
   * in shape order; they share one row.
   */
  function emitAt(
    out: WindowEmission[],
    key: string,
    state: KeyState,
    end: number,
    trigger: WindowEmission['trigger'],
    only?: ReadonlySet<number>,
  ): void {
    let row: Record<string, AggregateValue> | undefined;
    for (const [shape, plan] of plans.entries()) {
      if (only && !only.has(shape)) continue;
      const start = end - plan.sizeMicros;
      if (floorMod(start, plan.slideMicros) !== 0 || !isEmitted(state, plan, start, end)) continue;
      row ??= rowAt(state, end);
      const results: Record<string, AggregateValue> = {};
      for (const name of plan.aggregations) results[name] = row[name]!;
      out.push({ key, shape, start, end, results, row, trigger });
    }
  }

  /** The fired windows (end ≤ W) an applied event at `time` changed, in (end, shape) order. */
  function reemit(key: string, state: KeyState, time: number): readonly WindowEmission[] {
    let shapesByEnd: Map<number, Set<number>> | undefined;
    for (const [shape, plan] of plans.entries()) {
      const lastStart = alignDown(time, plan.slideMicros);
      const lastEnd = lastStart + plan.sizeMicros + (emitFollowing ? plan.slideMicros : 0);
      for (
        let end = lastStart + plan.slideMicros;
        end <= lastEnd && end <= watermark;
        end += plan.slideMicros
      ) {
        shapesByEnd ??= new Map();
        const shapes = shapesByEnd.get(end);
        if (shapes) shapes.add(shape);
        else shapesByEnd.set(end, new Set([shape]));
      }
    }
    if (!shapesByEnd) return noEmissions;
    const emissions: WindowEmission[] = [];
    for (const end of [...shapesByEnd.keys()].sort((a, b) => a - b))
      emitAt(emissions, key, state, end, 'late_event', shapesByEnd.get(end));
    return emissions.length === 0 ? noEmissions : emissions;
  }

  function insertTile(state: KeyState, index: number, start: number, partials: PartialAggregate[]): void {
    state.starts.splice(index, 0, start);
    state.partials.splice(index, 0, partials);
    tileCount++;
  }

  function invalid(problem: string): EventOutcome {
    return { status: 'invalid', problem };
  }

  if (snapshot) {
    if (snapshot.format !== 1) throw dataLoss(`unknown format ${String(snapshot.format)}`);
    if (snapshot.spec !== specFingerprint(spec))
      throw new FStoreError(
        'failed_precondition',
        `window state was checkpointed under another spec (${snapshot.spec}) than ${specFingerprint(spec)}`,
      );
    if (
      snapshot.watermark !== null &&
      (typeof snapshot.watermark !== 'number' || Number.isNaN(snapshot.watermark))
    )
      throw dataLoss('watermark is not a number');
    watermark = snapshot.watermark ?? Number.NEGATIVE_INFINITY;
    if (!Number.isSafeInteger(snapshot.arrivals) || snapshot.arrivals < 0)
      throw dataLoss(`arrivals ${String(snapshot.arrivals)} is not a count`);
    arrivals = snapshot.arrivals;
    if (!Array.isArray(snapshot.keys)) throw dataLoss('keys is not a list');
    for (const [key, tiles] of snapshot.keys) {
      if (typeof key !== 'string' || keys.has(key) || !Array.isArray(tiles) || tiles.length === 0)
        throw dataLoss(`bad or repeated key ${JSON.stringify(key)}`);
      const state = createKeyState();
      keys.set(key, state);
      for (const [start, partials] of tiles) {
        if (
          !Number.isSafeInteger(start) ||
          floorMod(start, tileMicros) !== 0 ||
          !(state.starts.length === 0 || start > state.starts.at(-1)!) ||
          !Array.isArray(partials) ||
          partials.length !== slots.length
        )
          throw dataLoss(`bad or unsorted tile ${String(start)} of key ${JSON.stringify(key)}`);
        insertTile(
          state,
          state.starts.length,
          start,
          partials.map((data, slot) => decodePartialAggregate(slots[slot]!.kind, data)),
        );
      }
      scheduleKey(key, state);
    }
  }

  return {
    shapes: plans.map(({ sizeMicros, slideMicros, aggregations }) => ({
      sizeMicros,
      slideMicros,
      aggregations: [...aggregations],
    })),
    tileMicros,
    eventTimeRange,
    get watermark() {
      return watermark;
    },
    get stateSize() {
      return { keys: keys.size, tiles: tileCount };
    },

    pushEvent(event) {
      const { key, time, fields } = event;
      if (typeof key !== 'string') return invalid('key: must be a string');
      if (!Number.isSafeInteger(time) || time < eventTimeRange.min || time > eventTimeRange.max)
        return invalid(
          `time: ${String(time)} is not whole microseconds from ${eventTimeRange.min} to ${eventTimeRange.max}`,
        );
      // Every value is checked before anything changes: an event applies whole or not at all. A bad
      // event is reported as invalid even when it is also late: that is the producer's bug to fix.
      for (let slot = 0; slot < slots.length; slot++) {
        const { kind, field } = slots[slot]!;
        if (field === undefined) {
          values[slot] = true;
          continue;
        }
        const value = Object.hasOwn(fields, field) ? fields[field] : undefined;
        if (value === null || value === undefined) {
          values[slot] = undefined;
          continue;
        }
        const problem = inputProblem(kind, value);
        if (problem) return invalid(`field ${field}: ${problem}`);
        values[slot] = value;
      }
      if (time + lateness <= watermark) return lateOutcome;
      const start = alignDown(time, tileMicros);
      let state = keys.get(key);
      if (!state) {
        state = createKeyState();
        keys.set(key, state);
      }
      const index = lowerBound(state.starts, start);
      let partials = state.starts[index] === start ? state.partials[index] : undefined;
      if (!partials) {
        partials = slots.map((slot) => createPartialAggregate(slot.kind));
        insertTile(state, index, start, partials);
        scheduleKey(key, state);
      }
      const arrival = arrivals++;
      for (let slot = 0; slot < slots.length; slot++) {
        const value = values[slot];
        if (value !== undefined) partials[slot]!.add(value, time, arrival);
      }
      return { status: 'applied', emissions: reemit(key, state, time) };
    },

    advanceWatermark(next) {
      if (Number.isNaN(next)) throw new FStoreError('internal', 'window aggregator: watermark is NaN');
      if (!(next > watermark)) return [];
      watermark = next;
      const emissions: WindowEmission[] = [];
      for (let due = fireTimers.popDue(watermark); due; due = fireTimers.popDue(watermark)) {
        const [end, dueKeys] = due;
        for (const key of [...dueKeys].sort()) {
          const state = keys.get(key);
          // A timer the key has since brought forward, or of a key since dropped.
          if (state?.nextFire !== end) continue;
          emitAt(emissions, key, state, end, 'watermark');
          // Later than `end`: popped further on in this loop if it is ≤ W.
          state.nextFire = nextFireAfter(state, end);
          if (state.nextFire !== Number.POSITIVE_INFINITY) fireTimers.add(state.nextFire, key);
        }
      }
      for (let due = dropTimers.popDue(watermark); due; due = dropTimers.popDue(watermark)) {
        const [time, dueKeys] = due;
        for (const key of dueKeys) {
          const state = keys.get(key);
          if (state?.nextDrop !== time) continue;
          let dropped = 0;
          while (dropped < state.starts.length && dropTime(state.starts[dropped]!) <= watermark) dropped++;
          state.starts.splice(0, dropped);
          state.partials.splice(0, dropped);
          tileCount -= dropped;
          if (state.starts.length === 0) {
            keys.delete(key);
            continue;
          }
          state.nextDrop = dropTime(state.starts[0]!);
          dropTimers.add(state.nextDrop, key);
        }
      }
      return emissions;
    },

    snapshot() {
      return {
        format: 1,
        spec: specFingerprint(spec),
        watermark: watermark === Number.NEGATIVE_INFINITY ? null : watermark,
        arrivals,
        keys: [...keys].map(
          ([key, state]) =>
            [
              key,
              state.starts.map(
                (start, index) => [start, state.partials[index]!.map((partial) => partial.encode())] as const,
              ),
            ] as const,
        ),
      };
    },
  };
}
