"""AU-PRO at any FPR limit, SegF1 and AUC-sPRO against slow references written from the official definitions.

The references follow the official scripts' procedure literally (threshold loop, `score > t` binary maps for
LOCO, per-defect saturation areas, trapezoid cut at the limit), in float64, with every distinct score as a
threshold — the limit the official threshold refinement converges to.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score

import ad.metrics as M
from ad.metrics import Defect, SaturationRule


def _trapz_to(xs, ys, x_max):
    """The official `trapz(x, y, x_max)`, written as a loop."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 >= x_max:
            break
        if x1 > x_max:
            y1 = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
            x1 = x_max
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area


def _reference_au_spro(maps, per_image_masks, per_image_rules, limits):
    """Official LOCO procedure, every distinct score a threshold: binary = map > t; sPRO = min(TP / sat, 1)."""
    maps = maps.astype(np.float64)
    union = np.zeros(maps.shape, bool)
    defects = []
    for i, (masks, rules) in enumerate(zip(per_image_masks, per_image_rules)):
        for m, r in zip(masks, rules):
            union[i] |= m
            area = int(m.sum())
            sat = int(r.threshold * area) if r.relative else min(r.threshold, area)
            defects.append((i, m, sat))
    n_free = int((~union).sum())
    ts = [maps.max() + 1e-6] + sorted(set(maps.ravel().tolist()), reverse=True) + [maps.min() - 1e-6]
    fprs, spros = [], []
    for t in ts:
        flagged = maps > t
        fprs.append(float((flagged & ~union).sum()) / n_free)
        spros.append(float(np.mean([min((flagged[i] & m).sum() / sat, 1.0) for i, m, sat in defects])))
    return {lim: _trapz_to(fprs, spros, lim) / lim for lim in limits}


def _smooth_maps(rng, n, h, w, levels=None):
    raw = ndimage.gaussian_filter(rng.random((n, h, w)), sigma=(0, 2, 2))
    raw = (raw - raw.min()) / (raw.max() - raw.min())
    if levels:
        raw = np.round(raw * levels) / levels  # ties between defect and defect-free pixels
    return raw


def _loco_scene(rng, n=4, h=24, w=32, levels=None):
    """Image 0 normal; the others carry 1-3 defects each (some overlapping), relative and absolute rules."""
    maps = _smooth_maps(rng, n, h, w, levels)
    rules = [SaturationRule("missing", 255, 1.0, True), SaturationRule("extra", 23, 0.5, True),
             SaturationRule("shifted", 7, 20, False), SaturationRule("huge_abs", 9, 10_000, False)]
    per_masks, per_rules = [[]], [[]]
    for _ in range(1, n):
        masks, rs = [], []
        for _ in range(int(rng.integers(1, 4))):
            m = np.zeros((h, w), bool)
            y0, x0 = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 6))
            m[y0:y0 + int(rng.integers(2, 9)), x0:x0 + int(rng.integers(2, 9))] = True
            masks.append(m)
            rs.append(rules[int(rng.integers(0, len(rules)))])
            maps[len(per_masks)][m] += rng.random() * 0.5  # defects score somewhat higher
        per_masks.append(masks)
        per_rules.append(rs)
    return maps, per_masks, per_rules


@pytest.mark.parametrize("seed,levels", [(0, None), (1, 20), (2, 7), (3, None)])
def test_au_spro_matches_official_procedure_reference(seed, levels):
    rng = np.random.default_rng(seed)
    maps, per_masks, per_rules = _loco_scene(rng, levels=levels)
    got = M.au_spro(maps, M.defects_from_channels(per_masks, per_rules))
    want = _reference_au_spro(maps, per_masks, per_rules, M.LOCO_FPR_LIMITS)
    assert set(got) == set(M.LOCO_FPR_LIMITS)
    for lim in M.LOCO_FPR_LIMITS:
        assert got[lim] == pytest.approx(want[lim], abs=1e-9), lim


