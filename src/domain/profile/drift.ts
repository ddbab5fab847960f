import { FStoreError, invalidArgument } from '../errors.js';
import type { CategoricalProfile, FeatureProfile, NumericProfile } from './feature-profile.js';
import { orderedBuckets } from './quantile-sketch.js';
import { chiSquareSurvival, kolmogorovSurvival } from './special-functions.js';

/**
 * Drift between a reference profile and a current one (DESIGN §4), from the profiles alone.
 *
 * Numeric features are compared bucket by bucket: both sketches have the same relative accuracy,
 * so their buckets share edges. The reference's quantiles at 1/bins, 2/bins, ... cut its buckets
 * into PSI bins (a bin ends at the first bucket whose cumulative count reaches i·n/bins; a bucket
 * holding several quantiles makes fewer bins); the current data is counted into the same bins.
 * - PSI = Σ (c − r)·ln(c / r) over the bins, with a proportion of 0 replaced by `epsilon`.
 * - Jensen–Shannon distance, base 2, over the same bins (0 same distribution, 1 disjoint).
 * - Kolmogorov–Smirnov: D = max |F_ref − F_cur| over every bucket edge; on data where no two
 *   distinct values share a bucket (values further apart than the 0.5 % accuracy) this is exactly
 *   the two-sample statistic; otherwise within the sketch's discretisation. The p-value is the
 *   asymptotic Kolmogorov distribution Q_KS(√(nm / (n + m))·D).
 * Categorical features are compared over their values (plus "other" for the counts a
 * Misra–Gries summary no longer holds): PSI and Jensen–Shannon over the proportions, and
 * Pearson's chi-square test of homogeneity on the 2 × k table (no continuity correction).
 */

export interface DriftOptions {
  /** PSI / JS bins, 2 to 100 (default 10). */
  readonly bins?: number;
  /** Proportion used for an empty bin, in (0, 0.1] (default 0.0001). */
  readonly epsilon?: number;
  readonly psiWarn?: number;
  readonly psiAlert?: number;
}

export const driftDefaults = { bins: 10, epsilon: 1e-4, psiWarn: 0.1, psiAlert: 0.25 } as const;

export type DriftLevel = 'ok' | 'warn' | 'alert';

export interface DriftResult {
  readonly kind: 'numeric' | 'categorical';
  readonly psi: number;
  readonly psiLevel: DriftLevel;
  /** Bins (numeric) or categories (categorical) the PSI was summed over. */
  readonly bins: number;
  readonly ks?: { readonly statistic: number; readonly pValue: number };
  readonly jensenShannon: number;
  readonly chiSquare?: {
    readonly statistic: number;
    readonly degreesOfFreedom: number;
    readonly pValue: number;
  };
}

export function validateDriftOptions(options: DriftOptions): void {
  const { bins, epsilon, psiWarn, psiAlert } = options;
  if (bins !== undefined && !(Number.isInteger(bins) && bins >= 2 && bins <= 100))
    throw invalidArgument('options.bins', `must be a whole number from 2 to 100, got ${bins}`);
  if (epsilon !== undefined && !(epsilon > 0 && epsilon <= 0.1))
    throw invalidArgument('options.epsilon', `must be in (0, 0.1], got ${epsilon}`);
  for (const [field, value] of [
    ['options.psi_warn', psiWarn],
    ['options.psi_alert', psiAlert],
  ] as const)
    if (value !== undefined && !(value >= 0 && Number.isFinite(value)))
      throw invalidArgument(field, `must be a finite number ≥ 0, got ${value}`);
  if (psiWarn !== undefined && psiAlert !== undefined && psiWarn > psiAlert)
    throw invalidArgument('options.psi_warn', `${psiWarn} is above psi_alert ${psiAlert}`);
}

export function psiLevel(psi: number, warn: number, alert: number): DriftLevel {
  return psi >= alert ? 'alert' : psi >= warn ? 'warn' : 'ok';
}

/** PSI of two proportion vectors, empty proportions replaced by epsilon. */
export function populationStabilityIndex(
  reference: readonly number[],
  current: readonly number[],
  epsilon: number,
): number {
  let psi = 0;
  for (let i = 0; i < reference.length; i++) {
    const r = (reference[i] as number) > 0 ? (reference[i] as number) : epsilon;
    const c = (current[i] as number) > 0 ? (current[i] as number) : epsilon;
    psi += (c - r) * Math.log(c / r);
  }
  return psi;
}

/** Jensen–Shannon distance (base 2) of two proportion vectors. */
export function jensenShannonDistance(p: readonly number[], q: readonly number[]): number {
  let divergence = 0;
  for (let i = 0; i < p.length; i++) {
    const a = p[i] as number;
    const b = q[i] as number;
    const m = (a + b) / 2;
    if (a > 0) divergence += 0.5 * a * Math.log2(a / m);
    if (b > 0) divergence += 0.5 * b * Math.log2(b / m);
  }
  return Math.sqrt(Math.max(0, Math.min(1, divergence)));
}

function requireValues(profile: FeatureProfile, side: 'reference' | 'current'): void {
  if (profile.count === 0)
    throw new FStoreError('failed_precondition', `the ${side} data has no non-null values to compare`);
}

/** Per bucket edge (ascending, the union of both sketches'), each side's count. */
function alignedBuckets(reference: NumericProfile, current: NumericProfile) {
  const a = orderedBuckets(reference.sketch);
  const b = orderedBuckets(current.sketch);
  const edges: number[] = [];
  const left: number[] = [];
  const right: number[] = [];
  let i = 0;
  let j = 0;
  while (i < a.upper.length || j < b.upper.length) {
    const edgeA = i < a.upper.length ? (a.upper[i] as number) : Number.POSITIVE_INFINITY;
    const edgeB = j < b.upper.length ? (b.upper[j] as number) : Number.POSITIVE_INFINITY;
    const edge = Math.min(edgeA, edgeB);
    edges.push(edge);
    left.push(edgeA === edge ? (a.count[i++] as number) : 0);
    right.push(edgeB === edge ? (b.count[j++] as number) : 0);
  }
  return { edges, left, right };
}

