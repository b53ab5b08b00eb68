"""Exact anomaly-detection metrics, thresholds and score normalisation (pure functions, numpy or torch input).

Argument order follows sklearn: ground truth first (labels [N] / masks [N,H,W] in {0,1}), scores second
(scores [N] / maps [N,H,W]). A sample is predicted anomalous iff ``score >= threshold``.

Threshold-free metrics match sklearn (`roc_auc_score`, `average_precision_score`, F1 from
`precision_recall_curve`) and the official MVTec AD AUPRO, with exact tie handling. All of them come from one
sort per class (see `_curve.py`), so a full category's pixel metrics take well under a second.

Thresholds and normalisation are fitted on validation normals only (`fit_threshold`, `fit_normalization`,
`fit_calibration`, which take no labels); `evaluate` only applies them.

Undefined inputs (one class only, no defect pixel, NaN/inf scores) raise `UndefinedMetricError`; `evaluate`
reports them as None with a reason in ``notes``. Malformed inputs raise `MetricError` (a ValueError).
"""
from ad.metrics._checks import MetricError, UndefinedMetricError
from ad.metrics._curve import RankCounts, trapezoid_to
from ad.metrics._evaluate import TEST_SET_DIAGNOSTICS, evaluate
from ad.metrics._image import f1_max, image_ap, image_auroc, per_defect_auroc, precision_recall_f1
from ad.metrics._pixel import aupro, pixel_ap, pixel_auroc, pixel_f1_max, pro_curve
from ad.metrics._thresholds import fit_calibration, fit_normalization, fit_threshold, normalize

__all__ = [
    "MetricError",
    "UndefinedMetricError",
    "RankCounts",
    "trapezoid_to",
    "TEST_SET_DIAGNOSTICS",
    "evaluate",
    "image_auroc",
    "image_ap",
    "f1_max",
    "precision_recall_f1",
    "per_defect_auroc",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "aupro",
    "pro_curve",
    "fit_threshold",
    "fit_normalization",
    "normalize",
    "fit_calibration",
]
