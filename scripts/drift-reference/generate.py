"""Reference values for FStore's drift statistics, from numpy and scipy.

Writes test/fixtures/drift/reference-values.json: fixed data sets with their expected
Kolmogorov-Smirnov statistic and p-value, PSI, Jensen-Shannon distance and chi-square test, and
tail values of the distributions behind the p-values. test/domain/profile-drift.test.ts checks
FStore's figures against them.

Run once (the output is committed):
    python3 -m venv /tmp/drift-venv && /tmp/drift-venv/bin/pip install numpy scipy
    /tmp/drift-venv/bin/python scripts/drift-reference/generate.py

Numeric data are whole numbers from 1 to 95: FStore's sketch (relative accuracy 0.5 %) keeps
every such value in a bucket of its own, so its figures are those of the raw data.

Conventions matched (see README, GetDriftReport):
- KS: statistic of scipy.stats.ks_2samp; p-value from the asymptotic Kolmogorov distribution,
  scipy.stats.kstwobign.sf(D * sqrt(n m / (n + m))) (ks_2samp's own p-value is also recorded);
- PSI: bins of the reference cut where its cumulative count first reaches i * n / bins, an
  empty proportion replaced by epsilon, sum of (c - r) * ln(c / r);
- Jensen-Shannon: scipy.spatial.distance.jensenshannon(p, q, base=2) over the same bins;
- chi-square: scipy.stats.chi2_contingency on the 2 x k table, correction=False.
"""
import json
import math
from pathlib import Path

import numpy as np
import scipy
from scipy import special, stats
from scipy.spatial.distance import jensenshannon

EPSILON = 1e-4


def psi(reference, current, epsilon=EPSILON):
    r = np.where(reference > 0, reference, epsilon)
    c = np.where(current > 0, current, epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def numeric_bins(reference, current, bins):
    values = np.union1d(reference, current)
    ref_counts = np.array([np.sum(reference == v) for v in values])
    cur_counts = np.array([np.sum(current == v) for v in values])
    n, m = len(reference), len(current)
    ref_bins, cur_bins = [], []
    bin_ref = bin_cur = cumulative = 0
    next_cut = 1
    for k in range(len(values)):
        bin_ref += ref_counts[k]
        bin_cur += cur_counts[k]
        cumulative += ref_counts[k]
        if next_cut < bins and cumulative * bins >= next_cut * n:
            ref_bins.append(bin_ref / n)
            cur_bins.append(bin_cur / m)
            bin_ref = bin_cur = 0
            while next_cut < bins and cumulative * bins >= next_cut * n:
                next_cut += 1
    ref_bins.append(bin_ref / n)
    cur_bins.append(bin_cur / m)
    return np.array(ref_bins), np.array(cur_bins)


def numeric_case(name, reference, current, bins=10):
    reference = np.asarray(reference, dtype=np.int64)
    current = np.asarray(current, dtype=np.int64)
    n, m = len(reference), len(current)
    ks = stats.ks_2samp(reference, current)
    statistic = float(ks.statistic)
    r, c = numeric_bins(reference, current, bins)
    return {
        "name": name,
        "reference": reference.tolist(),
        "current": current.tolist(),
        "bins": bins,
        "epsilon": EPSILON,
        "expected": {
            "ksStatistic": statistic,
            "ksPValue": float(stats.kstwobign.sf(statistic * math.sqrt(n * m / (n + m)))),
            "scipyKs2sampPValue": float(ks.pvalue),
            "psi": psi(r, c),
            "psiBins": len(r),
            "jensenShannon": float(jensenshannon(r, c, base=2)),
        },
    }


def categorical_case(name, reference, current):
    categories = sorted(set(reference) | set(current))
    table = np.array([[reference.get(k, 0) for k in categories], [current.get(k, 0) for k in categories]])
    chi2 = stats.chi2_contingency(table, correction=False)
    r = table[0] / table[0].sum()
    c = table[1] / table[1].sum()
    return {
        "name": name,
        "reference": reference,
        "current": current,
        "epsilon": EPSILON,
        "expected": {
            "chiSquareStatistic": float(chi2.statistic),
            "chiSquareDegreesOfFreedom": int(chi2.dof),
            "chiSquarePValue": float(chi2.pvalue),
            "psi": psi(r, c),
            "jensenShannon": float(jensenshannon(r, c, base=2)),
        },
    }


def whole(rng, mean, sd, size):
    return np.clip(np.rint(rng.normal(mean, sd, size)), 1, 95).astype(np.int64)


def main():
    rng = np.random.default_rng(20261204)
    numeric = [
        numeric_case("shifted mean and spread", whole(rng, 40, 8, 2000), whole(rng, 43, 9, 1500)),
        numeric_case("same distribution", whole(rng, 50, 10, 3000), whole(rng, 50, 10, 2500)),
        numeric_case("small samples", whole(rng, 30, 5, 50), whole(rng, 33, 5, 60)),
        numeric_case("current in two reference bins only", whole(rng, 50, 15, 1000), whole(rng, 80, 2, 800)),
        numeric_case("twenty bins, skewed", np.minimum(95, 1 + rng.geometric(0.08, 4000)), np.minimum(95, 1 + rng.geometric(0.06, 3000)), bins=20),
    ]
    categorical = [
        categorical_case("country mix shift", {"US": 500, "DE": 300, "FR": 200}, {"US": 200, "DE": 300, "FR": 500}),
        categorical_case("stable", {"a": 1200, "b": 800, "c": 400, "d": 100}, {"a": 1150, "b": 830, "c": 410, "d": 95}),
        categorical_case("category missing from current", {"x": 70, "y": 20, "z": 10}, {"x": 90, "y": 10}),
        categorical_case("new category in current, two columns", {"true": 640, "false": 360}, {"true": 600, "false": 380, "maybe": 20}),
        categorical_case("one degree of freedom", {"yes": 45, "no": 55}, {"yes": 60, "no": 40}),
    ]
    tails = {
        "chiSquareSurvival": [
            {"statistic": x, "degreesOfFreedom": k, "expected": float(stats.chi2.sf(x, k))}
            for x, k in [(0.5, 1), (3.84, 1), (10, 3), (25, 4), (150, 2), (400, 10), (1.2, 30), (60, 40)]
        ],
        "kolmogorovSurvival": [
            {"lambda": x, "expected": float(stats.kstwobign.sf(x))} for x in [0.2, 0.5, 0.8, 1.0, 1.18, 1.36, 2.0, 3.0, 5.0]
        ],
        "regularizedGammaQ": [
            {"a": a, "x": x, "expected": float(special.gammaincc(a, x))}
            for a, x in [(0.5, 0.1), (1, 1), (2.5, 4), (10, 3), (10, 20), (50, 45)]
        ],
        "logGamma": [{"x": x, "expected": float(special.gammaln(x))} for x in [0.1, 0.5, 1, 2.5, 10, 100.5]],
    }
    out = {
        "generatedBy": "scripts/drift-reference/generate.py",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numeric": numeric,
        "categorical": categorical,
        "tails": tails,
    }
    path = Path(__file__).resolve().parents[2] / "test" / "fixtures" / "drift" / "reference-values.json"
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {path.name}: {len(numeric)} numeric, {len(categorical)} categorical cases")


if __name__ == "__main__":
    main()
