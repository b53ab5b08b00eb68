"""Comparisons across categories (Demšar 2006) and intervals over seeds.

* `friedman`: do k methods rank differently over N categories (datasets)? Average ranks (1 = best, ties get
  the mean rank), Friedman's chi-square and the Iman-Davenport F correction.
* `nemenyi_cd`: two methods differ when their average ranks differ by more than the critical difference
  CD = q_alpha * sqrt(k (k + 1) / (6 N)), with q_alpha the studentized range quantile / sqrt(2).
* `wilcoxon_holm`: Wilcoxon signed-rank test for every pair, p-values Holm-corrected for the number of pairs.
* `seed_interval`: mean, sample std and the t-based CI of a metric over seeds.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy import stats

from ad.metrics import MetricError


@dataclass(frozen=True)
class FriedmanResult:
    methods: List[str]
    ranks: Dict[str, float]  # average rank per method (1 = best)
    n: int  # blocks (categories)
    chi2: float
    p: float
    f: float  # Iman-Davenport statistic
    p_f: float
    cd: float  # Nemenyi critical difference at `alpha`
    alpha: float


def _matrix(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise MetricError(f"friedman: need a [categories >= 2, methods >= 2] table, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise MetricError("friedman: the table has missing values; use only categories where every method ran")
    return x


def average_ranks(values, higher_is_better: bool = True) -> np.ndarray:
    """[k] mean over rows of each column's rank within the row (1 = best; ties share the mean rank)."""
    x = _matrix(values)
    return stats.rankdata(-x if higher_is_better else x, axis=1).mean(axis=0)


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """q_alpha of the Nemenyi test for k methods (Demšar 2006, Table 5a: 1.960, 2.343, 2.569, ... at 0.05)."""
    if k < 2:
        raise MetricError(f"nemenyi: needs at least 2 methods, got {k}")
    return float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / np.sqrt(2.0))


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    return nemenyi_q(k, alpha) * float(np.sqrt(k * (k + 1) / (6.0 * n)))


def friedman(values, methods: Sequence[str], higher_is_better: bool = True, alpha: float = 0.05) -> FriedmanResult:
    """values [N categories, k methods]. Chi-square with the tie correction (equals scipy's friedmanchisquare)."""
    x = _matrix(values)
    n, k = x.shape
    if len(methods) != k:
        raise MetricError(f"friedman: {k} columns but {len(methods)} method names")
    r = stats.rankdata(-x if higher_is_better else x, axis=1)
    rbar = r.mean(axis=0)
    ss = n * np.sum((rbar - (k + 1) / 2.0) ** 2)
    # tie correction: sum over rows of (t^3 - t) for each group of tied values
    ties = sum(float(np.sum(c ** 3 - c)) for c in (np.unique(row, return_counts=True)[1] for row in r))
    denom = k * (k + 1) / 12.0 - ties / (12.0 * n * (k - 1))
    chi2 = float(ss / denom) if denom > 0 else 0.0
    p = float(stats.chi2.sf(chi2, k - 1))
    if n * (k - 1) - chi2 > 0:
        f = (n - 1) * chi2 / (n * (k - 1) - chi2)
        p_f = float(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))
    else:  # every category ranks the methods identically
        f, p_f = float("inf"), 0.0
    return FriedmanResult(list(methods), {m: float(v) for m, v in zip(methods, rbar)}, n, chi2, p, float(f), p_f,
                          nemenyi_cd(k, n, alpha), alpha)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = p.size
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def wilcoxon_holm(values, methods: Sequence[str]) -> List[Dict[str, object]]:
    """Every pair (a, b) of columns: Wilcoxon signed-rank over categories, mean difference a - b, raw and Holm p.

    Pairs whose values are equal in every category get p = 1 (scipy refuses them).
    """
    x = _matrix(values)
    pairs: List[Tuple[int, int]] = list(itertools.combinations(range(x.shape[1]), 2))
    raw = []
    for i, j in pairs:
        d = x[:, i] - x[:, j]
        raw.append(1.0 if np.all(d == 0) else float(stats.wilcoxon(x[:, i], x[:, j]).pvalue))
    adj = holm(raw)
    return [{"a": methods[i], "b": methods[j], "mean_diff": float(np.mean(x[:, i] - x[:, j])), "p": raw[t],
             "p_holm": float(adj[t])} for t, (i, j) in enumerate(pairs)]


@dataclass(frozen=True)
class SeedInterval:
    mean: float
    std: float  # sample std (n - 1); nan for one seed
    low: float  # t-based interval of the mean; nan for one seed
    high: float
    n: int


def seed_interval(values: Sequence[float], level: float = 0.95) -> SeedInterval:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        raise MetricError("seed_interval: no values")
    mean = float(v.mean())
    if v.size < 2:
        return SeedInterval(mean, float("nan"), float("nan"), float("nan"), 1)
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2.0, v.size - 1)) * std / np.sqrt(v.size)
    return SeedInterval(mean, std, mean - half, mean + half, int(v.size))
