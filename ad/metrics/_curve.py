"""One exact ROC/PR/PRO computation shared by every threshold-free metric.

Why this is exact and fast
--------------------------
Every curve metric here only changes value at thresholds equal to a *positive* score:

* ROC AUC (ties counted half, as the trapezoid of sklearn's `roc_curve` does) = P(s_pos > s_neg) +
  0.5 P(s_pos == s_neg), which needs, for each distinct positive value v, the number of negatives below v and
  tied with v.
* Average precision (sklearn's step-wise definition) sums precision at the thresholds where recall moves,
  i.e. at distinct positive values.
* F1 at a threshold between two positive values has the same TP and at least as many FP as at the upper
  positive value, so the maximum over all thresholds is attained at a positive value.
* The PRO curve is constant between positive values and the FPR only moves there, so the official curve
  (which has one point per distinct score) is the polyline through the points computed below; redundant
  collinear points change neither the trapezoid area nor the interpolation at the integration limit.

So we sort the (few) positive scores with an argsort, sort only the negatives that are not below the lowest
positive score (a values-only sort, no index array), and count negatives at every distinct positive value with
two `searchsorted` calls. Nothing of size N x thresholds is ever built.

Convention everywhere: a sample is predicted anomalous iff `score >= threshold` (sklearn's convention).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import numpy as np

# Above this many negatives the values-only sort is split in two halves sorted on two threads (numpy releases
# the GIL while sorting); counts are additive over chunks, so the halves never need merging.
PARALLEL_SORT_MIN = 4_000_000


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _sorted_chunks(values: np.ndarray) -> List[np.ndarray]:
    """`values` (a private copy) sorted in place, as one or two independently sorted chunks."""
    if values.size < PARALLEL_SORT_MIN or _cpus() < 2:
        values.sort()
        return [values]
    half = values.size // 2
    chunks = [values[:half], values[half:]]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(np.ndarray.sort, chunks))
    return chunks


class RankCounts:
    """TP/FP counts at every distinct positive score (descending), from one sort of each class."""

    def __init__(
        self, scores: np.ndarray, is_pos: np.ndarray, pos_weights: Optional[np.ndarray] = None, n_regions: int = 1
    ) -> None:
        # scores: 1-D finite; is_pos: 1-D bool; pos_weights: PRO increment (1 / region size) of each positive in
        # the order of scores[is_pos], accumulated then divided by the number of regions as the official code does.
        pos = scores[is_pos]
        self.n_pos = int(pos.size)
        self.n_neg = int(scores.size) - self.n_pos
        order = np.argsort(pos)[::-1]  # the order inside a tie is irrelevant: only run ends are read
        pos_sorted = pos[order]
        # Last index of each run of equal values: the point that includes every positive tied at that value.
        ends = np.flatnonzero(pos_sorted[1:] != pos_sorted[:-1])
        ends = np.append(ends, self.n_pos - 1)
        self.values = pos_sorted[ends]  # distinct positive scores, descending
        self.tp = (ends + 1).astype(np.int64)  # positives >= value
        # Negatives below the lowest positive score never lie between two positive values: count them only.
        # (Selected straight from `scores`, so no full copy of the negatives is ever made.)
        hi = scores[np.greater_equal(scores, self.values[-1]) & ~is_pos]
        asc = self.values[::-1]  # ascending queries let searchsorted reuse its previous position
        ge = np.zeros(asc.size, np.int64)
        gt = np.zeros(asc.size, np.int64)
        for chunk in _sorted_chunks(hi):
            ge += chunk.size - np.searchsorted(chunk, asc, side="left")  # negatives >= v
            gt += chunk.size - np.searchsorted(chunk, asc, side="right")  # negatives > v
        self.fp_ge = ge[::-1]
        self.fp_gt = gt[::-1]
        self.n_regions = int(n_regions) if pos_weights is not None else 0
        self.pro: Optional[np.ndarray] = None
        if pos_weights is not None:
            self.pro = np.cumsum(pos_weights[order], dtype=np.float64)[ends] / n_regions

    def auroc(self) -> float:
        cnt = np.diff(self.tp, prepend=0)  # positives exactly at each value
        below = self.n_neg - self.fp_ge
        ties = self.fp_ge - self.fp_gt
        # Integer arithmetic: exact Mann-Whitney count with half-weighted ties.
        num = 2 * int(np.dot(cnt, below)) + int(np.dot(cnt, ties))
        return num / (2.0 * self.n_pos * self.n_neg)

    def average_precision(self) -> float:
        cnt = np.diff(self.tp, prepend=0)
        precision = self.tp / (self.tp + self.fp_ge)
        return float(np.dot(cnt, precision) / self.n_pos)

    def f1_max(self) -> dict:
        # F1 = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + P); computed from exact integers so equal ratios tie exactly.
        f1 = 2.0 * self.tp / (self.tp + self.fp_ge + self.n_pos)
        # Among equal maxima take the lowest threshold, as np.argmax over sklearn's ascending thresholds would.
        i = f1.size - 1 - int(np.argmax(f1[::-1]))
        tp, fp = int(self.tp[i]), int(self.fp_ge[i])
        return {
            "f1": float(f1[i]),
            "threshold": float(self.values[i]),
            "precision": tp / (tp + fp),
            "recall": tp / self.n_pos,
        }

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, PRO) polyline, equal to the official MVTec curve up to collinear points.

        Going down through the distinct positive values v_j: the negatives strictly above v_j move the FPR at
        the previous PRO (a horizontal piece), then all pixels tied at v_j enter together (one straight piece,
        as the official code keeps only the last point of a tied run). Starts at (0, 0) and ends with the
        official extra point (1, 1).
        """
        assert self.pro is not None
        n = self.n_neg
        pro = np.minimum(self.pro, 1.0)  # the official code clips accumulated rounding above 1
        m = self.values.size
        x = np.empty(2 * m + 3)
        y = np.empty(2 * m + 3)
        x[0] = y[0] = 0.0
        x[1:-2:2] = self.fp_gt / n
        x[2:-2:2] = self.fp_ge / n
        y[1] = 0.0
        y[3:-2:2] = pro[:-1]
        y[2:-2:2] = pro
        x[-2], y[-2] = 1.0, pro[-1]  # every remaining negative (those below the lowest positive)
        x[-1], y[-1] = 1.0, 1.0
        return x, y


def trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area of a polyline with non-decreasing x, cut at x_max by linear interpolation.

    Same semantics as `trapezoid(x, y, x_max)` of the official MVTec AD evaluation (generic_util.py): if x_max
    is not a curve point, the y value at x_max is interpolated between the last point with x <= x_max and the
    first with x > x_max, and that partial trapezoid is added.
    """
    correction = 0.0
    if not np.any(x == x_max):
        ins = int(np.searchsorted(x, x_max, side="right"))  # == bisect.bisect(x, x_max)
        if not 0 < ins < x.size:
            raise ValueError(f"x_max={x_max} outside the curve's range [{x[0]}, {x[-1]}]")
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    xs, ys = x[keep], y[keep]
    return float(np.sum(0.5 * (ys[1:] + ys[:-1]) * (xs[1:] - xs[:-1])) + correction)
