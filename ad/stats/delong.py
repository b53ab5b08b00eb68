"""DeLong's test for two correlated ROC AUCs on the same test images.

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of several AUCs measured on the same samples
from their structural components; Sun & Xu (2014) compute those components from midranks in O(N log N):
for classifier r, with m anomalous (positive) and n normal samples,

    V10[r, i] = (rank of positive i among all  - rank of positive i among positives) / n
    V01[r, j] = 1 - (rank of negative j among all - rank of negative j among negatives) / m

(midranks, so ties count half, as in the AUROC), AUC_r = mean_i V10[r, i], and
Cov(AUC) = Cov(V10) / m + Cov(V01) / n. The test statistic for AUC_a - AUC_b is normal under H0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import norm, rankdata

from ad.metrics import MetricError


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p: float
    low: float  # 95 % normal interval of the difference
    high: float


def delong_covariance(labels, scores: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs [k], covariance [k, k]) of k score vectors [k, N] (or a list of k [N] arrays) on the same labels."""
    y = np.asarray(labels)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise MetricError("delong: labels must be a 1-D array of 0/1")
    y = y.astype(bool)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.shape[1] != y.size:
        raise MetricError(f"delong: scores must be [k, {y.size}], got {s.shape}")
    if not np.isfinite(s).all():
        raise MetricError("delong: scores contain NaN or inf")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise MetricError(f"delong: needs at least 2 anomalous and 2 normal images, got {m} and {n}")
    pos, neg = s[:, y], s[:, ~y]
    tz = rankdata(s, axis=1)  # midranks among all samples
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    v10 = (tz[:, y] - tx) / n
    v01 = 1.0 - (tz[:, ~y] - ty) / m
    aucs = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_test(labels, scores_a, scores_b) -> DeLongResult:
    """Two-sided DeLong test of AUROC(a) == AUROC(b); a and b score the same images in the same order."""
    aucs, cov = delong_covariance(labels, [scores_a, scores_b])
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0.0:  # identical rankings (or both perfect): no evidence of a difference
        z, p = 0.0, 1.0 if diff == 0.0 else 0.0
    else:
        z = diff / se
        p = float(2.0 * norm.sf(abs(z)))
    half = 1.959963984540054 * se
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, float(z), p, diff - half, diff + half)
