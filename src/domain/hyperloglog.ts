/**
 * A small HyperLogLog (Flajolet et al. 2007) for approximate distinct counts in window tiles.
 *
 * Precision p = 12: 4,096 registers, standard error σ = 1.04 / √4096 ≈ 1.6 %. The estimate is
 * Ertl's improved raw estimator ("New cardinality estimation algorithms for HyperLogLog
 * sketches", 2017), nearly unbiased over the whole range without HLL++'s bias tables or a switch to
 * linear counting. Measured here: relative RMS error 1.1-1.6 % at every size from 100 to 100,000;
 * the tests hold each estimate within 5σ·n + 2 of the true count n (small sets miss by a value or
 * two when two values share a register) and the RMS error over random sets within 1.25σ.
 *
 * Sketches merge by register-wise max, so merge(A, B) is bit for bit the sketch of A ∪ B: a window
 * result merges its tiles' sketches. A tile usually sees few values, so a sketch starts sparse (a
 * sorted list of its non-zero registers) and turns into 4,096 bytes only past 256 registers.
 *
 * Hashing is deterministic and portable: MurmurHash3 x86 32-bit, seed 0, over the UTF-8 bytes of a
 * canonical text of the value: `s:` + a string, `n:` + the decimal form of a number or bigint
 * (so 1, 1.0 and 1n are one value, and -0 is 0), `b:true` / `b:false`. The top 12 bits of the hash
 * pick the register and the rank is the leading zeros of the other 20 bits plus one (at most 21):
 * counts stay sound up to about 10^8 distinct values per window.
 */
import { FStoreError } from './errors.js';

export const hyperLogLogPrecision = 12;
export const hyperLogLogRegisters = 1 << hyperLogLogPrecision;
/** Relative standard error of the estimate, 1.04 / √m. */
export const hyperLogLogStandardError = 1.04 / Math.sqrt(hyperLogLogRegisters);

/** Past this many non-zero registers a sparse list costs about as much memory as the dense bytes. */
const sparseLimit = hyperLogLogRegisters / 16;
const rankBits = 5; // ranks 1..21 fit in 5 bits of a packed sparse entry
const rankMask = (1 << rankBits) - 1;
const maxRank = 32 - hyperLogLogPrecision + 1;

export type DistinctValue = string | number | bigint | boolean;

const encoder = new TextEncoder();
let scratch = new Uint8Array(256);

function rotateLeft(value: number, bits: number): number {
  return (value << bits) | (value >>> (32 - bits));
}

function mixBlock(block: number): number {
  return Math.imul(rotateLeft(Math.imul(block, 0xcc9e2d51), 15), 0x1b873593);
}

/** MurmurHash3 x86 32-bit of `bytes[0, length)`, as an unsigned 32-bit integer. */
export function murmurHash3(bytes: Uint8Array, length = bytes.length, seed = 0): number {
  let hash = seed | 0;
  const blockEnd = length & ~3;
  for (let i = 0; i < blockEnd; i += 4) {
    const block = bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24);
    hash = rotateLeft(hash ^ mixBlock(block), 13);
    hash = (Math.imul(hash, 5) + 0xe6546b64) | 0;
  }
  const tail = length & 3;
  if (tail > 0) {
    let block = bytes[blockEnd]!;
    if (tail > 1) block |= bytes[blockEnd + 1]! << 8;
    if (tail > 2) block |= bytes[blockEnd + 2]! << 16;
    hash ^= mixBlock(block);
  }
  hash ^= length;
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

/** The canonical text hashed for a value (see the module comment). */
export function distinctValueText(value: DistinctValue): string {
  switch (typeof value) {
    case 'string':
      return `s:${value}`;
    case 'boolean':
      return value ? 'b:true' : 'b:false';
    case 'bigint':
      return `n:${value}`;
    default:
      // Integers past 2^53 print in exponent form; BigInt gives the digits a bigint would.
      return Number.isInteger(value) && !Number.isSafeInteger(value)
        ? `n:${BigInt(value)}`
        : `n:${String(value)}`;
  }
}

export function hashDistinctValue(value: DistinctValue): number {
  const text = distinctValueText(value);
  // UTF-8 takes at most 3 bytes per UTF-16 code unit.
  if (scratch.length < text.length * 3) scratch = new Uint8Array(text.length * 3);
  const { written } = encoder.encodeInto(text, scratch);
  return murmurHash3(scratch, written);
}

function dataLoss(problem: string): FStoreError {
  return new FStoreError('data_loss', `HyperLogLog state: ${problem}`);
}

export class HyperLogLog {
  /** Non-zero registers as sorted `register << 5 | rank` entries, while sparse; null once dense. */
  private sparse: number[] | null = [];
  private dense: Uint8Array | null = null;

  add(value: DistinctValue): void {
    this.addHash(hashDistinctValue(value));
  }

  addHash(hash: number): void {
    const register = hash >>> (32 - hyperLogLogPrecision);
    const rest = (hash << hyperLogLogPrecision) >>> 0;
    this.raise(register, rest === 0 ? maxRank : Math.clz32(rest) + 1);
  }

  /** Makes this the sketch of the union of both sets. */
  merge(other: HyperLogLog): void {
    if (other.dense) {
      const dense = this.densify();
      const from = other.dense;
      for (let register = 0; register < hyperLogLogRegisters; register++)
        if (from[register]! > dense[register]!) dense[register] = from[register]!;
      return;
    }
    const otherSparse = other.sparse!;
    if (this.dense) {
      for (const entry of otherSparse) this.raise(entry >>> rankBits, entry & rankMask);
      return;
    }
    this.sparse = mergeSparse(this.sparse!, otherSparse);
    if (this.sparse.length > sparseLimit) this.densify();
  }

