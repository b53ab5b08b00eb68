"""AUPRO on hand-built masks with known answers, and against a slow threshold-loop reference."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import ad.metrics as M


def _reference_aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float) -> float:
    """Obviously-correct AUPRO: loop over every distinct threshold, regions per image with 8-connectivity."""
    regions = []
    for mask, amap in zip(masks, maps):
        lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[lab == k] for k in range(1, n + 1)]
    normal = maps[~masks.astype(bool)]
    fprs, pros = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        fprs.append(float(np.mean(normal >= t)))
        pros.append(float(np.mean([np.mean(r >= t) for r in regions])))
    fprs.append(1.0)
    pros.append(1.0)
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(fprs, pros), zip(fprs[1:], pros[1:])):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # cut the segment at max_fpr, interpolating linearly
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / max_fpr


def _scene(h=20, w=20):
    masks = np.zeros((3, h, w), bool)
    masks[0, 2:12, 2:12] = True  # 100 px
    masks[0, 15:17, 15:17] = True  # 4 px, same image, far away
    masks[1, 5:8, 3:11] = True  # 24 px
    return masks  # image 2 is normal


def test_perfect_map_gives_one():
    masks = _scene()
    assert M.aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0, abs=1e-9)


def test_inverted_map_gives_zero():
    masks = _scene()
    assert M.aupro(masks, (~masks).astype(np.float32)) == pytest.approx(0.0, abs=1e-12)


def test_half_of_each_region_covered_gives_half():
    # Every region (100, 4 and 24 px) has exactly half its pixels above all normal pixels and half below them:
    # PRO = 0.5 from
    # FPR 0 to FPR 1, so AUPRO = 0.5 at any max_fpr.
    masks = _scene()
    maps = np.full(masks.shape, 0.5)
    for i in range(masks.shape[0]):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            ys, xs = np.nonzero(lab == k)
            maps[i, ys, xs] = np.where(np.arange(ys.size) < ys.size // 2, 1.0, 0.0)
    for max_fpr in (0.05, 0.3, 1.0):
        assert M.aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(0.5, abs=1e-12)


def test_regions_count_equally_whatever_their_size():
    # Big region (100 px) fully found, the 4 px and the 24 px regions missed: PRO = 1/3, though 100/128 of the
    # defect pixels are found; a pixel-weighted overlap would give 0.78.
    masks = _scene()
    maps = np.full(masks.shape, 0.5)
    maps[masks] = 0.0
    maps[0, 2:12, 2:12] = 1.0
    assert M.aupro(masks, maps) == pytest.approx(1 / 3, abs=1e-12)


def test_false_positives_shift_the_curve_right():
    # 10% of normal pixels score above every defect pixel: PRO = 0 up to FPR 0.1, then 1: AUPRO = 0.2 / 0.3.
    masks = np.zeros((1, 10, 10), bool)
    masks[0, :, :2] = True  # 20 defect pixels, 80 normal
    maps = np.zeros((1, 10, 10))
    maps[masks] = 1.0
    maps[0, :8, 9] = 2.0  # 8 of the 80 normal pixels
    assert M.aupro(masks, maps) == pytest.approx(0.2 / 0.3, abs=1e-12)
    assert M.aupro(masks, maps, max_fpr=0.05) == pytest.approx(0.0, abs=1e-12)


def test_ties_between_defect_and_normal_pixels_interpolate_on_the_diagonal():
    # Half the normal pixels tie with every defect pixel: the curve jumps from (0, 0) to (0.5, 1) in one step,
    # so PRO(0.3) = 0.6 by linear interpolation and AUPRO = 0.5 * 0.6 * 0.3 / 0.3 = 0.3.
    masks = np.zeros((1, 10, 10), bool)
    masks[0, :, :2] = True
    maps = np.zeros((1, 10, 10))
    maps[masks] = 1.0
    maps[0, :, 2:6] = 1.0  # 40 of the 80 normal pixels
    assert M.aupro(masks, maps) == pytest.approx(0.3, abs=1e-12)


def test_regions_use_8_connectivity_like_the_official_code():
    # A 2x2 and a 3x3 block touching only at a corner are ONE region (8-connectivity): covering the 2x2 block
    # gives PRO 4/13. With 4-connectivity they would be two regions and PRO would be 0.5.
    masks = np.zeros((1, 12, 12), bool)
    masks[0, 2:4, 2:4] = True
    masks[0, 4:7, 4:7] = True
    maps = np.full(masks.shape, 0.5)
    maps[masks] = 0.0
    maps[0, 2:4, 2:4] = 1.0
    assert M.aupro(masks, maps) == pytest.approx(4 / 13, abs=1e-12)


def test_regions_never_join_across_images():
    # Same location in two images: two regions (one found, one missed), not one 2-image region.
    masks = np.zeros((2, 8, 8), bool)
    masks[:, 2:5, 2:5] = True
    maps = np.full(masks.shape, 0.5)
    maps[masks] = 0.0
    maps[0, 2:5, 2:5] = 1.0
    assert M.aupro(masks, maps) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_fpr", [0.01, 0.3, 1.0])
def test_matches_threshold_loop_reference_on_random_inputs(seed, max_fpr):
    rng = np.random.default_rng(seed)
    n, h, w = 4, 12, 14
    masks = np.zeros((n, h, w), bool)
    for i in range(1, n):
        for _ in range(int(rng.integers(1, 4))):
            y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
            masks[i, y0 : y0 + rng.integers(1, 5), x0 : x0 + rng.integers(1, 6)] = True
    maps = rng.standard_normal((n, h, w)) + rng.uniform(0, 2) * masks
    if seed % 2:
        maps = np.round(maps * 3) / 3  # heavy ties across defect and normal pixels
    got = M.aupro(masks, maps.astype(np.float32), max_fpr=max_fpr)
    want = _reference_aupro(masks, maps.astype(np.float32), max_fpr)
    assert got == pytest.approx(want, abs=1e-9)


def test_pro_curve_is_monotone_and_spans_zero_to_one():
    rng = np.random.default_rng(5)
    masks = _scene()
    fpr, pro = M.pro_curve(masks, rng.random(masks.shape) + masks)
    assert fpr[0] == pro[0] == 0.0 and fpr[-1] == pro[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)


def test_max_fpr_is_validated():
    masks = _scene()
    for bad in (0.0, -0.1, 1.5, "x"):
        with pytest.raises(M.MetricError, match="max_fpr"):
            M.aupro(masks, masks.astype(float), max_fpr=bad)
