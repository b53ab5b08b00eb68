"""Thresholds / normalisation fitted on validation normals, and the guarantee that test data never sets them."""
from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_score, recall_score, roc_auc_score

import ad.metrics as M
import ad.metrics._thresholds as thresholds_module


def test_mean_std_and_quantile_on_image_scores():
    v = np.array([0.1, 0.4, 0.2, 0.3, 0.25])
    mean = sum(v) / len(v)
    std = (sum((x - mean) ** 2 for x in v) / (len(v) - 1)) ** 0.5  # sample std, written out
    assert M.fit_threshold(v) == pytest.approx(mean + 3 * std, abs=1e-12)
    assert M.fit_threshold(v, k=1.5) == pytest.approx(mean + 1.5 * std, abs=1e-12)
    # quantile with linear interpolation: sorted [0.1 .2 .25 .3 .4], q=0.5 -> 0.25, q=0.9 -> 0.3 + 0.6*0.1
    assert M.fit_threshold(v, method="quantile", quantile=0.5) == pytest.approx(0.25, abs=1e-12)
    assert M.fit_threshold(v, method="quantile", quantile=0.9) == pytest.approx(0.36, abs=1e-12)
    assert isinstance(M.fit_threshold(torch.tensor(v)), float)


def test_map_thresholds_pool_per_image_maxima_or_all_pixels():
    rng = np.random.default_rng(0)
    maps = rng.random((6, 8, 8)).astype(np.float32)
    maxima = maps.reshape(6, -1).max(axis=1).astype(np.float64)
    assert M.fit_threshold(maps) == pytest.approx(maxima.mean() + 3 * maxima.std(ddof=1), abs=1e-9)
    assert M.fit_threshold(maps, method="quantile", quantile=0.5) == pytest.approx(np.median(maxima), abs=1e-9)
    flat = maps.ravel().astype(np.float64)
    assert M.fit_threshold(maps, method="quantile", quantile=0.99, pool="all") == pytest.approx(
        np.quantile(flat, 0.99), abs=1e-9
    )
    # [N,1,H,W] maps (a singleton channel) are accepted
    assert M.fit_threshold(torch.from_numpy(maps)[:, None]) == M.fit_threshold(maps)


def test_quantile_threshold_controls_false_alarms_on_fresh_normals():
    # Fit on 2000 validation normals; ~1% of fresh normals from the same distribution exceed the 0.99 quantile.
    rng = np.random.default_rng(1)
    thr = M.fit_threshold(rng.standard_normal(2000), method="quantile", quantile=0.99)
    assert 0.003 < np.mean(rng.standard_normal(20000) >= thr) < 0.02


def test_normalization_maps_min_to_zero_and_threshold_to_half():
    rng = np.random.default_rng(2)
    val = rng.random(50) * 3 + 1
    thr = M.fit_threshold(val)
    params = M.fit_normalization(val, thr)
    assert params == {"min": float(val.min()), "threshold": thr}
    assert all(type(v) is float for v in params.values())
    assert json.loads(json.dumps(params)) == params  # stored as-is in model.pt / results.json
    assert M.normalize(np.array([val.min(), thr]), params).tolist() == [0.0, 0.5]
    # Same slope above the threshold; unclipped by default, clipped on request.
    far = 2 * thr - val.min()
    assert M.normalize(np.array([far, far + (thr - val.min())]), params) == pytest.approx([1.0, 1.5])
    assert M.normalize(np.array([val.min() - 1, far + 1]), params, clip=True).tolist() == [0.0, 1.0]


