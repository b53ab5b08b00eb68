"""Thresholds and score normalisation fitted on **validation normals only**.

Guarantee by construction: no function here takes labels, masks or defect types, so they cannot see which
test images are anomalous; they take one array of validation scores (all assumed normal: the validation split
is carved out of the defect-free training images). `evaluate` never calls them; it only *applies* the
thresholds it is given (tests check both).

Pixel maps ([N,H,W]) are reduced before fitting by `pool`:

* ``"max"`` (default): one value per validation image, its map maximum. A pixel threshold then controls what
  an inspector sees per part: with ``quantile=0.99`` about 1 % of defect-free images show *any* pixel above
  it. Pixels of one map are strongly correlated, so a per-pixel rate (below) says little about false alarms
  per image.
* ``"all"``: every validation pixel, i.e. the threshold controls the per-pixel false-positive rate. Exact (no
  subsampling: mean/std/quantile over a few million values is cheap).

Normalisation maps the minimum validation score to 0 and the threshold to 0.5 with one affine map
``0.5 * (s - min) / (threshold - min)``; scores above the threshold continue with the same slope (2*thr - min
-> 1.0). It is not clipped by default: an increasing affine map keeps every ranking, so every metric on
normalised scores equals the metric on raw scores, and values outside [0, 1] still carry information (below
anything seen in validation / far above the threshold). Pass ``clip=True`` for display.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from ad.metrics._checks import MetricError, UndefinedMetricError, as_scores, check_threshold

THRESHOLD_METHODS = ("mean_std", "quantile")
POOLS = ("max", "all")


def _validation_values(val_scores: Any, pool: str, fn: str) -> np.ndarray:
    s = as_scores(val_scores, f"{fn}: val_scores")
    if s.ndim == 4 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim == 3:
        if pool not in POOLS:
            raise MetricError(f"{fn}: pool must be one of {POOLS}, got {pool!r}")
        s = s.reshape(s.shape[0], -1).max(axis=1) if pool == "max" else s.reshape(-1)
    elif s.ndim != 1:
        raise MetricError(
            f"{fn}: val_scores must be image scores [N] or maps [N,H,W], got shape {tuple(s.shape)}"
        )
    if s.size == 0:
        raise UndefinedMetricError(f"{fn}: no validation scores; the validation split is empty")
    if not np.isfinite(s).all():
        raise UndefinedMetricError(f"{fn}: validation scores contain NaN/inf; the model produced non-finite scores")
    return s.astype(np.float64, copy=False)


def fit_threshold(
    val_scores: Any, method: str = "mean_std", k: float = 3.0, quantile: float = 0.99, pool: str = "max"
) -> float:
    """Anomaly threshold from validation normals (predict anomalous iff score >= threshold).

    method="mean_std": mean + k * std (sample std, ddof=1; needs >= 2 values).
    method="quantile": the `quantile` of the values (numpy's default linear interpolation).
    Maps [N,H,W] are pooled first (see module docs; `pool` is ignored for image scores [N]).
    """
    fn = "fit_threshold"
    if method not in THRESHOLD_METHODS:
        raise MetricError(f"{fn}: method must be one of {THRESHOLD_METHODS}, got {method!r}")
    v = _validation_values(val_scores, pool, fn)
    if method == "mean_std":
        k = check_threshold(k, f"{fn}: k")
        if v.size < 2:
            raise UndefinedMetricError(f"{fn}: mean_std needs >= 2 validation values, got {v.size}; use more validation images")
        return float(v.mean() + k * v.std(ddof=1))
    q = check_threshold(quantile, f"{fn}: quantile")
    if not 0.0 <= q <= 1.0:
        raise MetricError(f"{fn}: quantile must lie in [0, 1], got {q}")
    return float(np.quantile(v, q))


def fit_normalization(val_scores: Any, threshold: float) -> Dict[str, float]:
    """Params {"min", "threshold"} (plain floats) mapping min(validation scores) -> 0 and threshold -> 0.5.

    For maps the minimum is over all validation pixels.
    """
    fn = "fit_normalization"
    t = check_threshold(threshold, f"{fn}: threshold")
    mn = float(_validation_values(val_scores, "all", fn).min())
    # A gap at rounding-error level (constant validation scores give mean + k*std = min + ~1e-16) is no scale.
    if not t - mn > 64 * np.finfo(np.float64).eps * max(abs(t), abs(mn)):
        raise UndefinedMetricError(
            f"{fn}: threshold {t} is not above the lowest validation score {mn}; "
            "the validation scores are (nearly) constant, so no scale can be fitted"
        )
    return {"min": mn, "threshold": t}


def _check_params(params: Any) -> tuple[float, float]:
    if not isinstance(params, dict) or not {"min", "threshold"} <= set(params):
        raise MetricError(f"normalize: params must be the dict from fit_normalization with 'min' and 'threshold', got {params!r}")
    mn = check_threshold(params["min"], "normalize: params['min']")
    t = check_threshold(params["threshold"], "normalize: params['threshold']")
    if not t > mn:
        raise MetricError(f"normalize: params['threshold'] ({t}) must exceed params['min'] ({mn})")
    return mn, t


def normalize(scores: Any, params: Dict[str, float], clip: bool = False) -> Any:
    """0.5 * (s - min) / (threshold - min): threshold -> 0.5, order preserved. Returns the input's type
    (torch tensors stay tensors on their device; numpy float32 stays float32)."""
    mn, t = _check_params(params)
    denom = 2.0 * (t - mn)  # exact doubling, so a float64 score equal to the threshold maps to exactly 0.5
    if hasattr(scores, "detach"):
        out = (scores.detach().float() if not scores.is_floating_point() else scores.detach()) - mn
        out = out / denom
        return out.clamp(0.0, 1.0) if clip else out
    s = as_scores(scores, "normalize: scores")
    out = (s - mn) / denom
    return np.clip(out, 0.0, 1.0) if clip else out


def fit_calibration(
    val_scores: Any,
    val_maps: Optional[Any] = None,
    method: str = "mean_std",
    k: float = 3.0,
    quantile: float = 0.99,
    pool: str = "max",
) -> Dict[str, Any]:
    """Everything a run stores from its validation normals, as plain JSON-able values.

    {"image_threshold", "image_normalization", "pixel_threshold", "pixel_normalization", "method", "k",
    "quantile", "pool", "n_val", "notes"}; an entry that cannot be fitted is None with the reason in notes.
    """
    out: Dict[str, Any] = {
        "method": method, "k": float(k), "quantile": float(quantile), "pool": pool,
        "n_val": None, "image_threshold": None, "image_normalization": None,
        "pixel_threshold": None, "pixel_normalization": None, "notes": [],
    }
    for level, values in (("image", val_scores), ("pixel", val_maps)):
        if values is None:
            if level == "pixel":
                out["notes"].append("pixel calibration: no validation maps given")
            continue
        if level == "image":
            out["n_val"] = int(as_scores(values, "fit_calibration: val_scores").shape[0])
        try:
            thr = fit_threshold(values, method=method, k=k, quantile=quantile, pool=pool)
            out[f"{level}_threshold"] = thr
            out[f"{level}_normalization"] = fit_normalization(values, thr)
        except UndefinedMetricError as exc:
            out["notes"].append(f"{level} calibration: {exc}")
    return out
