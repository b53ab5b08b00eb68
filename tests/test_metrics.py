"""Image and pixel metrics against sklearn on random and adversarial inputs (ties, constants, few positives)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

import ad.metrics as M

TOL = 1e-6


def _cases(seed: int = 0):
    """(name, labels, scores): random, tied, constant, few-positive and quantised inputs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(12):
        n = int(rng.integers(5, 300))
        y = rng.random(n) < rng.uniform(0.05, 0.95)
        y[0], y[1] = True, False  # both classes present
        out.append((f"random{i}", y, rng.standard_normal(n)))
        out.append((f"ties{i}", y, rng.integers(0, 4, n).astype(np.float64)))  # heavy ties
        out.append((f"quantised{i}", y, (np.round(rng.random(n) * 16) / 16).astype(np.float32)))
    y = np.zeros(50, bool)
    y[[3]] = True
    out.append(("one_positive", y, rng.random(50)))
    out.append(("one_negative", ~y, rng.random(50)))
    out.append(("constant", rng.random(40) < 0.5, np.full(40, 0.7)))
    out[-1][1][:2] = [True, False]
    out.append(("perfect", np.r_[np.zeros(10, bool), np.ones(5, bool)], np.r_[np.zeros(10), np.ones(5)]))
    out.append(("inverted", np.r_[np.zeros(10, bool), np.ones(5, bool)], np.r_[np.ones(10), np.zeros(5)]))
    # positives tied with negatives at the top and bottom, negative scores, signed zeros
    out.append(("signed_zero", np.array([1, 0, 1, 0, 0, 1], bool), np.array([0.0, -0.0, -1.0, 2.0, -1.0, 2.0])))
    out.append(("float16", rng.random(64) < 0.4, rng.random(64).astype(np.float16)))
    return out


CASES = _cases()


def _sk_f1_max(y, s):
    p, r, t = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)[:-1]  # the last point (p=1, r=0) has no threshold
    return f, p[:-1], r[:-1], t


@pytest.mark.parametrize("name,y,s", CASES, ids=[c[0] for c in CASES])
def test_image_metrics_match_sklearn(name, y, s):
    assert M.image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert M.image_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=TOL)
    f, p, r, t = _sk_f1_max(y, s)
    best = M.f1_max(y, s)
    assert best["f1"] == pytest.approx(f.max(), abs=TOL)
    # The reported threshold achieves the max, and its precision/recall are those of that threshold.
    near = np.flatnonzero(f >= f.max() - 1e-12)
    assert best["threshold"] in t[near].astype(float).tolist()
    j = int(np.flatnonzero(t == best["threshold"])[0])
    assert best["precision"] == pytest.approx(p[j], abs=TOL)
    assert best["recall"] == pytest.approx(r[j], abs=TOL)
    if near.size == 1:
        assert best["threshold"] == float(t[near[0]])


@pytest.mark.parametrize("name,y,s", CASES[::3], ids=[c[0] for c in CASES[::3]])
def test_precision_recall_f1_match_sklearn(name, y, s):
    values = np.unique(s)
    for thr in [values[0], values[len(values) // 2], values[-1], float(values[-1]) + 1.0, float(values[0]) - 1.0]:
        pred = s >= thr
        got = M.precision_recall_f1(y, s, thr)
        assert got["precision"] == pytest.approx(precision_score(y, pred, zero_division=0), abs=TOL)
        assert got["recall"] == pytest.approx(recall_score(y, pred), abs=TOL)
        assert got["f1"] == pytest.approx(f1_score(y, pred, zero_division=0), abs=TOL)
        assert got["tp"] + got["fp"] + got["fn"] + got["tn"] == y.size
        assert got["tp"] == int((pred & y).sum()) and got["fp"] == int((pred & ~y).sum())


def test_threshold_compared_in_float64_not_rounded_to_float32():
    s = np.array([0.1, 0.2], np.float32)
    thr = float(np.float32(0.2)) + 1e-12  # rounds to float32(0.2) in a float32 comparison
    assert M.precision_recall_f1([0, 1], s, thr)["tp"] == 0


def _pixel_case(rng, n, h, w, quant=None):
    masks = np.zeros((n, h, w), bool)
    for i in range(1, n):
        for _ in range(int(rng.integers(1, 4))):
            y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
            masks[i, y0 : y0 + rng.integers(1, 6), x0 : x0 + rng.integers(1, 6)] = True
    maps = rng.standard_normal((n, h, w)) + 1.5 * masks
    if quant:
        maps = np.round(maps * quant) / quant  # many ties, also between normal and defect pixels
    return masks, maps.astype(np.float32)


@pytest.mark.parametrize("quant", [None, 2, 8])
def test_pixel_metrics_match_sklearn(quant):
    rng = np.random.default_rng(7)
    masks, maps = _pixel_case(rng, 6, 24, 20, quant)
    y, s = masks.ravel(), maps.ravel()
    assert M.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert M.pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=TOL)
    f, _, _, t = _sk_f1_max(y, s)
    best = M.pixel_f1_max(masks, maps)
    assert best["f1"] == pytest.approx(f.max(), abs=TOL)
    assert best["threshold"] in t[f >= f.max() - 1e-12].astype(float).tolist()


def test_parallel_chunked_sort_gives_identical_counts(monkeypatch):
    import ad.metrics._curve as curve

    rng = np.random.default_rng(3)
    masks, maps = _pixel_case(rng, 5, 30, 30, quant=4)
    serial = (M.pixel_auroc(masks, maps), M.pixel_ap(masks, maps), M.aupro(masks, maps))
    monkeypatch.setattr(curve, "PARALLEL_SORT_MIN", 10)
    monkeypatch.setattr(curve, "_cpus", lambda: 2)
    assert (M.pixel_auroc(masks, maps), M.pixel_ap(masks, maps), M.aupro(masks, maps)) == serial


def test_torch_and_list_inputs():
    rng = np.random.default_rng(1)
    y = rng.random(40) < 0.5
    y[:2] = [True, False]
    s = rng.random(40).astype(np.float32)
    ref = roc_auc_score(y, s)
    assert M.image_auroc(torch.from_numpy(y).long(), torch.from_numpy(s)) == pytest.approx(ref, abs=TOL)
    assert M.image_auroc(y.astype(int).tolist(), s.tolist()) == pytest.approx(ref, abs=TOL)
    assert M.image_auroc(y, torch.from_numpy(s).bfloat16()) == pytest.approx(
        roc_auc_score(y, torch.from_numpy(s).bfloat16().float().numpy()), abs=TOL
    )
    masks, maps = _pixel_case(rng, 3, 16, 16)
    tm = torch.from_numpy(masks).float()[:, None]  # float {0,1} [N,1,H,W], as data loaders produce
    assert M.pixel_auroc(tm, torch.from_numpy(maps)) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=TOL
    )