def test_normalization_preserves_rankings_and_types():
    rng = np.random.default_rng(3)
    params = M.fit_normalization(rng.random(30), 0.9)
    y = rng.random(100) < 0.3
    y[:2] = [True, False]
    s = rng.random(100) * 2
    assert M.image_auroc(y, M.normalize(s, params)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    maps = torch.rand(2, 4, 4)
    out = M.normalize(maps, params)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == maps.shape
    assert torch.allclose(out, (maps - params["min"]) / (2 * (0.9 - params["min"])))
    assert M.normalize(maps.numpy(), params).dtype == np.float32


def test_degenerate_validation_scores():
    with pytest.raises(M.UndefinedMetricError, match="not above the lowest"):
        M.fit_normalization(np.full(10, 0.3), M.fit_threshold(np.full(10, 0.3)))  # std 0: threshold == min
    with pytest.raises(M.UndefinedMetricError, match=">= 2"):
        M.fit_threshold([0.4])
    with pytest.raises(M.UndefinedMetricError, match="empty"):
        M.fit_threshold(np.zeros(0))
    with pytest.raises(M.UndefinedMetricError, match="NaN"):
        M.fit_threshold([0.1, np.nan, 0.3])
    with pytest.raises(M.MetricError, match="method"):
        M.fit_threshold([0.1, 0.2], method="otsu")
    with pytest.raises(M.MetricError, match="quantile"):
        M.fit_threshold([0.1, 0.2], method="quantile", quantile=1.5)
    with pytest.raises(M.MetricError, match="pool"):
        M.fit_threshold(np.zeros((2, 3, 3)), pool="mean")
    with pytest.raises(M.MetricError, match="fit_normalization"):
        M.normalize([0.1], {"lo": 0.0})
    with pytest.raises(M.MetricError, match="must exceed"):
        M.normalize([0.1], {"min": 1.0, "threshold": 0.5})


def test_fit_calibration_is_json_and_reports_unfittable_parts():
    rng = np.random.default_rng(4)
    val_scores, val_maps = rng.random(20), rng.random((20, 8, 8))
    cal = M.fit_calibration(val_scores, val_maps, method="quantile", quantile=0.95)
    json.dumps(cal, allow_nan=False)
    assert cal["image_threshold"] == M.fit_threshold(val_scores, method="quantile", quantile=0.95)
    assert cal["pixel_threshold"] == M.fit_threshold(val_maps, method="quantile", quantile=0.95)
    assert cal["pixel_normalization"]["threshold"] == cal["pixel_threshold"] and cal["n_val"] == 20
    flat = M.fit_calibration(np.full(5, 0.2))
    assert flat["image_threshold"] == pytest.approx(0.2)
    assert flat["image_normalization"] is None and any("not above the lowest" in n for n in flat["notes"])
    assert flat["pixel_threshold"] is None


# ---- the guarantee: thresholds and normalisation never come from test images ----

FITTERS = (M.fit_threshold, M.fit_normalization, M.fit_calibration)


@pytest.mark.parametrize("fn", FITTERS, ids=lambda f: f.__name__)
def test_fitters_cannot_receive_test_labels_masks_or_defect_types(fn):
    # API-level: the only data argument is validation scores; there is no way to pass ground truth.
    params = inspect.signature(fn).parameters
    assert next(iter(params)) == "val_scores"
    forbidden = {"labels", "label", "y", "y_true", "masks", "mask", "gt", "targets", "defect_types"}
    assert not forbidden & set(params)
    data_args = [p for p in params if p.startswith("val_")]
    assert data_args and all(p in ("val_scores", "val_maps") for p in data_args)


def _test_set(seed, shift):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(12, bool), np.ones(8, bool)]
    s = rng.random(20) + shift * y
    types = ["good"] * 12 + ["crack"] * 8
    masks = np.zeros((20, 8, 8), bool)
    masks[12:, 2:5, 2:5] = True
    maps = rng.random((20, 8, 8)) + shift * masks
    return y, s, types, masks, maps


def test_evaluate_never_calls_fitting_code():
    # Runtime check: trace every Python call made during evaluate(); none may run code from _thresholds.py.
    fitting_file = Path(thresholds_module.__file__).resolve()
    seen = []

    def tracer(frame, event, arg):
        if event == "call" and Path(frame.f_code.co_filename).resolve() == fitting_file:
            seen.append(frame.f_code.co_name)

    y, s, types, masks, maps = _test_set(0, 0.5)
    sys.setprofile(tracer)
    try:
        M.evaluate(y, s, types, masks, maps, image_threshold=0.8, pixel_threshold=0.9)
        M.evaluate(y, s, types, masks, maps)  # even without thresholds it must not fit any
    finally:
        sys.setprofile(None)
    assert seen == []
    # Static check as well: the evaluation module holds no reference to the fitters.
    import ad.metrics._evaluate as ev

    assert not {"fit_threshold", "fit_normalization", "fit_calibration", "_thresholds"} & set(vars(ev))


def test_evaluate_applies_given_thresholds_unchanged_and_never_invents_them():
    val = np.random.default_rng(9).random(30)  # validation normals
    thr = M.fit_threshold(val)
    results = []
    for seed, shift in ((1, 0.2), (2, 3.0)):  # two very different test sets
        y, s, types, masks, maps = _test_set(seed, shift)
        r = M.evaluate(y, s, types, masks, maps, image_threshold=thr, pixel_threshold=thr)
        assert r["image"]["threshold"] == thr and r["pixel"]["threshold"] == thr
        pred = s >= thr
        assert r["image"]["precision"] == pytest.approx(precision_score(y, pred, zero_division=0))
        assert r["image"]["recall"] == pytest.approx(recall_score(y, pred))
        assert r["pixel"]["recall"] == pytest.approx(recall_score(masks.ravel(), maps.ravel() >= thr))
        results.append(r)
    assert results[0]["image"]["recall"] != results[1]["image"]["recall"]
    # Without thresholds: thresholded metrics stay null (with a reason), nothing is fitted on the test set.
    r = M.evaluate(y, s, types, masks, maps)
    for level in ("image", "pixel"):
        assert all(r[level][k] is None for k in ("threshold", "precision", "recall", "f1"))
        assert any(n.startswith(f"{level}: no {level}_threshold") for n in r["notes"])
    # The test-set-optimal F1 threshold is reported, but only as a labelled diagnostic.
    assert r["image"]["f1_max_threshold"] is not None
    assert "image.f1_max_threshold" in r["test_set_diagnostics"]
    assert any("diagnostics only" in n for n in r["notes"])
