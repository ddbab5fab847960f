import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import {
  type AggregateValue,
  type AggregationFunction,
  aggregationFunctions,
  createPartialAggregate,
  decodePartialAggregate,
  type EventValue,
  inputProblem,
  type PartialAggregate,
  partialKindOf,
} from '../../src/domain/aggregations.js';
import {
  type DistinctValue,
  distinctValueText,
  HyperLogLog,
  hyperLogLogRegisters,
  hyperLogLogStandardError,
  murmurHash3,
} from '../../src/domain/hyperloglog.js';
import { bruteForce as sharedBruteForce } from '../support/window-oracle.js';

type Value = Exclude<EventValue, null | undefined>;
interface Input {
  readonly value: Value;
  readonly time: number;
}

const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'bigint' });
const throughMsgpack = (data: unknown): unknown => packr.unpack(packr.pack(data));
/** Registers as text: one string comparison instead of 4,096 deep-equality steps. */
const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

/** Brute force over all inputs at once: the shared oracle, inputs in arrival order. */
function bruteForce(fn: AggregationFunction, inputs: readonly Input[]): AggregateValue {
  return sharedBruteForce(
    fn,
    'x',
    inputs.map(({ value, time }, arrival) => ({ key: 'k', time, fields: { x: value }, arrival })),
  );
}

/** Exact where the function is exact; relative to the inputs' magnitude where rounding differs. */
function expectClose(
  fn: AggregationFunction,
  actual: AggregateValue,
  expected: AggregateValue,
  scale: number,
) {
  if (typeof expected === 'number' && ['sum', 'mean', 'stddev_pop', 'stddev_samp'].includes(fn)) {
    expect(typeof actual).toBe('number');
    expect(Math.abs((actual as number) - expected)).toBeLessThanOrEqual(1e-9 * (1 + scale));
  } else expect(actual).toEqual(expected);
}

/** Inputs fed to partials by chunk, merged in a random order (through msgpack, as a checkpoint would). */
function mergedByChunks(
  fn: AggregationFunction,
  inputs: readonly Input[],
  cuts: readonly number[],
  order: number,
) {
  const kind = partialKindOf[fn];
  const points = [0, ...cuts.map((cut) => cut % (inputs.length + 1)).sort((a, b) => a - b), inputs.length];
  const partials: PartialAggregate[] = points.slice(1).map((end, chunk) => {
    const partial = createPartialAggregate(kind);
    for (let i = points[chunk]!; i < end; i++) partial.add(inputs[i]!.value, inputs[i]!.time, i);
    return decodePartialAggregate(kind, throughMsgpack(partial.encode()));
  });
  // Rotate by `order` and merge into a fresh partial: merge order must not matter beyond rounding.
  const merged = createPartialAggregate(kind);
  for (let i = 0; i < partials.length; i++) merged.merge(partials[(i + order) % partials.length]!);
  return merged;
}

const numberValue = fc.oneof(
  fc.integer({ min: -1_000, max: 1_000 }),
  fc.double({ min: -1e6, max: 1e6, noNaN: true }),
  fc.constantFrom(0, -0, 0.1, 1e-9),
  fc.bigInt({ min: -1_000n, max: 1_000n }),
);
const anyValue = fc.oneof(numberValue, fc.constantFrom('a', 'b', 'é', ''), fc.boolean());

