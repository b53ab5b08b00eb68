"""Pixel-level metrics over all test pixels: masks [N,H,W] in {0,1} first, anomaly maps [N,H,W] second.

AUPRO follows the official MVTec AD evaluation code (mvtec_ad_evaluation, `pro_curve_util.compute_pro` and
`generic_util.trapezoid`):

* regions are the connected components of each image's ground-truth mask with **8-connectivity** (the
  official code labels with `scipy.ndimage.label(gt_map, structure=np.ones((3, 3)))`); regions never join
  across images;
* at every distinct score threshold, PRO = mean over *all regions of all images* of the fraction of the
  region's pixels scoring >= threshold, and FPR = fraction of *all* defect-free pixels (in normal and
  anomalous images) scoring >= threshold; pixels with tied scores enter the curve together;
* the curve starts at (0, 0), ends at (1, 1), is integrated with the trapezoid rule up to `max_fpr`, where the
  PRO value is linearly interpolated between the neighbouring curve points, and the area is divided by
  `max_fpr`.

The only deliberate difference: FPRs are computed in float64 (the official code casts them to float32), which
changes results by ~1e-7 at most.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
from scipy import ndimage

from ad.metrics._checks import MetricError, pixel_inputs
from ad.metrics._curve import RankCounts, trapezoid_to

# 8-connectivity inside each image, nothing across the image axis.
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True


def region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """(1 / size of its region for every defect pixel in C order, number of regions)."""
    anomalous = masks.reshape(masks.shape[0], -1).any(axis=1)
    sub = masks[anomalous]  # label only images that have a defect (saves time and memory on normal images)
    labels, n_regions = ndimage.label(sub, structure=_STRUCTURE)
    # Defect pixels of `sub` in C order are exactly the defect pixels of `masks` in C order.
    region = labels[sub]
    sizes = np.bincount(region)
    return 1.0 / sizes[region], int(n_regions)


def pixel_counts(masks: Any, maps: Any, fn: str, regions: bool = False) -> RankCounts:
    m, s = pixel_inputs(masks, maps, fn)
    flat_m = m.reshape(-1)
    flat_s = s.reshape(-1)
    if regions:
        weights, n_regions = region_weights(m)
        return RankCounts(flat_s, flat_m, weights, n_regions)
    return RankCounts(flat_s, flat_m)


def check_max_fpr(max_fpr: Any) -> float:
    try:
        v = float(max_fpr)
    except (TypeError, ValueError):
        raise MetricError(f"max_fpr must be a number in (0, 1], got {max_fpr!r}") from None
    if not 0.0 < v <= 1.0:
        raise MetricError(f"max_fpr must lie in (0, 1], got {v}; the MVTec AD standard is 0.3")
    return v


def aupro_from_counts(counts: RankCounts, max_fpr: float) -> float:
    x, y = counts.pro_curve()
    return trapezoid_to(x, y, max_fpr) / max_fpr


def pixel_auroc(masks: Any, maps: Any) -> float:
    """ROC AUC over all pixels (sklearn's `roc_auc_score` on the flattened arrays)."""
    return pixel_counts(masks, maps, "pixel_auroc").auroc()


def pixel_ap(masks: Any, maps: Any) -> float:
    """Average precision over all pixels (sklearn's `average_precision_score` on the flattened arrays)."""
    return pixel_counts(masks, maps, "pixel_ap").average_precision()


def pixel_f1_max(masks: Any, maps: Any) -> Dict[str, float]:
    """Best pixel F1 over all thresholds: {f1, threshold, precision, recall} (a test-set diagnostic)."""
    return pixel_counts(masks, maps, "pixel_f1_max").f1_max()


def aupro(masks: Any, maps: Any, max_fpr: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to `max_fpr`, divided by `max_fpr` (official MVTec AD)."""
    max_fpr = check_max_fpr(max_fpr)
    return aupro_from_counts(pixel_counts(masks, maps, "aupro", regions=True), max_fpr)


def pro_curve(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) points of the PRO curve (for plotting); AUPRO integrates it up to max_fpr."""
    return pixel_counts(masks, maps, "pro_curve", regions=True).pro_curve()