def test_float64_scores_are_not_rounded_into_ties():
    # 1 + 1e-12 and 1 are distinct in float64 but equal in float32: a cast would make this AUROC 0.5.
    assert M.image_auroc([0, 1], np.array([1.0, 1.0 + 1e-12])) == 1.0


def test_per_defect_auroc_matches_sklearn_per_type():
    rng = np.random.default_rng(2)
    types = np.array(["good"] * 20 + ["crack"] * 7 + ["scratch"] * 5 + ["hole"] * 1)
    y = types != "good"
    s = rng.random(types.size) + 0.3 * y * (types == "crack")
    got = M.per_defect_auroc(y, s, types.tolist())
    assert set(got) == {"crack", "scratch", "hole"}
    for d, v in got.items():
        sel = (types == d) | ~y
        assert v == pytest.approx(roc_auc_score(y[sel], s[sel]), abs=TOL)


@pytest.mark.parametrize(
    "fn", [M.image_auroc, M.image_ap, M.f1_max], ids=["image_auroc", "image_ap", "f1_max"]
)
def test_image_degenerate_inputs_raise_clear_errors(fn):
    with pytest.raises(M.UndefinedMetricError, match="all 4 images are normal"):
        fn([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(M.UndefinedMetricError, match="anomalous"):
        fn([1, 1], [0.1, 0.2])
    with pytest.raises(M.UndefinedMetricError, match="1 NaN and 1 inf"):
        fn([0, 1, 0, 1], [0.1, np.nan, np.inf, 0.3])
    with pytest.raises(M.MetricError, match="only 0 and 1"):
        fn([0, 2], [0.1, 0.2])
    with pytest.raises(M.MetricError, match="equal length"):
        fn([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError):  # MetricError is a ValueError for callers that catch those
        fn([0, 0], [0.1, 0.2])


def test_error_messages_are_one_line():
    for call in (
        lambda: M.image_auroc([0, 0], [1, 2]),
        lambda: M.pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 4))),
        lambda: M.pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5))),
        lambda: M.aupro(np.ones((1, 4, 4)), np.zeros((1, 4, 4)), max_fpr=0.0),
    ):
        with pytest.raises(M.MetricError) as info:
            call()
        assert "\n" not in str(info.value) and str(info.value)


@pytest.mark.parametrize("fn", [M.pixel_auroc, M.pixel_ap, M.pixel_f1_max, M.aupro])
def test_pixel_degenerate_inputs(fn):
    maps = np.random.default_rng(0).random((2, 8, 8))
    with pytest.raises(M.UndefinedMetricError, match="no defect pixel"):
        fn(np.zeros((2, 8, 8)), maps)
    with pytest.raises(M.UndefinedMetricError, match="normal pixels"):
        fn(np.ones((2, 8, 8)), maps)
    masks = np.zeros((2, 8, 8))
    masks[1, 2:4, 2:4] = 1
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(M.UndefinedMetricError, match="NaN"):
        fn(masks, bad)
    with pytest.raises(M.MetricError, match="only 0 and 1"):
        fn(masks * 255, maps)
    with pytest.raises(M.MetricError, match="resize the maps"):
        fn(masks, maps[:, :4])
    with pytest.raises(M.MetricError, match=r"\[N,H,W\]"):
        fn(masks[0], maps[0])
