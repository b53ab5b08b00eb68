"""Calibrate on validation normals, then evaluate test predictions per category (pure functions of arrays).

Thresholds and score normalisation come from held-out normals only: one global threshold over all of them
(the deployable setting, also for unified runs) and, for unified runs, one per category reported beside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ad import metrics
from ad.rundir.records import (AtThreshold, CategoryRecord, Counts, ImageMetrics, PixelMetrics, Thresholds, mad)
from ad.engine.scoring import PredictionSet
from ad.engine.settings import EvalSettings
from ad.errors import ADError


@dataclass
class Calibration:
    """What a run stores from its held-out normals (in model.pt) and reports (in results.json)."""

    image_threshold: Optional[float]  # None: no held-out normals at all (threshold-free metrics only)
    pixel_threshold: Optional[float]
    image_normalization: Optional[Dict[str, float]]
    pixel_normalization: Optional[Dict[str, float]]
    n_val: int
    source: str  # where the normals came from
    notes: List[str] = field(default_factory=list)
    per_category: Dict[str, "Calibration"] = field(default_factory=dict)

    def thresholds_record(self, settings: EvalSettings) -> Thresholds:
        return Thresholds(image=self.image_threshold, pixel=self.pixel_threshold, method=settings.threshold,
                          k=settings.k, quantile=settings.quantile, pixel_pool=settings.pixel_pool,
                          source=self.source, fitted_on=f"{self.n_val} {self.source}" if self.n_val else self.source)


def fit_calibration(scores: np.ndarray, maps: Optional[np.ndarray], settings: EvalSettings, source: str,
                    what: str = "") -> Calibration:
    cal = metrics.fit_calibration(scores, maps, method=settings.threshold, k=settings.k,
                                  quantile=settings.quantile, pool=settings.pixel_pool)
    if cal["image_threshold"] is None:
        raise ADError(f"cannot fit a threshold on the {len(scores)} {source}{what} (" + "; ".join(cal["notes"])
                      + "); raise dataset.val_fraction or check the model's scores")
    return Calibration(cal["image_threshold"], cal["pixel_threshold"], cal["image_normalization"],
                       cal["pixel_normalization"], int(cal["n_val"]), source, list(cal["notes"]))


def calibrate(val: Optional[PredictionSet], settings: EvalSettings, categories: Sequence[str],
              source: str = "validation normals") -> Calibration:
    """The global calibration over every held-out normal, plus per-category ones when there are several.
    Without any held-out normal (`val` None: a single training image) there is no honest threshold: decisions
    are left out and said so, threshold-free metrics are still reported."""
    if val is None or len(val.scores) == 0:
        return Calibration(None, None, None, None, 0, "no held-out normals", [
            "no threshold: no held-out normal image exists (a single training image cannot be both fitted on and "
            "held out); image/pixel decisions (precision, recall, F1, is_anomalous) are null, threshold-free "
            "metrics are reported"])
    cal = fit_calibration(val.scores, val.maps, settings, source)
    if len(categories) > 1:
        cats = np.asarray(val.categories)
        for c in categories:
            keep = cats == c
            if keep.sum() == 0:
                cal.notes.append(f"{c}: no held-out normals, no per-category threshold")
                continue
            try:
                cal.per_category[c] = fit_calibration(val.scores[keep], val.maps[keep], settings, source, f" of {c}")
            except ADError as exc:
                cal.notes.append(f"{c}: {exc}")
    return cal


def evaluate_category(test: PredictionSet, cal: Calibration, settings: EvalSettings, has_masks: bool,
                      category_cal: Optional[Calibration] = None) -> CategoryRecord:
    """Every test metric of one category's predictions at the global thresholds (and its own beside them)."""
    use_pixels = bool(settings.pixel_metrics) and has_masks and bool(test.has_mask[test.labels == 1].all())
    scored = metrics.evaluate(
        test.labels, test.scores, test.defect_types,
        masks=test.masks if use_pixels else None, maps=test.maps if use_pixels else None,
        image_threshold=cal.image_threshold, pixel_threshold=cal.pixel_threshold, max_fpr=settings.aupro_max_fpr,
        has_mask=test.has_mask if use_pixels else None,
    )
    notes = list(scored.get("notes", []))
    if not use_pixels and settings.pixel_metrics:
        notes.insert(0, "pixel metrics unavailable: no ground-truth masks for this category")
    image = ImageMetrics(**scored["image"])
    pixel = PixelMetrics(**scored["pixel"]) if scored["pixel"] is not None else None
    rec = CategoryRecord(
        counts=Counts(test=len(test.scores), test_anomalous=int(np.sum(test.labels == 1))),
        image=image, pixel=pixel, per_defect=scored["per_defect"], mad=mad(image, pixel), notes=notes,
    )
    if category_cal is not None and category_cal.image_threshold is not None:
        rec.image_at_category_threshold = _at(test.labels, test.scores, category_cal.image_threshold)
        if use_pixels and category_cal.pixel_threshold is not None:
            rec.pixel_at_category_threshold = _at(test.masks.reshape(-1), test.maps.reshape(-1), category_cal.pixel_threshold)
    return rec


def _at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> AtThreshold:
    try:
        r = metrics.precision_recall_f1(labels, scores, threshold)
    except metrics.UndefinedMetricError:
        return AtThreshold(threshold=threshold)
    return AtThreshold(threshold=threshold, precision=r["precision"], recall=r["recall"], f1=r["f1"])


def mean_over_categories(records: Dict[str, CategoryRecord]) -> tuple[ImageMetrics, Optional[PixelMetrics]]:
    """Each metric averaged over categories (categories weigh the same, as in the papers' tables). A metric
    missing in any category is None in the mean: never a mean over a subset labelled as the full one."""
    def mean_of(section: str, cls: Any, skip: Sequence[str]) -> Any:
        items = [getattr(r, section) for r in records.values()]
        if any(i is None for i in items):
            return None
        out = {}
        for name in cls.__dataclass_fields__:
            values = [getattr(i, name) for i in items]
            out[name] = None if name in skip or any(v is None for v in values) else float(np.mean(values))
        return cls(**out)

    # F1-optimal thresholds are per-category test diagnostics: their mean means nothing.
    image = mean_of("image", ImageMetrics, ("f1_max_threshold",))
    pixel = mean_of("pixel", PixelMetrics, ("f1_max_threshold",))
    return image, pixel
