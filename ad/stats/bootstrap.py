"""Stratified bootstrap confidence intervals and paired bootstrap p-values.

Resampling scheme (one per seed, shared by every metric and every run on the same test images): each replicate
draws the normal test images with replacement from the normal ones and the anomalous images from the anomalous
ones, so every replicate keeps the test set's class balance and every metric stays defined. Row b of
`stratified_resamples(labels, B, seed)` is replicate b: first the normal draws, then the anomalous draws, from
``rng = np.random.default_rng(seed)`` as ``rng.integers(0, n_normal, (B, n_normal))`` then
``rng.integers(0, n_anomalous, (B, n_anomalous))``.

Image metrics come from `ad.metrics` (one `RankCounts` per replicate). Pixel metrics need every pixel of every
resampled image; re-sorting millions of pixels per replicate would take minutes, so the maps are reduced once to
per-image histograms over their distinct (float16) values, a replicate is a weighted sum of those histograms (a
matrix product), and AUROC / AUPRO are read from the summed histograms. That is exact on float16 maps: it equals
`ad.metrics.pixel_auroc` / `aupro` on the resampled images (tests check it against that slow direct loop).

Intervals are percentile intervals of the replicates (default 95 %).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
from scipy import ndimage, sparse

from ad.metrics import MetricError, RankCounts, trapezoid_to

IMAGE_METRICS = ("auroc", "ap", "f1_max")
PIXEL_METRICS = ("auroc", "aupro")
_CHUNK = 128  # replicates per matrix product: bounds memory at _CHUNK x (histogram bins) floats
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity, as the official MVTec AUPRO


@dataclass(frozen=True)
class Interval:
    """A point estimate on the full test set with its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    std: float
    n_boot: int
    level: float = 0.95

    def as_dict(self) -> Dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "std": self.std,
                "n_boot": self.n_boot, "level": self.level}


@dataclass(frozen=True)
class Paired:
    """Difference a - b with its bootstrap interval and a two-sided p-value for 'no difference'."""

    diff: float
    low: float
    high: float
    p: float


def _labels(labels) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0 or not np.isin(y, (0, 1)).all():
        raise MetricError("bootstrap: labels must be a non-empty 1-D array of 0/1")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise MetricError("bootstrap: the test set needs normal and anomalous images to resample them separately")
    return y


def stratified_resamples(labels, n_boot: int, seed: int = 0) -> np.ndarray:
    """[n_boot, N] image indices; row b is replicate b (normals then anomalies, see the module docstring)."""
    if int(n_boot) < 1:
        raise MetricError(f"bootstrap: n_boot must be >= 1, got {n_boot}")
    y = _labels(labels)
    normal, anomalous = np.flatnonzero(~y), np.flatnonzero(y)
    rng = np.random.default_rng(seed)
    a = normal[rng.integers(0, normal.size, (int(n_boot), normal.size))]
    b = anomalous[rng.integers(0, anomalous.size, (int(n_boot), anomalous.size))]
    return np.concatenate([a, b], axis=1)


def interval(estimate: float, replicates: np.ndarray, level: float = 0.95) -> Interval:
    r = np.asarray(replicates, dtype=np.float64)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(r, [tail, 100.0 - tail])
    return Interval(float(estimate), float(low), float(high), float(np.std(r, ddof=1)) if r.size > 1 else 0.0,
                    int(r.size), float(level))


