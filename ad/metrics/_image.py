"""Image-level metrics: labels [N] in {0,1} (1 = anomalous) first, scores [N] second."""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

from ad.metrics._checks import MetricError, UndefinedMetricError, check_threshold, image_inputs, require_both_classes
from ad.metrics._curve import RankCounts


def image_counts(labels: Any, scores: Any, fn: str) -> RankCounts:
    y, s = image_inputs(labels, scores, fn)
    require_both_classes(y, fn)
    return RankCounts(s, y)


def image_auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve; equals sklearn's `roc_auc_score` (ties count half)."""
    return image_counts(labels, scores, "image_auroc").auroc()


def image_ap(labels: Any, scores: Any) -> float:
    """Average precision, sklearn's step-wise definition (`average_precision_score`), no interpolation."""
    return image_counts(labels, scores, "image_ap").average_precision()


def f1_max(labels: Any, scores: Any) -> Dict[str, float]:
    """Best F1 over all thresholds: {f1, threshold, precision, recall}; predicted anomalous iff score >= threshold.

    The threshold is chosen on the data passed in, so on test data it is a diagnostic, never a deployable
    threshold. Among equally good thresholds the lowest is returned.
    """
    return image_counts(labels, scores, "f1_max").f1_max()


def precision_recall_f1(labels: Any, scores: Any, threshold: float) -> Dict[str, float]:
    """Precision, recall and F1 of the rule `score >= threshold`, plus the confusion counts.

    Precision is 0.0 when nothing is predicted anomalous (sklearn's zero_division=0); recall needs at least one
    anomalous sample, otherwise UndefinedMetricError.
    """
    fn = "precision_recall_f1"
    y, s = image_inputs(labels, scores, fn)
    return confusion_at(y, s, check_threshold(threshold, f"{fn}: threshold"), fn)


def confusion_at(y: np.ndarray, s: np.ndarray, threshold: float, fn: str) -> Dict[str, float]:
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        raise UndefinedMetricError(f"{fn}: no anomalous sample, so recall is undefined")
    # Compare against a float64 threshold: a python float would be rounded to the scores' float32 under NEP 50.
    pred = np.greater_equal(s, np.float64(threshold))
    tp = int(np.count_nonzero(pred & y))
    fp = int(np.count_nonzero(pred)) - tp
    fn_ = n_pos - tp
    tn = int(y.size) - tp - fp - fn_
    return {
        "threshold": float(threshold),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / n_pos,
        "f1": 2 * tp / (2 * tp + fp + fn_),
        "tp": tp,
        "fp": fp,
        "fn": fn_,
        "tn": tn,
    }


def per_defect_auroc(labels: Any, scores: Any, defect_types: Sequence[str]) -> Dict[str, float]:
    """{defect type: AUROC of that type's anomalous images against all normal (label 0) test images}.

    Types are taken from the anomalous images only (the normal images' type, e.g. "good", is not a defect).
    """
    fn = "per_defect_auroc"
    y, s = image_inputs(labels, scores, fn)
    if isinstance(defect_types, str) or len(defect_types) != y.size:
        got = "a string" if isinstance(defect_types, str) else f"{len(defect_types)} entries"
        raise MetricError(f"{fn}: defect_types must be a sequence of {y.size} names, got {got}")
    types = np.asarray([str(t) for t in defect_types])
    if not np.any(~y):
        raise UndefinedMetricError(f"{fn}: no normal test image to compare the defect types against")
    if not np.any(y):
        raise UndefinedMetricError(f"{fn}: no anomalous test image")
    out = {}
    for d in sorted(set(types[y].tolist())):
        sel = ~y | (types == d)
        out[str(d)] = RankCounts(s[sel], y[sel]).auroc()
    return out