describe('partial aggregates against brute force', () => {
  const inputsFor = (fn: AggregationFunction) =>
    fc.array(
      fc.record({
        value: ['last', 'distinct_count', 'count'].includes(fn) ? anyValue : numberValue,
        time: fc.integer({ min: -3, max: 3 }),
      }),
      { maxLength: 40 },
    );

  for (const fn of aggregationFunctions)
    it(`${fn}: merging partials of any chunking, in any order, gives the batch result`, () => {
      fc.assert(
        fc.property(inputsFor(fn), fc.array(fc.nat(), { maxLength: 5 }), fc.nat(), (inputs, cuts, order) => {
          const scale = Math.max(0, ...inputs.map(({ value }) => Math.abs(Number(value))));
          expectClose(fn, mergedByChunks(fn, inputs, cuts, order).result(fn), bruteForce(fn, inputs), scale);
        }),
        { numRuns: 300 },
      );
    });

  it('gives count and distinct_count 0 and the rest null over no values', () => {
    for (const fn of aggregationFunctions)
      expect(createPartialAggregate(partialKindOf[fn]).result(fn)).toBe(
        fn === 'count' || fn === 'distinct_count' ? 0 : null,
      );
    const one = createPartialAggregate('moments');
    one.add(5, 0, 0);
    expect([one.result('stddev_pop'), one.result('stddev_samp')]).toEqual([0, null]);
  });

  it('keeps a standard deviation accurate around a large mean (no sum of squares)', () => {
    // Sum-of-squares formulas lose every digit here: x² ≈ 1e18 ≫ 2^53.
    const values = [1e9 + 4, 1e9 + 7, 1e9 + 13, 1e9 + 16];
    const left = createPartialAggregate('moments');
    const right = createPartialAggregate('moments');
    for (const [i, x] of values.entries()) (i < 2 ? left : right).add(x, 0, i);
    left.merge(right);
    expect(left.result('stddev_pop')).toBeCloseTo(Math.sqrt(22.5), 9);
    expect(left.result('stddev_samp')).toBeCloseTo(Math.sqrt(30), 9);
  });

  it('keeps the small terms of a sum (Neumaier compensation)', () => {
    const sum = createPartialAggregate('sum');
    for (const x of [1e16, 1, -1e16, 1]) sum.add(x, 0, 0);
    expect(sum.result('sum')).toBe(2); // plain addition gives 0
    expect(sum.result('mean')).toBe(0.5);
  });

  it('takes the last value by event time, then by arrival', () => {
    const last = createPartialAggregate('last');
    last.add('first', 10, 0);
    last.add('older', 9, 1);
    last.add('tie, later arrival', 10, 2);
    expect(last.result('last')).toBe('tie, later arrival');
    const earlier = createPartialAggregate('last');
    earlier.add('tie, earlier arrival', 10, 1);
    earlier.merge(last);
    last.merge(earlier);
    expect([earlier.result('last'), last.result('last')]).toEqual([
      'tie, later arrival',
      'tie, later arrival',
    ]);
    const big = createPartialAggregate('last');
    big.add(2n ** 62n, 0, 0);
    expect(decodePartialAggregate('last', throughMsgpack(big.encode())).result('last')).toBe(2n ** 62n);
  });

  it('accepts numbers for every function and strings or booleans only where they make sense', () => {
    expect(inputProblem('sum', 'x')).toBe('a number is required, got a string');
    expect(inputProblem('min', true)).toBe('a number is required, got a boolean');
    expect(inputProblem('moments', Number.NaN)).toBe('NaN is not a finite number');
    expect(inputProblem('last', Number.POSITIVE_INFINITY)).toBe('Infinity is not a finite number');
    expect(inputProblem('distinct', {})).toBe('unsupported value of type object');
    for (const kind of ['count', 'last', 'distinct'] as const)
      expect(inputProblem(kind, 'x')).toBeUndefined();
    expect(inputProblem('sum', 3n)).toBeUndefined();
  });

  it('refuses malformed partial data as data loss', () => {
    expect(() => decodePartialAggregate('count', -1)).toThrow(/bad count partial/);
    expect(() => decodePartialAggregate('sum', [1, 2])).toThrow(/bad sum partial/);
    expect(() => decodePartialAggregate('last', [0, 0, null])).toThrow(/bad last partial/);
    expect(() => decodePartialAggregate('distinct', new Uint8Array(3))).toThrow(/register bytes/);
    expect(() => decodePartialAggregate('distinct', [3, 2])).toThrow(/sparse entry/);
    try {
      decodePartialAggregate('min', 'x');
    } catch (error) {
      expect((error as { code: string }).code).toBe('data_loss');
    }
  });
});

