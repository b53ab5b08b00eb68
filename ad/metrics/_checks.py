"""Input conversion and validation shared by all metrics.

Every public metric accepts numpy arrays, torch tensors (any device) or plain sequences. Scores keep their
floating dtype (float16 is widened to float32 exactly) because casting float64 scores to float32 could merge
distinct values into ties and change the metric.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ad.errors import ADError


class MetricError(ADError, ValueError):
    """Inputs a metric cannot use (wrong shape, non-binary labels, bad argument). One-line message."""


class UndefinedMetricError(MetricError):
    """The metric is undefined for these inputs (one class only, no defect pixel, NaN/inf scores).

    `evaluate` turns exactly this error into an explicit `None` plus a note; everything else propagates.
    """


def to_numpy(x: Any, name: str) -> np.ndarray:
    if x is None:
        raise MetricError(f"{name} is None; pass an array")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16; float32 holds it exactly
            x = x.float()
        x = x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise MetricError(f"{name} cannot be converted to an array ({exc.__class__.__name__})") from None


def as_scores(x: Any, name: str) -> np.ndarray:
    """Real-valued scores; float16 -> float32 and integers/bools -> float64 (all exact)."""
    a = to_numpy(x, name)
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    elif a.dtype.kind in "biu":
        a = a.astype(np.float64)
    elif a.dtype.kind != "f":
        raise MetricError(f"{name} must be real numbers, got dtype {a.dtype}")
    return a


def as_binary(x: Any, name: str) -> np.ndarray:
    """Ground truth as bool; only {0, 1} (or bool) is accepted so soft or 0/255 masks fail loudly."""
    a = to_numpy(x, name)
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "biuf":
        raise MetricError(f"{name} must be 0/1 or bool, got dtype {a.dtype}")
    pos = a == 1
    if not np.logical_or(pos, a == 0).all():
        bad = a[~np.logical_or(pos, a == 0)].ravel()[:3].tolist()
        raise MetricError(f"{name} must contain only 0 and 1 (found e.g. {bad}); binarise it first, e.g. mask > 0.5")
    return pos


def check_finite(a: np.ndarray, name: str) -> None:
    if not np.isfinite(a).all():
        n_nan = int(np.isnan(a).sum())
        n_inf = int(np.isinf(a).sum())
        raise UndefinedMetricError(
            f"{name} contain {n_nan} NaN and {n_inf} inf values; the model produced non-finite scores"
        )


def image_inputs(labels: Any, scores: Any, fn: str) -> tuple[np.ndarray, np.ndarray]:
    y = as_binary(labels, f"{fn}: labels")
    s = as_scores(scores, f"{fn}: scores")
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise MetricError(
            f"{fn}: labels and scores must be 1-D of equal length, got shapes {y.shape} and {s.shape}"
        )
    if y.size == 0:
        raise MetricError(f"{fn}: no samples")
    check_finite(s, f"{fn}: scores")
    return y, s


def require_both_classes(y: np.ndarray, fn: str, what: str = "images") -> None:
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        only = "anomalous" if n_pos else "normal"
        raise UndefinedMetricError(
            f"{fn}: all {y.size} {what} are {only}; the metric needs both normal and anomalous {what}"
        )


def as_maps(x: Any, name: str, binary: bool) -> np.ndarray:
    """[N,H,W] (a singleton channel [N,1,H,W] is squeezed)."""
    a = as_binary(x, name) if binary else as_scores(x, name)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise MetricError(f"{name} must be [N,H,W] (or [N,1,H,W]), got shape {tuple(a.shape)}")
    return a


def pixel_inputs(masks: Any, maps: Any, fn: str) -> tuple[np.ndarray, np.ndarray]:
    m = as_maps(masks, f"{fn}: masks", binary=True)
    s = as_maps(maps, f"{fn}: maps", binary=False)
    if m.shape != s.shape:
        raise MetricError(
            f"{fn}: masks {tuple(m.shape)} and maps {tuple(s.shape)} differ; resize the maps to the mask resolution"
        )
    if m.size == 0:
        raise MetricError(f"{fn}: no pixels")
    check_finite(s, f"{fn}: maps")
    n_pos = int(np.count_nonzero(m))
    if n_pos == 0:
        raise UndefinedMetricError(f"{fn}: masks contain no defect pixel; pixel metrics need at least one defect")
    if n_pos == m.size:
        raise UndefinedMetricError(f"{fn}: every pixel is a defect pixel; pixel metrics need normal pixels too")
    return m, s


def check_threshold(t: Any, name: str) -> float:
    try:
        v = float(t)
    except (TypeError, ValueError):
        raise MetricError(f"{name} must be a number, got {t!r}") from None
    if not np.isfinite(v):
        raise MetricError(f"{name} must be finite, got {v}")
    return v