def test_saturation_makes_a_defect_count_fully_once_its_threshold_is_covered():
    maps = np.zeros((2, 10, 10))
    m = np.zeros((10, 10), bool)
    m[0:5, 0:10] = True  # 50 px
    maps[1][m] = np.linspace(0.5, 1.0, 50)
    maps[0, 0, 0] = 0.75  # one defect-free pixel (of 150) outscores half the defect
    d_abs = M.defects_from_channels([[], [m]], [[], [SaturationRule("a", 1, 10, False)]])
    d_rel = M.defects_from_channels([[], [m]], [[], [SaturationRule("r", 1, 1.0, True)]])
    assert d_abs[0].saturation == 10 and d_rel[0].saturation == 50
    # Saturated after its top 10 pixels, all above the false positive: area 1 at every limit.
    assert M.au_spro(maps, d_abs, [0.01, 1.0]) == pytest.approx({0.01: 1.0, 1.0: 1.0})
    # Unsaturated (plain PRO of one region): the false positive enters half-way -> less than 1.
    rel = M.au_spro(maps, d_rel, [0.01])[0.01]
    assert rel < 1.0
    assert rel == pytest.approx(_reference_au_spro(maps, [[], [m]], [[], [SaturationRule("r", 1, 1.0, True)]],
                                                   [0.01])[0.01], abs=1e-12)


def test_saturation_area_uses_the_official_rounding():
    assert SaturationRule("r", 1, 0.35, True).area(10) == 3  # int(3.5), not round
    assert SaturationRule("a", 1, 500, False).area(120) == 120  # min(t, area)
    assert SaturationRule("a", 1, 50, False).area(120) == 50


def test_each_png_is_one_defect_even_when_it_has_two_blobs():
    """LOCO never splits a ground-truth PNG into connected parts (unlike AU-PRO's regions)."""
    maps = np.zeros((1, 12, 12))
    m = np.zeros((12, 12), bool)
    m[0:2, 0:2] = True
    m[8:12, 8:12] = True  # 4 + 16 px, one defect
    maps[0][0:2, 0:2] = 1.0  # only the small blob is found
    rule = [[SaturationRule("r", 1, 1.0, True)]]
    got = M.au_spro(maps, M.defects_from_channels([[m]], rule), [1.0])[1.0]
    # one defect at 4/20 until the FPR moves: area = 0.2 * 1 + (1 - 0.2)/2 over the last diagonal to (1, 1)
    assert got == pytest.approx(_reference_au_spro(maps, [[m]], rule, [1.0])[1.0])
    assert got < M.aupro(m[None].astype(np.uint8), maps, max_fpr=1.0)  # AU-PRO sees two regions, one found


def test_spro_undefined_cases_are_explicit():
    maps = np.random.default_rng(0).random((2, 8, 8))
    m = np.zeros((8, 8), bool)
    m[0, 0] = True
    with pytest.raises(M.UndefinedMetricError, match="no defect"):
        M.au_spro(maps, [])
    with pytest.raises(M.UndefinedMetricError, match="saturation area 0"):
        M.au_spro(maps, M.defects_from_channels([[m], []], [[SaturationRule("r", 1, 0.5, True)], []]))
    with pytest.raises(M.MetricError, match="no pixel"):
        M.au_spro(maps, [Defect(0, np.zeros((8, 8), bool), 1)])
    with pytest.raises(M.MetricError, match="resize"):
        M.au_spro(maps, [Defect(0, np.ones((4, 4), bool), 1)])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(M.UndefinedMetricError, match="NaN"):
        M.au_spro(bad, [Defect(1, m, 1)])
    with pytest.raises(M.UndefinedMetricError, match="defect-free"):
        M.au_spro(maps[:1], [Defect(0, np.ones((8, 8), bool), 1)])


def test_segf1_threshold_is_mean_plus_three_std_of_validation_pixels():
    rng = np.random.default_rng(0)
    val = rng.normal(2.0, 0.5, (5, 17, 23)).astype(np.float32)
    v64 = val.astype(np.float64)
    assert M.segf1_threshold(val) == pytest.approx(float(np.mean(v64) + 3 * np.std(v64)), rel=1e-12)
    assert M.segf1_threshold(val, k=1.0) == pytest.approx(float(np.mean(v64) + np.std(v64)), rel=1e-12)
    with pytest.raises(M.UndefinedMetricError):
        M.segf1_threshold(np.zeros((0, 4, 4)))


