/**
 * The distribution tails the drift tests need: the regularized upper incomplete gamma function
 * (chi-square p-values) and the Kolmogorov distribution's survival function (KS p-values).
 * Written from the formulas (Numerical Recipes, 3rd ed., §6.1–6.2 and §14.3.3); checked against
 * scipy in test/domain/profile-drift.test.ts.
 */

// Lanczos approximation, g = 7, n = 9 (relative error below 1e-15 for x > 0).
const lanczos = [
  0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
  12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
];

/** ln Γ(x) for x > 0. */
export function logGamma(x: number): number {
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - logGamma(1 - x);
  const z = x - 1;
  let sum = lanczos[0] as number;
  for (let i = 1; i < 9; i++) sum += (lanczos[i] as number) / (z + i);
  const t = z + 7.5;
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(sum);
}

const epsilon = 1e-16;
const tiny = 1e-300;
const maxIterations = 10_000;

/** P(a, x) by its series, for x < a + 1. */
function lowerSeries(a: number, x: number): number {
  let term = 1 / a;
  let sum = term;
  for (let n = 1; n < maxIterations; n++) {
    term *= x / (a + n);
    sum += term;
    if (Math.abs(term) < Math.abs(sum) * epsilon) break;
  }
  return sum * Math.exp(-x + a * Math.log(x) - logGamma(a));
}

/** Q(a, x) by its continued fraction (modified Lentz), for x ≥ a + 1. */
function upperFraction(a: number, x: number): number {
  let b = x + 1 - a;
  let c = 1 / tiny;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < maxIterations; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < tiny) d = tiny;
    c = b + an / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < epsilon) break;
  }
  return Math.exp(-x + a * Math.log(x) - logGamma(a)) * h;
}

/** The regularized upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a), a > 0, x ≥ 0. */
export function regularizedGammaQ(a: number, x: number): number {
  if (x <= 0) return 1;
  if (x === Number.POSITIVE_INFINITY) return 0;
  return x < a + 1 ? 1 - lowerSeries(a, x) : upperFraction(a, x);
}

/** P(X ≥ statistic) for X chi-square distributed with `degreesOfFreedom` (> 0). */
export function chiSquareSurvival(statistic: number, degreesOfFreedom: number): number {
  return regularizedGammaQ(degreesOfFreedom / 2, statistic / 2);
}

/**
 * The Kolmogorov distribution's survival function Q_KS(λ) = 2 Σ_{j≥1} (−1)^(j−1) e^(−2j²λ²),
 * the limit of P(√n·D_n > λ). Below λ = 1.18 the alternating series converges slowly, so the
 * equivalent theta-function form 1 − (√(2π)/λ) Σ_{j≥1} e^(−(2j−1)²π²/(8λ²)) is used there.
 */
export function kolmogorovSurvival(lambda: number): number {
  if (!(lambda > 0)) return 1;
  if (lambda < 1.18) {
    const y = Math.exp((-Math.PI * Math.PI) / (8 * lambda * lambda));
    const y8 = y ** 8;
    const sum = y * (1 + y8 * (1 + y8 * y8 * (1 + y8 * y8 * y8)));
    return 1 - (Math.sqrt(2 * Math.PI) / lambda) * sum;
  }
  let sum = 0;
  let sign = 1;
  for (let j = 1; j <= 100; j++) {
    const term = Math.exp(-2 * j * j * lambda * lambda);
    sum += sign * term;
    if (term < 1e-17 * Math.max(sum, tiny)) break;
    sign = -sign;
  }
  return Math.min(1, Math.max(0, 2 * sum));
}