function numericDrift(
  reference: NumericProfile,
  current: NumericProfile,
  options: Required<DriftOptions>,
): DriftResult {
  if (reference.sketch.relativeAccuracy !== current.sketch.relativeAccuracy)
    throw new FStoreError(
      'failed_precondition',
      `the profiles' sketches have different relative accuracies (${reference.sketch.relativeAccuracy} and ${current.sketch.relativeAccuracy})`,
    );
  const { left, right } = alignedBuckets(reference, current);
  const n = reference.sketch.count;
  const m = current.sketch.count;
  // KS over every bucket edge.
  let cumulativeLeft = 0;
  let cumulativeRight = 0;
  let statistic = 0;
  for (let k = 0; k < left.length; k++) {
    cumulativeLeft += left[k] as number;
    cumulativeRight += right[k] as number;
    statistic = Math.max(statistic, Math.abs(cumulativeLeft / n - cumulativeRight / m));
  }
  // PSI bins: bucket runs cut where the reference's cumulative count reaches i·n/bins.
  const referenceBins: number[] = [];
  const currentBins: number[] = [];
  let binLeft = 0;
  let binRight = 0;
  let cumulative = 0;
  let nextCut = 1;
  for (let k = 0; k < left.length; k++) {
    binLeft += left[k] as number;
    binRight += right[k] as number;
    cumulative += left[k] as number;
    if (nextCut < options.bins && cumulative * options.bins >= nextCut * n) {
      referenceBins.push(binLeft / n);
      currentBins.push(binRight / m);
      binLeft = 0;
      binRight = 0;
      while (nextCut < options.bins && cumulative * options.bins >= nextCut * n) nextCut++;
    }
  }
  referenceBins.push(binLeft / n);
  currentBins.push(binRight / m);
  const psi = populationStabilityIndex(referenceBins, currentBins, options.epsilon);
  return {
    kind: 'numeric',
    psi,
    psiLevel: psiLevel(psi, options.psiWarn, options.psiAlert),
    bins: referenceBins.length,
    ks: { statistic, pValue: kolmogorovSurvival(Math.sqrt((n * m) / (n + m)) * statistic) },
    jensenShannon: jensenShannonDistance(referenceBins, currentBins),
  };
}

const otherCategory = Symbol('other');

function categoricalDrift(
  reference: CategoricalProfile,
  current: CategoricalProfile,
  options: Required<DriftOptions>,
): DriftResult {
  const categories = new Map<string | typeof otherCategory, [number, number]>();
  for (const [value, count] of reference.counts) categories.set(value, [count, 0]);
  for (const [value, count] of current.counts) {
    const cell = categories.get(value);
    if (cell) cell[1] = count;
    else categories.set(value, [0, count]);
  }
  const keptReference = [...reference.counts.values()].reduce((sum, count) => sum + count, 0);
  const keptCurrent = [...current.counts.values()].reduce((sum, count) => sum + count, 0);
  // What a Misra–Gries summary no longer attributes to a value.
  if (keptReference < reference.count || keptCurrent < current.count)
    categories.set(otherCategory, [reference.count - keptReference, current.count - keptCurrent]);
  const cells = [...categories.values()].filter(([a, b]) => a + b > 0);
  const n = reference.count;
  const m = current.count;
  const referenceShares = cells.map(([a]) => a / n);
  const currentShares = cells.map(([, b]) => b / m);
  const psi = populationStabilityIndex(referenceShares, currentShares, options.epsilon);
  // Pearson's chi-square of homogeneity, 2 × k.
  const total = n + m;
  let statistic = 0;
  for (const [a, b] of cells) {
    const column = a + b;
    const expectedA = (column * n) / total;
    const expectedB = (column * m) / total;
    statistic += (a - expectedA) ** 2 / expectedA + (b - expectedB) ** 2 / expectedB;
  }
  const degreesOfFreedom = cells.length - 1;
  return {
    kind: 'categorical',
    psi,
    psiLevel: psiLevel(psi, options.psiWarn, options.psiAlert),
    bins: cells.length,
    jensenShannon: jensenShannonDistance(referenceShares, currentShares),
    chiSquare: {
      statistic,
      degreesOfFreedom,
      pValue: degreesOfFreedom > 0 ? chiSquareSurvival(statistic, degreesOfFreedom) : 1,
    },
  };
}

export function computeDrift(
  reference: FeatureProfile,
  current: FeatureProfile,
  options: DriftOptions = {},
): DriftResult {
  validateDriftOptions(options);
  if (reference.kind !== current.kind)
    throw new FStoreError(
      'failed_precondition',
      `the reference profile is ${reference.kind} and the current one ${current.kind}: they cannot be compared`,
    );
  requireValues(reference, 'reference');
  requireValues(current, 'current');
  const psiWarn = options.psiWarn ?? driftDefaults.psiWarn;
  const resolved: Required<DriftOptions> = {
    bins: options.bins ?? driftDefaults.bins,
    epsilon: options.epsilon ?? driftDefaults.epsilon,
    psiWarn,
    psiAlert: options.psiAlert ?? Math.max(driftDefaults.psiAlert, psiWarn),
  };
  return reference.kind === 'numeric'
    ? numericDrift(reference, current as NumericProfile, resolved)
    : categoricalDrift(reference, current as CategoricalProfile, resolved);
}
