"""evaluate(): values against independent computations, explicit nulls with reasons, input checks."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

import ad.metrics as M


def _data(seed=0, n_good=10, n_bad=8, size=16):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_good, bool), np.ones(n_bad, bool)]
    types = ["good"] * n_good + ["crack" if i % 2 else "hole" for i in range(n_bad)]
    masks = np.zeros((y.size, size, size), bool)
    for i in np.flatnonzero(y):
        y0, x0 = rng.integers(0, size - 4, 2)
        masks[i, y0 : y0 + rng.integers(2, 5), x0 : x0 + rng.integers(2, 5)] = True
    maps = (rng.random(masks.shape) + 0.8 * masks).astype(np.float32)
    scores = maps.reshape(y.size, -1).max(axis=1) + 0.1 * rng.standard_normal(y.size)
    return y, scores, types, masks, maps


def test_full_result_matches_independent_metrics_and_is_json():
    y, s, types, masks, maps = _data()
    r = M.evaluate(y, s, types, masks, maps, image_threshold=0.9, pixel_threshold=0.95)
    json.dumps(r, allow_nan=False)
    assert set(r) == {"image", "pixel", "per_defect", "counts", "test_set_diagnostics", "notes"}
    img, pix = r["image"], r["pixel"]
    assert img["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert img["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert img["f1_max"] == pytest.approx(M.f1_max(y, s)["f1"], abs=1e-12)
    assert img["f1"] == pytest.approx(f1_score(y, s >= 0.9), abs=1e-9)
    assert pix["auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert pix["ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert pix["aupro"] == pytest.approx(M.aupro(masks, maps), abs=1e-12)
    assert pix["f1_max"] == pytest.approx(M.pixel_f1_max(masks, maps)["f1"], abs=1e-12)
    assert pix["f1"] == pytest.approx(f1_score(masks.ravel(), maps.ravel() >= 0.95), abs=1e-9)
    assert pix["max_fpr"] == 0.3
    assert r["per_defect"] == M.per_defect_auroc(y, s, types)
    assert r["counts"] == {"images": 18, "anomalous_images": 8, "pixels": masks.size,
                           "anomalous_pixels": int(masks.sum()), "regions": 8}
    assert all(type(v) in (float, type(None)) for v in {**img, **pix}.values())


def test_max_fpr_is_passed_through():
    y, s, types, masks, maps = _data(1)
    r = M.evaluate(y, s, types, masks, maps, max_fpr=0.05)
    assert r["pixel"]["aupro"] == pytest.approx(M.aupro(masks, maps, max_fpr=0.05), abs=1e-12)


def test_torch_inputs_like_a_data_loader():
    y, s, types, masks, maps = _data(2)
    r_np = M.evaluate(y, s, types, masks, maps)
    r_t = M.evaluate(torch.from_numpy(y).long(), torch.from_numpy(s), types,
                     torch.from_numpy(masks).float(), torch.from_numpy(maps))
    assert r_t["image"] == r_np["image"] and r_t["pixel"] == r_np["pixel"]


def test_no_masks_means_null_pixel_section_with_reason():
    y, s, types, _, maps = _data(3)
    r = M.evaluate(y, s, types)
    assert r["pixel"] is None and any("no ground-truth masks" in n for n in r["notes"])
    assert r["image"]["auroc"] is not None


def test_one_class_gives_nulls_with_reasons_not_half():
    y, s, types, masks, maps = _data(4)
    good = ~y
    r = M.evaluate(y[good], s[good], [t for t, g in zip(types, good) if g], masks[good], maps[good],
                   image_threshold=0.5, pixel_threshold=0.5)
    assert r["image"]["auroc"] is None and r["image"]["ap"] is None and r["image"]["f1_max"] is None
    assert r["image"]["recall"] is None
    assert r["per_defect"] is None
    assert r["pixel"]["auroc"] is None and r["pixel"]["aupro"] is None
    notes = " | ".join(r["notes"])
    assert "all 10 images are normal" in notes and "no defect pixel" in notes and "no anomalous test image" in notes
    json.dumps(r, allow_nan=False)


def test_only_anomalous_images_still_gives_pixel_metrics():
    y, s, types, masks, maps = _data(5)
    bad = y
    r = M.evaluate(y[bad], s[bad], [t for t, b in zip(types, bad) if b], masks[bad], maps[bad])
    assert r["image"]["auroc"] is None and "anomalous" in " ".join(r["notes"])
    assert r["pixel"]["auroc"] == pytest.approx(roc_auc_score(masks[bad].ravel(), maps[bad].ravel()), abs=1e-9)


def test_non_finite_scores_null_only_the_affected_level():
    y, s, types, masks, maps = _data(6)
    s = s.copy()
    s[3] = np.nan
    r = M.evaluate(y, s, types, masks, maps, image_threshold=0.5)
    assert r["image"]["auroc"] is None and r["image"]["precision"] is None and r["per_defect"] is None
    assert "NaN" in " ".join(r["notes"]) and len(r["notes"]) == len(set(r["notes"]))
    assert r["pixel"]["auroc"] is not None
    maps = maps.copy()
    maps[0, 0, 0] = np.inf
    r = M.evaluate(y, np.nan_to_num(s), types, masks, maps, pixel_threshold=0.5)
    assert r["pixel"]["aupro"] is None and r["pixel"]["precision"] is None and r["image"]["auroc"] is not None
    assert "inf" in " ".join(r["notes"])


def test_has_mask_excludes_unannotated_images():
    y, s, types, masks, maps = _data(7)
    keep = np.ones(y.size, bool)
    keep[-3:] = False
    unannotated = masks.copy()
    unannotated[-3:] = False  # anomalous but without a pixel annotation
    r = M.evaluate(y, s, types, unannotated, maps, has_mask=keep)
    assert r["pixel"]["auroc"] == pytest.approx(roc_auc_score(masks[keep].ravel(), maps[keep].ravel()), abs=1e-9)
    assert any("3 images without a pixel annotation" in n for n in r["notes"])
    r = M.evaluate(y, s, types, unannotated, maps)  # without has_mask: counted as defect-free, and said so
    assert any("3 anomalous images have empty masks" in n for n in r["notes"])
    r = M.evaluate(y, s, types, masks, maps, has_mask=np.zeros(y.size, bool))
    assert r["pixel"] is None and any("no image has a pixel annotation" in n for n in r["notes"])


def test_malformed_inputs_raise():
    y, s, types, masks, maps = _data(8)
    with pytest.raises(M.MetricError, match="labels and masks disagree"):
        M.evaluate(~y, s, types, masks, maps)
    with pytest.raises(M.MetricError, match="without maps"):
        M.evaluate(y, s, types, masks)
    with pytest.raises(M.MetricError, match="resize the maps"):
        M.evaluate(y, s, types, masks, maps[:, :8])
    with pytest.raises(M.MetricError, match="equal length"):
        M.evaluate(y, s[:-1], types)
    with pytest.raises(M.MetricError, match="defect_types"):
        M.evaluate(y, s, types[:-1])
    with pytest.raises(M.MetricError, match="image_threshold"):
        M.evaluate(y, s, types, image_threshold=float("nan"))


def test_pixel_metrics_of_a_category_are_fast():
    # 40 images x 128x128 (0.65 M pixels): all image + pixel metrics in well under a second of CPU.
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(15, bool), np.ones(25, bool)]
    masks = np.zeros((40, 128, 128), bool)
    for i in np.flatnonzero(y):
        y0, x0 = rng.integers(0, 100, 2)
        masks[i, y0 : y0 + 20, x0 : x0 + 12] = True
    maps = (rng.random(masks.shape) + masks).astype(np.float32)
    s = maps.reshape(40, -1).max(axis=1)
    t = time.process_time()
    M.evaluate(y, s, ["good"] * 15 + ["x"] * 25, masks, maps)
    assert time.process_time() - t < 0.5


@pytest.mark.benchmark
def test_visa_size_pixel_metrics_under_two_cpu_seconds():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from benchmark_metrics import synthetic

    labels, scores, types, masks, maps = synthetic(200)
    t = time.process_time()
    M.evaluate(labels, scores, types, masks, maps, image_threshold=0.5, pixel_threshold=1.0)
    assert time.process_time() - t < 2.0
