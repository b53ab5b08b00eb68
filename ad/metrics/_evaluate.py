"""`evaluate`: every test metric of a run in one JSON-able dict.

Thresholds are inputs only: this module never fits one (it does not import the fitting code), so the
precision/recall/F1 it reports are those of thresholds chosen on validation normals. The F1-optimal
thresholds it reports are optimised on the test set and are listed in `test_set_diagnostics`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ad.metrics._checks import (
    MetricError,
    UndefinedMetricError,
    as_binary,
    as_maps,
    as_scores,
    check_finite,
    check_threshold,
    require_both_classes,
)
from ad.metrics._curve import RankCounts
from ad.metrics._image import confusion_at, per_defect_auroc
from ad.metrics._pixel import aupro_from_counts, check_max_fpr, pixel_counts

TEST_SET_DIAGNOSTICS = (
    "image.f1_max",
    "image.f1_max_threshold",
    "pixel.f1_max",
    "pixel.f1_max_threshold",
)
_DIAGNOSTIC_NOTE = (
    "f1_max and f1_max_threshold are optimised on the test set: diagnostics only, never a deployable threshold"
)


def _guard(notes: List[str], section: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except UndefinedMetricError as exc:
        notes.append(f"{section}: {exc}")
        return None


# ~70 lines, most of them the docstring and input checks: the three sections are already helpers
# (_image_section, _pixel_inputs, _pixel_section); what stays is the order they run in and the shared notes.
def evaluate(
    labels: Any,
    scores: Any,
    defect_types: Optional[Sequence[str]],
    masks: Any = None,
    maps: Any = None,
    image_threshold: Optional[float] = None,
    pixel_threshold: Optional[float] = None,
    max_fpr: float = 0.3,
    has_mask: Any = None,
) -> Dict[str, Any]:
    """All test metrics. Shapes: labels/scores [N], defect_types N names, masks/maps [N,H,W] (same size).

    Returns {"image": {auroc, ap, f1_max, f1_max_threshold, threshold, precision, recall, f1},
    "pixel": None | {auroc, aupro, ap, f1_max, f1_max_threshold, threshold, precision, recall, f1, max_fpr},
    "per_defect": None | {type: auroc}, "counts": {...}, "test_set_diagnostics": [...], "notes": [...]}.
    A metric that is undefined for these inputs (one class only, no defect pixel, NaN/inf scores, no
    threshold given) is None and `notes` says why. Malformed inputs (shapes, non-binary labels) raise
    MetricError. `has_mask` ([N] bool, optional) excludes images without pixel annotation from pixel metrics.
    Thresholds are applied as `score >= threshold` and must be on the scale of `scores` / `maps`.
    """
    notes: List[str] = []
    y = as_binary(labels, "evaluate: labels")
    s = as_scores(scores, "evaluate: scores")
    if y.ndim != 1 or s.shape != y.shape:
        raise MetricError(f"evaluate: labels and scores must be 1-D of equal length, got {y.shape} and {s.shape}")
    if y.size == 0:
        raise MetricError("evaluate: no test images")
    max_fpr = check_max_fpr(max_fpr)
    if image_threshold is not None:
        image_threshold = check_threshold(image_threshold, "evaluate: image_threshold")
    if pixel_threshold is not None:
        pixel_threshold = check_threshold(pixel_threshold, "evaluate: pixel_threshold")
    n_anom = int(np.count_nonzero(y))
    counts: Dict[str, Any] = {"images": int(y.size), "anomalous_images": n_anom}

    image = _image_section(y, s, image_threshold, notes)

    # ---- per defect type
    per_defect = None
    if defect_types is None:
        notes.append("per_defect: no defect_types given")
    else:
        per_defect = _guard(notes, "per_defect", lambda: per_defect_auroc(y, s, defect_types))

    # ---- pixel level: one RankCounts (with region weights) shared by AUROC / AP / F1-max / AUPRO
    pixel = None
    if masks is None:
        notes.append("pixel: no ground-truth masks, pixel metrics are null")
    elif maps is None:
        raise MetricError("evaluate: masks were given without maps; pass the models' anomaly maps too")
    else:
        m, a = _pixel_inputs(y, masks, maps, has_mask, notes)
        if m.shape[0] == 0:
            notes.append("pixel: no image has a pixel annotation, pixel metrics are null")
        else:
            pixel = _pixel_section(m, a, pixel_threshold, max_fpr, notes, counts)

    if image["f1_max"] is not None or (pixel or {}).get("f1_max") is not None:
        notes.append(_DIAGNOSTIC_NOTE)
    return {
        "image": image,
        "pixel": pixel,
        "per_defect": per_defect,
        "counts": counts,
        "test_set_diagnostics": list(TEST_SET_DIAGNOSTICS),
        "notes": list(dict.fromkeys(notes)),  # one reason can null several metrics: say it once
    }


def _image_section(y: np.ndarray, s: np.ndarray, image_threshold: Optional[float], notes: List[str]) -> Dict[str, Any]:
    """Image metrics: one RankCounts shared by AUROC / AP / F1-max, then decisions at the given threshold."""
    image: Dict[str, Any] = dict.fromkeys(
        ("auroc", "ap", "f1_max", "f1_max_threshold", "threshold", "precision", "recall", "f1")
    )

    def _image_curve() -> Dict[str, Any]:
        check_finite(s, "image scores")
        require_both_classes(y, "image metrics")
        rc = RankCounts(s, y)
        best = rc.f1_max()
        return {"auroc": rc.auroc(), "ap": rc.average_precision(), "f1_max": best["f1"],
                "f1_max_threshold": best["threshold"]}

    image.update(_guard(notes, "image", _image_curve) or {})
    if image_threshold is None:
        notes.append("image: no image_threshold given, so precision/recall/f1 are null (fit one on validation normals)")
        return image
    image["threshold"] = image_threshold

    def _image_at() -> Dict[str, Any]:
        check_finite(s, "image scores")
        c = confusion_at(y, s, image_threshold, "image metrics at threshold")
        return {key: c[key] for key in ("precision", "recall", "f1")}

    image.update(_guard(notes, "image", _image_at) or {})
    return image


def _pixel_inputs(y: np.ndarray, masks: Any, maps: Any, has_mask: Any, notes: List[str]) -> tuple:
    """Checked masks/maps of the images that have a pixel annotation."""
    m = as_maps(masks, "evaluate: masks", binary=True)
    a = as_maps(maps, "evaluate: maps", binary=False)
    if m.shape != a.shape or m.shape[0] != y.size:
        raise MetricError(
            f"evaluate: masks {tuple(m.shape)} and maps {tuple(a.shape)} must both be [{y.size},H,W]; "
            "resize the maps to the mask resolution"
        )
    annotated = m.reshape(m.shape[0], -1).any(axis=1)
    normal_with_defect = int(np.count_nonzero(annotated & ~y))
    if normal_with_defect:
        raise MetricError(
            f"evaluate: {normal_with_defect} images labelled normal have defect pixels in their masks; "
            "labels and masks disagree, fix the dataset listing"
        )
    keep = np.ones_like(y)
    if has_mask is not None:
        keep = as_binary(has_mask, "evaluate: has_mask")
        if keep.shape != y.shape:
            raise MetricError(f"evaluate: has_mask must have shape {y.shape}, got {keep.shape}")
        if not keep.all():
            notes.append(f"pixel: {int((~keep).sum())} images without a pixel annotation are excluded")
            m, a = m[keep], a[keep]
    empty = int(np.count_nonzero(y & keep & ~annotated))
    if empty:
        notes.append(
            f"pixel: {empty} anomalous images have empty masks; their pixels count as defect-free "
            "(as in the official MVTec AD evaluation)"
        )
    return m, a


def _pixel_section(
    m: np.ndarray, a: np.ndarray, threshold: Optional[float], max_fpr: float, notes: List[str], counts: Dict
) -> Dict[str, Any]:
    pixel: Dict[str, Any] = dict.fromkeys(
        ("auroc", "aupro", "ap", "f1_max", "f1_max_threshold", "threshold", "precision", "recall", "f1")
    )
    pixel["max_fpr"] = max_fpr
    counts["pixels"] = int(m.size)
    counts["anomalous_pixels"] = int(np.count_nonzero(m))

    def _curves() -> Dict[str, Any]:
        rc = pixel_counts(m, a, "pixel metrics", regions=True)
        counts["regions"] = rc.n_regions
        best = rc.f1_max()
        return {"auroc": rc.auroc(), "aupro": aupro_from_counts(rc, max_fpr), "ap": rc.average_precision(),
                "f1_max": best["f1"], "f1_max_threshold": best["threshold"]}

    pixel.update(_guard(notes, "pixel", _curves) or {})
    if threshold is None:
        notes.append("pixel: no pixel_threshold given, so precision/recall/f1 are null (fit one on validation normals)")
    else:
        pixel["threshold"] = threshold

        def _at() -> Dict[str, Any]:
            check_finite(a, "pixel maps")
            c = confusion_at(m.reshape(-1), a.reshape(-1), threshold, "pixel metrics at threshold")
            return {key: c[key] for key in ("precision", "recall", "f1")}

        pixel.update(_guard(notes, "pixel", _at) or {})
    return pixel
