"""SegF1: pixel F1 at a threshold fixed on normal validation images only (MVTec AD 2's thresholded metric).

MVTec AD 2 (Heckler-Kram et al., 2025) scores binarised anomaly maps. The threshold may come from the
anomaly-free validation images only; the official submission checker proposes the baseline rule
`np.mean(anomaly_scores_val) + 3 * np.std(anomaly_scores_val)` over the validation images' pixel scores
(numpy's population standard deviation). SegF1 pools TP, FP and FN over all pixels of all test images (one
F1, not a mean of per-image F1s), so large defects and images weigh by their pixels.

A pixel is anomalous iff `score >= threshold` (the project's convention; the thresholded PNGs written for the
evaluation server use the same rule, so local and server numbers agree).
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from ad.metrics._checks import MetricError, UndefinedMetricError, as_maps, as_scores, check_finite, check_threshold


def segf1_threshold(val_maps: Any, k: float = 3.0) -> float:
    """mean + k·std (population std, float64) of every pixel score of the validation normals' maps."""
    a = as_scores(val_maps, "segf1_threshold: val_maps")
    if a.size == 0:
        raise UndefinedMetricError("segf1_threshold: no validation pixels; SegF1's threshold needs normal "
                                   "validation images")
    check_finite(a, "segf1_threshold: val_maps")
    flat = a.reshape(-1).astype(np.float64)
    mean = float(flat.mean())
    std = float(np.sqrt(np.mean((flat - mean) ** 2)))  # two-pass, as np.std: no cancellation on large maps
    return mean + float(k) * std


def segf1(masks: Any, maps: Any, threshold: float) -> Dict[str, float]:
    """Pooled pixel {f1, precision, recall, threshold, tp, fp, fn} at `threshold` over all test pixels.

    Undefined (raises `UndefinedMetricError`) when there is no defect pixel and nothing is flagged (0/0). With
    defects but nothing flagged, F1 is 0 and precision undefined (reported as None)."""
    t = check_threshold(threshold, "segf1: threshold")
    m = as_maps(masks, "segf1: masks", binary=True)
    a = as_maps(maps, "segf1: maps", binary=False)
    if m.shape != a.shape:
        raise MetricError(f"segf1: masks {tuple(m.shape)} and maps {tuple(a.shape)} differ; resize the maps to "
                          "the mask resolution")
    check_finite(a, "segf1: maps")
    flagged = a >= t
    tp = int(np.count_nonzero(flagged & m))
    fp = int(np.count_nonzero(flagged)) - tp
    fn = int(np.count_nonzero(m)) - tp
    if tp + fp + fn == 0:
        raise UndefinedMetricError("segf1: no defect pixel and no flagged pixel; F1 is 0/0")
    return {
        "f1": 2.0 * tp / (2 * tp + fp + fn),
        "precision": tp / (tp + fp) if tp + fp else None,  # type: ignore[dict-item]
        "recall": tp / (tp + fn) if tp + fn else None,  # type: ignore[dict-item]
        "threshold": t,
        "tp": tp, "fp": fp, "fn": fn,
    }