describe('HyperLogLog', () => {
  it('hashes with MurmurHash3 x86 32 (reference vectors) over the canonical UTF-8 text', () => {
    const utf8 = (text: string) => new TextEncoder().encode(text);
    expect(murmurHash3(utf8(''))).toBe(0);
    expect(murmurHash3(utf8(''), undefined, 1)).toBe(0x514e28b7);
    expect(murmurHash3(utf8('test'))).toBe(0xba6bd213);
    expect(murmurHash3(utf8('Hello, world!'))).toBe(0xc0363e43);
    expect(murmurHash3(utf8('The quick brown fox jumps over the lazy dog'))).toBe(0x2e4ff723);
    expect([1, 1.0, 1n, -0, 2 ** 60, 0.5, '1', true].map((value) => distinctValueText(value))).toEqual([
      'n:1',
      'n:1',
      'n:1',
      'n:0',
      'n:1152921504606846976',
      'n:0.5',
      's:1',
      'b:true',
    ]);
    // Pinned: a change of hashing would silently change every stored sketch.
    const sketch = new HyperLogLog();
    for (const value of ['a', 'b', 'c', 1, 2n, true]) sketch.add(value);
    // Entries are register << 5 | rank.
    expect(sketch.encode()).toEqual([38369, 51266, 62306, 68546, 74244, 79233]);
  });

  it('estimates within its documented error on random sets (5σ·n + 2 each, RMS within 1.25σ)', () => {
    let squaredErrors = 0;
    let runs = 0;
    fc.assert(
      fc.property(
        fc.oneof(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 300, max: 50_000 })),
        fc.string({ maxLength: 6 }),
        (n, salt) => {
          const sketch = new HyperLogLog();
          // Each value twice, as numbers and strings: duplicates must not count.
          for (let i = 0; i < n; i++) {
            sketch.add(`${salt}/${i}`);
            sketch.add(`${salt}/${i}`);
          }
          const estimate = sketch.estimate();
          expect(Math.abs(estimate - n)).toBeLessThanOrEqual(5 * hyperLogLogStandardError * n + 2);
          if (n >= 300) {
            squaredErrors += ((estimate - n) / n) ** 2;
            runs++;
          }
        },
      ),
      { numRuns: 120, seed: 4_096 },
    );
    expect(runs).toBeGreaterThan(30);
    expect(Math.sqrt(squaredErrors / runs)).toBeLessThanOrEqual(1.25 * hyperLogLogStandardError);
  });

  it('merges into exactly the sketch of the union, sparse or dense, in any order', () => {
    const set = fc.array(fc.oneof(fc.string({ maxLength: 4 }), fc.integer(), fc.boolean()), {
      maxLength: 700,
    });
    fc.assert(
      fc.property(set, set, (a, b) => {
        const sketchOf = (values: readonly DistinctValue[]) => {
          const sketch = new HyperLogLog();
          for (const value of values) sketch.add(value);
          return sketch;
        };
        const union = sketchOf([...a, ...b]);
        const ab = sketchOf(a);
        ab.merge(sketchOf(b));
        const ba = sketchOf(b);
        ba.merge(sketchOf(a));
        ba.merge(sketchOf(a)); // idempotent
        expect(hex(ab.registers())).toBe(hex(union.registers()));
        expect(hex(ba.registers())).toBe(hex(union.registers()));
        expect([ab.estimate(), ba.estimate()]).toEqual([union.estimate(), union.estimate()]);
        const restored = HyperLogLog.decode(throughMsgpack(union.encode()));
        expect(hex(restored.registers())).toBe(hex(union.registers()));
        expect(restored.isSparse).toBe(union.isSparse);
      }),
      { numRuns: 150 },
    );
  });

  it('turns dense past 256 registers without changing the registers or the estimate', () => {
    const sketch = new HyperLogLog();
    let n = 0;
    while (sketch.encode().length < 256) sketch.add(n++);
    const sparse = HyperLogLog.decode(sketch.encode());
    sketch.add(n++);
    sparse.add(n - 1);
    expect([sketch.isSparse, sparse.isSparse]).toEqual([false, false]);
    expect(sketch.encode()).toHaveLength(hyperLogLogRegisters);
    // The same registers give the same estimate whichever form they are in.
    const beforeDense = new HyperLogLog();
    for (let i = 0; i < n - 1; i++) beforeDense.add(i);
    expect(beforeDense.isSparse).toBe(true);
    expect(HyperLogLog.decode(beforeDense.registers()).estimate()).toBe(beforeDense.estimate());
    expect(hex(sparse.registers())).toBe(hex(sketch.registers()));
    expect(new HyperLogLog().estimate()).toBe(0);
  });
});