  /** The estimated number of distinct values, rounded to an integer (0 for an empty sketch). */
  estimate(): number {
    // Histogram of register values: counts[k] registers hold rank k.
    const counts = new Float64Array(maxRank + 1);
    if (this.dense) for (const rank of this.dense) counts[rank]!++;
    else {
      const sparse = this.sparse!;
      counts[0] = hyperLogLogRegisters - sparse.length;
      for (const entry of sparse) counts[entry & rankMask]!++;
    }
    // Ertl's improved raw estimator (Algorithm 6 of the paper).
    const m = hyperLogLogRegisters;
    let z = m * tau(1 - counts[maxRank]! / m);
    for (let rank = maxRank - 1; rank >= 1; rank--) z = 0.5 * (z + counts[rank]!);
    z += m * sigma(counts[0]! / m);
    return Math.round((m * m) / (2 * Math.LN2 * z));
  }

  /** Register values, for tests and equality checks. */
  registers(): Uint8Array {
    if (this.dense) return Uint8Array.from(this.dense);
    const registers = new Uint8Array(hyperLogLogRegisters);
    for (const entry of this.sparse!) registers[entry >>> rankBits] = entry & rankMask;
    return registers;
  }

  get isSparse(): boolean {
    return this.dense === null;
  }

  /** Plain data for a checkpoint: the sorted sparse entries, or the 4,096 register bytes. */
  encode(): number[] | Uint8Array {
    return this.dense ? Uint8Array.from(this.dense) : [...this.sparse!];
  }

  /** The inverse of `encode`; throws a `data_loss` FStoreError on anything `encode` cannot produce. */
  static decode(data: unknown): HyperLogLog {
    const sketch = new HyperLogLog();
    if (data instanceof Uint8Array) {
      if (data.length !== hyperLogLogRegisters)
        throw dataLoss(`${data.length} register bytes instead of ${hyperLogLogRegisters}`);
      if (data.some((rank) => rank > maxRank)) throw dataLoss(`a register is above ${maxRank}`);
      // A copy, so the sketch does not keep the whole decoded checkpoint buffer alive.
      sketch.dense = Uint8Array.from(data);
      sketch.sparse = null;
      return sketch;
    }
    if (!Array.isArray(data) || data.length > sparseLimit) throw dataLoss('not a register list or bytes');
    let previousRegister = -1;
    for (const entry of data) {
      if (!Number.isInteger(entry) || entry < 0) throw dataLoss(`bad sparse entry ${String(entry)}`);
      const register = (entry as number) >>> rankBits;
      const rank = (entry as number) & rankMask;
      if (register >= hyperLogLogRegisters || rank < 1 || rank > maxRank || register <= previousRegister)
        throw dataLoss(`bad or unsorted sparse entry ${String(entry)}`);
      previousRegister = register;
    }
    sketch.sparse = [...(data as number[])];
    return sketch;
  }

  private raise(register: number, rank: number): void {
    if (this.dense) {
      if (rank > this.dense[register]!) this.dense[register] = rank;
      return;
    }
    const sparse = this.sparse!;
    let low = 0;
    let high = sparse.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (sparse[middle]! >>> rankBits < register) low = middle + 1;
      else high = middle;
    }
    const found = sparse[low];
    if (found !== undefined && found >>> rankBits === register) {
      if (rank > (found & rankMask)) sparse[low] = (register << rankBits) | rank;
      return;
    }
    sparse.splice(low, 0, (register << rankBits) | rank);
    if (sparse.length > sparseLimit) this.densify();
  }

  private densify(): Uint8Array {
    if (this.dense) return this.dense;
    const dense = new Uint8Array(hyperLogLogRegisters);
    for (const entry of this.sparse!) dense[entry >>> rankBits] = entry & rankMask;
    this.dense = dense;
    this.sparse = null;
    return dense;
  }
}

/** σ(x) = x + Σ_{k≥1} x^(2^k) 2^(k−1) of Ertl's estimator (the share of empty registers). */
function sigma(x: number): number {
  if (x === 1) return Number.POSITIVE_INFINITY;
  let power = x;
  let weight = 1;
  let sum = x;
  for (;;) {
    power *= power;
    const next = sum + power * weight;
    if (next === sum) return sum;
    sum = next;
    weight += weight;
  }
}

/** τ(x) = (1 − x − Σ_{k≥1} (1 − x^(2^−k))² 2^−k) / 3 of Ertl's estimator (the share of saturated registers). */
function tau(x: number): number {
  if (x === 0 || x === 1) return 0;
  let root = x;
  let weight = 1;
  let sum = 1 - x;
  for (;;) {
    root = Math.sqrt(root);
    weight *= 0.5;
    const next = sum - (1 - root) ** 2 * weight;
    if (next === sum) return sum / 3;
    sum = next;
  }
}

function mergeSparse(left: readonly number[], right: readonly number[]): number[] {
  const merged: number[] = [];
  let i = 0;
  let j = 0;
  while (i < left.length && j < right.length) {
    const a = left[i]!;
    const b = right[j]!;
    const registerA = a >>> rankBits;
    const registerB = b >>> rankBits;
    if (registerA < registerB) {
      merged.push(a);
      i++;
    } else if (registerB < registerA) {
      merged.push(b);
      j++;
    } else {
      merged.push((a & rankMask) >= (b & rankMask) ? a : b);
      i++;
      j++;
    }
  }
  while (i < left.length) merged.push(left[i++]!);
  while (j < right.length) merged.push(right[j++]!);
  return merged;
}
