import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  alignDown,
  floorMod,
  greatestCommonDivisor,
  validateWindowShape,
  windowLimits,
  windowStartsContaining,
} from '../../src/domain/windows.js';

/** Floored division in BigInt (BigInt's `/` truncates towards zero). */
function floorDivide(value: bigint, divisor: bigint): bigint {
  const quotient = value / divisor;
  return value % divisor !== 0n && value < 0n !== divisor < 0n ? quotient - 1n : quotient;
}

/** Brute force from the definition: every multiple s of slide with s ≤ t < s + size, in BigInt. */
function startsByDefinition(time: number, size: number, slide: number): number[] {
  const t = BigInt(time);
  const [sizeBig, slideBig] = [BigInt(size), BigInt(slide)];
  const starts: number[] = [];
  // Every candidate multiple from one size before t to t.
  for (let k = floorDivide(t - sizeBig, slideBig) - 1n; k <= floorDivide(t, slideBig) + 1n; k++) {
    const start = k * slideBig;
    if (start <= t && t < start + sizeBig) starts.push(Number(start));
  }
  return starts;
}

const safeTime = fc.oneof(
  fc.integer({ min: -1000, max: 1000 }),
  fc.integer({ min: -(2 ** 52), max: 2 ** 52 }),
  fc.constantFrom(-2_208_988_800_000_000, 1_700_000_000_000_000, -1, 0),
);

describe('window arithmetic', () => {
  it('takes a floored modulo, so times before the epoch share the grid (never -0)', () => {
    fc.assert(
      fc.property(safeTime, fc.integer({ min: 1, max: 10 ** 9 }), (time, divisor) => {
        const expected = Number(BigInt(time) - floorDivide(BigInt(time), BigInt(divisor)) * BigInt(divisor));
        expect(Object.is(floorMod(time, divisor), expected)).toBe(true);
        expect(alignDown(time, divisor)).toBe(time - expected);
      }),
      { numRuns: 2_000 },
    );
    expect(floorMod(-1, 10)).toBe(9);
    expect(Object.is(floorMod(-10, 5), 0)).toBe(true);
    expect(alignDown(-1, 10)).toBe(-10);
  });

  it('puts an event in every window [s, s + size) with s a multiple of slide and s ≤ t < s + size', () => {
    const shape = fc
      .record({ slide: fc.integer({ min: 1, max: 1_000 }), windows: fc.integer({ min: 1, max: 12 }) })
      .map(({ slide, windows }) => ({ sizeMicros: slide * windows, slideMicros: slide }));
    fc.assert(
      fc.property(safeTime, shape, (time, { sizeMicros, slideMicros }) => {
        const starts = windowStartsContaining(time, { sizeMicros, slideMicros });
        expect(starts).toEqual(startsByDefinition(time, sizeMicros, slideMicros));
        expect(starts).toHaveLength(sizeMicros / slideMicros);
      }),
      { numRuns: 2_000 },
    );
  });

  it('starts the next window exactly at a window end, and puts t = -1 before the epoch', () => {
    const shape = { sizeMicros: 30, slideMicros: 10 };
    expect(windowStartsContaining(29, shape)).toEqual([0, 10, 20]);
    expect(windowStartsContaining(30, shape)).toEqual([10, 20, 30]); // [0, 30) is half-open
    expect(windowStartsContaining(-1, shape)).toEqual([-30, -20, -10]);
    expect(windowStartsContaining(-10, shape)).toEqual([-30, -20, -10]);
    expect(windowStartsContaining(-11, { sizeMicros: 10, slideMicros: 10 })).toEqual([-20]);
  });

  it('finds the greatest common divisor of slides', () => {
    expect(greatestCommonDivisor(0, 60)).toBe(60);
    expect(greatestCommonDivisor(60_000_000, 45_000_000)).toBe(15_000_000);
    expect(greatestCommonDivisor(7, 5)).toBe(1);
  });

  it('validates a shape, naming the field', () => {
    const messages = (sizeMicros: number, slideMicros: number) =>
      validateWindowShape({ sizeMicros, slideMicros }, 'agg').map((error) => [error.code, error.message]);
    expect(messages(3_600_000_000, 60_000_000)).toEqual([]);
    expect(messages(30, 30)).toEqual([]);
    expect(messages(30, 20)).toEqual([
      [
        'invalid_argument',
        'agg.slide: 20 µs does not divide the window size 30 µs (a window must be whole slides)',
      ],
    ]);
    expect(messages(10, 20)[0]?.[1]).toMatch(/^agg\.slide: 20 µs does not divide/);
    expect(messages(0, 0).map(([, message]) => message)).toEqual([
      `agg.window_size: must be whole microseconds from 1 to ${windowLimits.maxDurationMicros} (ten years), got 0`,
      `agg.slide: must be whole microseconds from 1 to ${windowLimits.maxDurationMicros} (ten years), got 0`,
    ]);
    expect(messages(1.5, 1)[0]?.[1]).toMatch(/^agg\.window_size: .* got 1\.5$/);
    expect(messages(windowLimits.maxDurationMicros + 1, 1)[0]?.[1]).toMatch(/^agg\.window_size: /);
    expect(messages(Number.NaN, 1)[0]?.[1]).toMatch(/got NaN$/);
  });
});