def _image_values(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    rc = RankCounts(s, y)
    return np.array([rc.auroc(), rc.average_precision(), rc.f1_max()["f1"]])


def _image_curves(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """[B, 3] AUROC / AP / F1-max from per-replicate counts [B, V] of positives / negatives per distinct score
    (ascending). Same definitions as `RankCounts`: ties count half in AUROC; AP sums precision where recall
    moves; F1 is maximal at a positive value, and a bin without positives never beats the one above it."""
    n_pos, n_neg = pos.sum(1, keepdims=True), neg.sum(1, keepdims=True)
    below = np.cumsum(neg, axis=1) - neg
    auroc = np.sum(pos * (below + 0.5 * neg), axis=1) / (n_pos[:, 0] * n_neg[:, 0])
    tp = np.cumsum(pos[:, ::-1], axis=1)  # descending thresholds: samples >= each value
    fp = np.cumsum(neg[:, ::-1], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    ap = np.sum(pos[:, ::-1] * precision, axis=1) / n_pos[:, 0]
    f1 = np.max(2.0 * tp / (tp + fp + n_pos), axis=1)
    return np.stack([auroc, ap, f1], axis=1)


def image_replicates(labels, scores, resamples: np.ndarray) -> Dict[str, np.ndarray]:
    """{metric: [B] values} of image AUROC / AP / F1-max on each resampled test set (vectorised over B)."""
    y = _labels(labels)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape or not np.isfinite(s).all():
        raise MetricError(f"bootstrap: scores must be {y.shape} finite numbers, got shape {s.shape}")
    _, code = np.unique(s, return_inverse=True)
    # [V, N] sparse indicator of each image's distinct-score bin: bin counts = indicator @ weights.T
    to_bins = sparse.csr_matrix((np.ones(y.size), (code, np.arange(y.size))), shape=(int(code.max()) + 1, y.size))
    out = []
    for i in range(0, resamples.shape[0], _CHUNK):
        w = resample_weights(resamples[i:i + _CHUNK], y.size)
        out.append(_image_curves(np.asarray(to_bins @ (w * y).T).T, np.asarray(to_bins @ (w * ~y).T).T))
    vals = np.concatenate(out)
    return {m: vals[:, k] for k, m in enumerate(IMAGE_METRICS)}


def bootstrap_image(labels, scores, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                    resamples: Optional[np.ndarray] = None) -> Dict[str, Interval]:
    """{auroc, ap, f1_max: Interval} for one run's image scores."""
    y = _labels(labels)
    s = np.asarray(scores, dtype=np.float64)
    idx = stratified_resamples(y, n_boot, seed) if resamples is None else resamples
    reps = image_replicates(y, s, idx)
    est = _image_values(y, s)
    return {m: interval(est[k], reps[m], level) for k, m in enumerate(IMAGE_METRICS)}


# ------------------------------------------------------------------------------------------ pixel level


class PixelHistograms:
    """Per-image histograms of a run's maps over its distinct float16 values (ascending bins).

    neg[i, g] / pos[i, g]: defect-free / defect pixels of image i in bin g; pro[i, g]: sum over those defect
    pixels of 1 / (size of their region); regions[i]: connected defect regions of image i (8-connectivity).
    Bins hold one distinct value each, except that runs of values without any defect pixel are merged into one
    bin: between two defect values only the FPR moves, which changes neither AUROC nor the AUPRO integral.
    """

    def __init__(self, masks, maps) -> None:
        m = np.asarray(masks).astype(bool)
        a = np.asarray(maps)
        if m.ndim != 3 or m.shape != a.shape:
            raise MetricError(f"bootstrap: masks {m.shape} and maps {a.shape} must both be [N,H,W]")
        codes, n_values = float16_codes(to_float16(a))
        codes = codes.reshape(a.shape[0], -1)
        flat_m = m.reshape(a.shape[0], -1)
        is_pos = np.zeros(n_values, bool)
        is_pos[codes[flat_m]] = True
        if not is_pos.any():
            raise MetricError("bootstrap: no defect pixel in the masks, pixel metrics are undefined")
        start = is_pos.copy()
        start[0] = True
        start[1:] |= is_pos[:-1]
        group = np.cumsum(start) - 1
        n_bins = int(group[-1]) + 1
        n = a.shape[0]
        self.neg = np.zeros((n, n_bins))
        self.pos = np.zeros((n, n_bins))
        self.pro = np.zeros((n, n_bins))
        self.regions = np.zeros(n)
        for i in range(n):
            g = group[codes[i]]
            mi = flat_m[i]
            self.neg[i] = np.bincount(g[~mi], minlength=n_bins)
            if mi.any():
                lab, k = ndimage.label(m[i], structure=_EIGHT)
                lab = lab.reshape(-1)[mi]
                self.pos[i] = np.bincount(g[mi], minlength=n_bins)
                self.pro[i] = np.bincount(g[mi], weights=1.0 / np.bincount(lab)[lab], minlength=n_bins)
                self.regions[i] = k

    def metrics(self, weights: np.ndarray, max_fpr: float) -> np.ndarray:
        """[B, 2] (AUROC, AUPRO) for image weights [B, N] (how often each image is drawn)."""
        w = np.asarray(weights, dtype=np.float64)
        neg, pos, pro = w @ self.neg, w @ self.pos, w @ self.pro
        n_neg, n_pos = neg.sum(1), pos.sum(1)
        below = np.cumsum(neg, axis=1) - neg  # defect-free pixels strictly below each bin
        auroc = np.sum(pos * (below + 0.5 * neg), axis=1) / (n_pos * n_neg)
        # Descending thresholds: FPR and PRO of `score >= bin value`, from (0, 0) to the official end (1, 1).
        fpr = np.cumsum(neg[:, ::-1], axis=1) / n_neg[:, None]
        pr = np.minimum(np.cumsum(pro[:, ::-1], axis=1) / (w @ self.regions)[:, None], 1.0)
        aupro = np.empty(w.shape[0])
        for b in range(w.shape[0]):
            x = np.concatenate([[0.0], fpr[b], [1.0]])
            yv = np.concatenate([[0.0], pr[b], [1.0]])
            aupro[b] = trapezoid_to(x, yv, max_fpr) / max_fpr
        return np.stack([auroc, aupro], axis=1)


def float16_codes(a: np.ndarray) -> tuple[np.ndarray, int]:
    """(rank of each value among the distinct values of `a`, number of distinct values) for float16 input,
    without sorting: the bit patterns are mapped to order-preserving 16-bit keys and ranked with a table."""
    bits = (a.reshape(-1) + np.float16(0)).view(np.uint16)  # + 0 turns -0 into +0, so equal values share a key
    key = np.where(bits & 0x8000, ~bits, bits | 0x8000).astype(np.uint16)
    present = np.bincount(key, minlength=1 << 16) > 0
    rank = np.cumsum(present) - 1
    return rank[key], int(present.sum())


def to_float16(maps: np.ndarray) -> np.ndarray:
    """Maps as float16 (as `ad.rundir.maps_store` saves them): scaled by a power of two into float16's range
    when needed, which keeps every comparison between pixels (so AUROC/AUPRO) except float16 rounding ties."""
    a = np.asarray(maps)
    if a.dtype == np.float16:
        return a
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise MetricError("bootstrap: maps contain NaN or inf")
    peak = float(np.abs(a).max()) if a.size else 0.0
    if peak > 0:
        a = a * 2.0 ** -np.ceil(np.log2(peak))  # into [-1, 1]: float16 keeps ~3 significant digits
    return a.astype(np.float16)


def resample_weights(resamples: np.ndarray, n_images: int) -> np.ndarray:
    """[B, N] draw counts of each image in each replicate."""
    b = resamples.shape[0]
    flat = (np.arange(b)[:, None] * n_images + resamples).reshape(-1)
    return np.bincount(flat, minlength=b * n_images).reshape(b, n_images).astype(np.float64)


def pixel_replicates(hist: PixelHistograms, resamples: np.ndarray, max_fpr: float = 0.3) -> Dict[str, np.ndarray]:
    out = np.concatenate([hist.metrics(resample_weights(resamples[i:i + _CHUNK], hist.neg.shape[0]), max_fpr)
                          for i in range(0, resamples.shape[0], _CHUNK)])
    return {m: out[:, k] for k, m in enumerate(PIXEL_METRICS)}


def bootstrap_pixel(labels, masks, maps, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                    max_fpr: float = 0.3, resamples: Optional[np.ndarray] = None) -> Dict[str, Interval]:
    """{auroc, aupro: Interval} from one run's anomaly maps (float16 precision) and ground-truth masks."""
    y = _labels(labels)
    hist = PixelHistograms(masks, maps)
    if hist.neg.shape[0] != y.size:
        raise MetricError(f"bootstrap: {y.size} labels but {hist.neg.shape[0]} maps")
    idx = stratified_resamples(y, n_boot, seed) if resamples is None else resamples
    reps = pixel_replicates(hist, idx, max_fpr)
    est = hist.metrics(np.ones((1, y.size)), max_fpr)[0]
    return {m: interval(est[k], reps[m], level) for k, m in enumerate(PIXEL_METRICS)}


def paired_bootstrap(estimate_a: float, replicates_a: np.ndarray, estimate_b: float, replicates_b: np.ndarray,
                     level: float = 0.95) -> Paired:
    """a - b from replicates drawn with the SAME resamples (same labels, seed and n_boot) for both runs.

    p is the two-sided percentile p-value of 'no difference': twice the smaller share of replicate
    differences on either side of 0, with the usual +1 correction so it is never 0.
    """
    d = np.asarray(replicates_a, dtype=np.float64) - np.asarray(replicates_b, dtype=np.float64)
    if d.size == 0:
        raise MetricError("paired_bootstrap: no replicates")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(d, [tail, 100.0 - tail])
    below = (np.count_nonzero(d <= 0) + 1) / (d.size + 1)
    above = (np.count_nonzero(d >= 0) + 1) / (d.size + 1)
    return Paired(float(estimate_a - estimate_b), float(low), float(high), float(min(1.0, 2 * min(below, above))))
