/**
 * Event-time window arithmetic (DESIGN §4, the Flink definitions). A window of a shape
 * (size, slide) is the half-open interval [s, s + size) with s a multiple of slide; an event at t
 * belongs to every window with s ≤ t < s + size, that is size / slide windows. Multiples are taken
 * with a true (floored) modulo, so times before the epoch fall into the same grid as later ones:
 * with slide 10, t = -1 lies in the window starting at -10, not 0.
 *
 * Times and durations are integer microseconds held in numbers. Every value here stays a safe
 * integer because durations are capped (`windowLimits`) and the aggregator refuses event times
 * whose windows would leave the safe range.
 */
import { type FStoreError, invalidArgument } from './errors.js';

export interface WindowShape {
  /** Window length, microseconds. */
  readonly sizeMicros: number;
  /** Distance between two window starts, microseconds; divides sizeMicros (size = slide: tumbling). */
  readonly slideMicros: number;
}

const microsPerDay = 86_400_000_000;

export const windowLimits = {
  /**
   * Longest window size, slide, allowed lateness or watermark bound: ten years. With it, the last
   * window end an event can reach stays a safe integer for any event time from 1700 to 2200.
   */
  maxDurationMicros: 10 * 366 * microsPerDay,
  /** Most tiles one window result may merge (size / tile); a window costs that many merges. */
  maxTilesPerWindow: 100_000,
} as const;

/** The floored modulo: the result has the sign of the divisor (Math's `mod`, not JavaScript's `%`). */
export function floorMod(value: number, divisor: number): number {
  const remainder = value % divisor;
  // `+ 0` turns the -0 of e.g. -10 % 5 into 0.
  return remainder < 0 ? remainder + divisor : remainder + 0;
}

/** The greatest multiple of `step` that is ≤ time: the start of the step-aligned interval holding time. */
export function alignDown(time: number, step: number): number {
  return time - floorMod(time, step);
}

/** Starts of the windows of `shape` that hold `time`, ascending (size / slide of them). */
export function windowStartsContaining(time: number, shape: WindowShape): number[] {
  const last = alignDown(time, shape.slideMicros);
  const starts: number[] = [];
  for (let start = last - shape.sizeMicros + shape.slideMicros; start <= last; start += shape.slideMicros)
    starts.push(start);
  return starts;
}

export function greatestCommonDivisor(a: number, b: number): number {
  let x = Math.abs(a);
  let y = Math.abs(b);
  while (y !== 0) [x, y] = [y, x % y];
  return x;
}

/** A duration: whole microseconds from `min` to `windowLimits.maxDurationMicros`. */
export function durationProblem(value: number, min: 0 | 1): string | undefined {
  if (!Number.isSafeInteger(value) || value < min || value > windowLimits.maxDurationMicros)
    return `must be whole microseconds from ${min} to ${windowLimits.maxDurationMicros} (ten years), got ${String(value)}`;
  return undefined;
}

/**
 * Problems of a window shape, each an `invalid_argument` error naming its field
 * (`<field>.window_size`, `<field>.slide`); empty when the shape is valid.
 */
export function validateWindowShape(shape: WindowShape, field: string): FStoreError[] {
  const problems: FStoreError[] = [];
  const sizeProblem = durationProblem(shape.sizeMicros, 1);
  const slideProblem = durationProblem(shape.slideMicros, 1);
  if (sizeProblem) problems.push(invalidArgument(`${field}.window_size`, sizeProblem));
  if (slideProblem) problems.push(invalidArgument(`${field}.slide`, slideProblem));
  if (sizeProblem || slideProblem) return problems;
  if (shape.sizeMicros % shape.slideMicros !== 0)
    problems.push(
      invalidArgument(
        `${field}.slide`,
        `${shape.slideMicros} µs does not divide the window size ${shape.sizeMicros} µs (a window must be whole slides)`,
      ),
    );
  return problems;
}