def test_segf1_pools_all_test_pixels_like_sklearn():
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 30, 50), np.uint8)
    masks[1, 3:9, 5:20] = 1
    masks[3, 20:28, 30:49] = 1
    maps = _smooth_maps(rng, 4, 30, 50) + 0.4 * masks
    t = 0.55
    got = M.segf1(masks, maps, t)
    want = f1_score(masks.ravel(), (maps >= t).ravel())
    assert got["f1"] == pytest.approx(want, abs=1e-12)
    # pooled, not a mean over images
    per_image = np.mean([f1_score(m.ravel(), (a >= t).ravel(), zero_division=0) for m, a in zip(masks, maps)])
    assert abs(got["f1"] - per_image) > 1e-3
    assert got["tp"] + got["fn"] == int(masks.sum())


def test_segf1_undefined_and_degenerate_cases():
    masks = np.zeros((1, 4, 4), np.uint8)
    with pytest.raises(M.UndefinedMetricError, match="0/0"):
        M.segf1(masks, np.zeros((1, 4, 4)), 1.0)
    masks[0, 0, 0] = 1
    r = M.segf1(masks, np.zeros((1, 4, 4)), 1.0)  # defects, nothing flagged
    assert r["f1"] == 0.0 and r["precision"] is None and r["recall"] == 0.0


def _reference_aupro_hist(masks, maps, max_fpr):
    """AU-PRO from per-region histograms over the distinct scores (independent of the one-sort algorithm)."""
    values, inv = np.unique(maps.astype(np.float64), return_inverse=True)
    inv = inv.reshape(maps.shape)
    u = values.size
    neg = np.bincount(inv[masks == 0], minlength=u)[::-1].cumsum()[::-1]  # negatives >= value
    pro = np.zeros(u)
    n_regions = 0
    for i in range(masks.shape[0]):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            c = np.bincount(inv[i][lab == k], minlength=u)[::-1].cumsum()[::-1]
            pro += c / c[0]
            n_regions += 1
    pro /= n_regions
    fpr = neg / neg[0]
    xs = [0.0] + fpr[::-1].tolist() + [1.0]
    ys = [0.0] + pro[::-1].tolist() + [1.0]
    return _trapz_to(xs, ys, max_fpr) / max_fpr


@pytest.mark.parametrize("max_fpr", [0.05, 0.3])
def test_aupro_at_any_limit_on_large_non_square_float16_maps(max_fpr):
    """MVTec AD 2-like: 3 images of 640x1000 (non-square), float16 maps as the submission stores them."""
    rng = np.random.default_rng(5)
    n, h, w = 3, 640, 1000
    masks = np.zeros((n, h, w), np.uint8)
    masks[0, 100:180, 200:260] = 1
    masks[0, 500:505, 900:990] = 1  # thin scratch
    masks[1, 300:420, 10:30] = 1
    small = ndimage.gaussian_filter(rng.random((n, h // 8, w // 8)), sigma=(0, 1.5, 1.5))
    maps = np.repeat(np.repeat(small, 8, axis=1), 8, axis=2) + 0.05 * masks + 0.01 * rng.random((n, h, w))
    maps = maps.astype(np.float16)
    got = M.aupro(masks, maps, max_fpr=max_fpr)
    assert got == pytest.approx(_reference_aupro_hist(masks, maps, max_fpr), abs=1e-6)


def test_aupro_005_and_03_differ_and_limit_is_validated():
    rng = np.random.default_rng(2)
    masks = np.zeros((3, 20, 30), np.uint8)
    masks[1, 4:10, 4:12] = 1
    maps = _smooth_maps(rng, 3, 20, 30) + 0.2 * masks
    a05, a30 = M.aupro(masks, maps, 0.05), M.aupro(masks, maps, 0.3)
    assert a05 == pytest.approx(_reference_aupro_hist(masks, maps, 0.05), abs=1e-9)
    assert a30 == pytest.approx(_reference_aupro_hist(masks, maps, 0.3), abs=1e-9)
    assert a05 != pytest.approx(a30)
    with pytest.raises(M.MetricError):
        M.aupro(masks, maps, 0.0)
