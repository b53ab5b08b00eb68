"""sPRO (saturated per-region overlap) and its area under the FPR curve, as in the MVTec LOCO AD evaluation.

The definitions, read from the official `mvtec_loco_ad_evaluation` code (`src/image.py`, `src/metrics.py`,
`src/util.py`) and the LOCO paper (Bergmann et al., IJCV 2022):

* a **defect** is one ground-truth PNG of an image (`ground_truth/<type>/<id>/000.png`, `001.png`, ...). It is
  never split into connected parts; several defects of one image may overlap;
* each defect has a **saturation area** s from its `defects_config.json` entry (selected by the PNG's pixel
  value): `int(t * area)` when the threshold t is relative, `min(t, area)` when it is absolute;
* at an anomaly threshold, sPRO of a defect = min(TP / s, 1), TP = its pixels flagged anomalous; the curve's y
  value is the mean sPRO over every defect of every image of the subset;
* FPR = flagged pixels that lie in no defect of their image, over all such pixels of every image of the subset
  (defect-free images included);
* the curve runs from (0, 0) (threshold above every score) to (1, 1) (below every score); the area up to an FPR
  limit is taken with the trapezoid rule, the y value at the limit interpolated linearly, and divided by the
  limit (`get_auc_for_max_fpr(..., scale_to_one=True)`). LOCO reports the limits 0.01, 0.05, 0.1, 0.3 and 1.0.

The official code evaluates the curve at thresholds it refines until neighbouring points are close
(`MetricsAggregator.run(curve_max_distance)`) and flags `score > threshold`. The binary maps reachable that way
are exactly {score >= v} for the distinct scores v, so the polyline through *every* such state — what is
computed here, exactly, with one sort (see `_curve.py`) — is the limit the official refinement converges to; the
official value differs from it only by its sampling (tests compare against a reference that evaluates every
distinct score the official way).

Undefined cases raise `UndefinedMetricError`: no defect at all, no defect-free pixel, non-finite scores, or a
defect whose saturation area is 0 (a relative threshold times a tiny area rounds down to 0: the official code
then divides 0 by 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Sequence

import numpy as np

from ad.metrics._checks import MetricError, UndefinedMetricError, as_maps, check_finite
from ad.metrics._curve import RankCounts, trapezoid_to
from ad.metrics._pixel import check_max_fpr

#: The FPR limits the MVTec LOCO evaluation reports AUC-sPRO at.
LOCO_FPR_LIMITS = (0.01, 0.05, 0.1, 0.3, 1.0)


@dataclass(frozen=True)
class SaturationRule:
    """One `defects_config.json` entry: `relative` thresholds are a fraction of the defect's area (0, 1],
    absolute ones a pixel count."""

    name: str
    pixel_value: int
    threshold: float
    relative: bool

    def area(self, defect_area: int) -> int:
        """The saturation area of a defect of `defect_area` pixels (the official rounding: int(), not round())."""
        if self.relative:
            return int(self.threshold * defect_area)
        return int(min(self.threshold, defect_area))


@dataclass(frozen=True)
class Defect:
    """One ground-truth defect: the image it belongs to (index into the maps), its pixels, its saturation area."""

    image: int
    mask: np.ndarray  # bool [H, W]
    saturation: int


def _check_defects(defects: Sequence[Defect], maps: np.ndarray, fn: str) -> None:
    n, h, w = maps.shape
    for k, d in enumerate(defects):
        if not 0 <= int(d.image) < n:
            raise MetricError(f"{fn}: defect {k} refers to image {d.image}, but there are {n} maps")
        if tuple(np.shape(d.mask)) != (h, w):
            raise MetricError(f"{fn}: defect {k} mask is {tuple(np.shape(d.mask))}, its map is {(h, w)}; "
                              "resize the masks to the map resolution")
        area = int(np.count_nonzero(d.mask))
        if area == 0:
            raise MetricError(f"{fn}: defect {k} (image {d.image}) has no pixel; every ground-truth PNG must mark "
                              "its defect")
        if d.saturation <= 0:
            raise UndefinedMetricError(
                f"{fn}: defect {k} (image {d.image}, {area} px) has saturation area {d.saturation}; sPRO divides by "
                "it (a relative threshold times a tiny area rounds down to 0)")


def spro_counts(maps: Any, defects: Sequence[Defect], fn: str = "spro") -> RankCounts:
    """TP/FP counts and the summed-sPRO curve at every distinct defect score, from one sort.

    Each defect pixel enters once per defect it belongs to, weighted 1/s for the first s pixels of its defect
    in descending score order and 0 after (so the running sum at any threshold is min(TP, s)/s); the negatives
    are the pixels in no defect of their image.
    """
    a = as_maps(maps, f"{fn}: maps", binary=False)
    check_finite(a, f"{fn}: maps")
    if not defects:
        raise UndefinedMetricError(f"{fn}: no defect in these images; sPRO needs at least one annotated defect")
    _check_defects(defects, a, fn)
    union = np.zeros(a.shape, dtype=bool)
    pos_scores: List[np.ndarray] = []
    pos_weights: List[np.ndarray] = []
    for d in defects:
        mask = np.asarray(d.mask, dtype=bool)
        union[int(d.image)] |= mask
        s = np.sort(a[int(d.image)][mask])[::-1]
        w = np.zeros(s.size, dtype=np.float64)
        w[: int(d.saturation)] = 1.0 / int(d.saturation)
        pos_scores.append(s)
        pos_weights.append(w)
    neg = a[~union]
    if neg.size == 0:
        raise UndefinedMetricError(f"{fn}: every pixel lies in a defect; the FPR needs defect-free pixels")
    pos = np.concatenate(pos_scores)
    scores = np.concatenate([neg, pos.astype(neg.dtype, copy=False)])
    is_pos = np.zeros(scores.size, dtype=bool)
    is_pos[neg.size:] = True
    return RankCounts(scores, is_pos, np.concatenate(pos_weights), n_regions=len(defects))


def spro_curve(maps: Any, defects: Sequence[Defect]) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, mean sPRO) polyline from (0, 0) to (1, 1) (for plots; `au_spro` integrates it)."""
    return spro_counts(maps, defects, "spro_curve").pro_curve()


def au_spro(maps: Any, defects: Sequence[Defect], max_fprs: Iterable[float] = LOCO_FPR_LIMITS) -> Dict[float, float]:
    """{limit: area under the sPRO curve up to the FPR limit, divided by the limit} (official LOCO AUC-sPRO)."""
    limits = [check_max_fpr(m) for m in max_fprs]
    x, y = spro_counts(maps, defects, "au_spro").pro_curve()
    return {m: trapezoid_to(x, y, m) / m for m in limits}


def defects_from_channels(channels: Sequence[Sequence[np.ndarray]], rules: Sequence[Sequence[SaturationRule]]
                          ) -> List[Defect]:
    """`Defect`s from per-image lists of masks and their rules (image i, channel j -> rules[i][j])."""
    out: List[Defect] = []
    for i, (masks, image_rules) in enumerate(zip(channels, rules)):
        if len(masks) != len(image_rules):
            raise MetricError(f"defects_from_channels: image {i} has {len(masks)} masks but {len(image_rules)} rules")
        for m, rule in zip(masks, image_rules):
            m = np.asarray(m, dtype=bool)
            out.append(Defect(i, m, rule.area(int(np.count_nonzero(m)))))
    return out
