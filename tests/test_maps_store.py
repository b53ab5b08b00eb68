"""test_maps.npz round trip: order and paths kept, float16 precision, packed masks, downsampling cap, metrics
recomputed from the saved file equal those of the original maps up to float16 rounding."""
from __future__ import annotations

import numpy as np
import pytest

import ad.metrics as M
from ad.rundir.maps_store import MAPS_FILE, MapsWriter, load_test_maps, save_test_maps
from ad.errors import DataError


def _case(n=8, size=32, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    masks = np.zeros((n, size, size), np.uint8)
    masks[labels == 1, 5:12, 7:15] = 1
    maps = (rng.random((n, size, size)) * 40.0 + 30.0 * masks).astype(np.float32)  # raw scale up to ~70
    paths = [f"/data/x/test/{'good' if l == 0 else 'scratch'}/{i:03d}.png" for i, l in enumerate(labels)]
    return paths, labels, maps, masks


def test_round_trip_keeps_order_values_and_masks(tmp_path):
    paths, labels, maps, masks = _case()
    has = np.ones(len(paths), bool)
    has[0] = False  # a normal image without annotation
    save_test_maps(tmp_path, paths, labels, maps, masks, has)
    t = load_test_maps(tmp_path)
    assert t.paths == paths and t.labels.tolist() == labels.tolist() and t.has_mask.tolist() == has.tolist()
    assert t.maps.dtype == np.float16 and t.factor == 1 and t.scale == 128.0  # 2**ceil(log2(~70))
    np.testing.assert_allclose(t.raw(), maps, rtol=1e-3, atol=1e-3)  # float16: ~3 significant digits
    np.testing.assert_array_equal(t.masks, masks.astype(bool))
    assert M.pixel_auroc(t.masks, t.raw()) == pytest.approx(M.pixel_auroc(masks, maps), abs=1e-3)
    assert M.aupro(t.masks, t.raw()) == pytest.approx(M.aupro(masks, maps), abs=1e-3)


def test_large_maps_are_block_averaged_below_max_side(tmp_path):
    paths, labels, maps, masks = _case(size=64)
    save_test_maps(tmp_path, paths, labels, maps, masks, np.ones(8, bool), max_side=32)
    t = load_test_maps(tmp_path)
    assert t.factor == 2 and t.maps.shape == (8, 32, 32)
    np.testing.assert_allclose(t.raw(3), maps[3].reshape(32, 2, 32, 2).mean(axis=(1, 3)), rtol=1e-3)
    assert t.masks.shape == (8, 32, 32)


def test_no_masks_and_missing_file(tmp_path):
    paths, labels, maps, _ = _case()
    save_test_maps(tmp_path, paths, labels, maps)
    t = load_test_maps(tmp_path / MAPS_FILE)
    assert t.masks is None and not t.has_mask.any()
    assert load_test_maps(tmp_path / "nothing") is None


def test_bad_input_and_corrupt_file(tmp_path):
    paths, labels, maps, _ = _case()
    with pytest.raises(DataError, match=r"maps must be \[7,H,W\]"):
        save_test_maps(tmp_path, paths[:7], labels[:7], maps)
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        save_test_maps(tmp_path, paths, labels, bad)
    (tmp_path / MAPS_FILE).write_bytes(b"not a zip")
    with pytest.raises(DataError, match="unreadable saved maps"):
        load_test_maps(tmp_path)


def test_writer_streams_one_group_per_category_and_cleans_up(tmp_path):
    w = MapsWriter(tmp_path)
    cases = {c: _case(seed=i) for i, c in enumerate(("syn_a", "syn_b"))}
    for c, (paths, labels, maps, masks) in cases.items():
        w.add(c, [p.replace("/x/", f"/{c}/") for p in paths], labels, maps, masks if c == "syn_a" else None,
              labels == 1)
    assert not (tmp_path / MAPS_FILE).exists()  # visible only once complete
    w.close()
    a, b = load_test_maps(tmp_path, "syn_a"), load_test_maps(tmp_path, "syn_b")
    assert a.paths[0].startswith("/data/syn_a/") and b.paths[0].startswith("/data/syn_b/")
    np.testing.assert_allclose(b.raw(), cases["syn_b"][2], rtol=1e-3, atol=1e-3)
    assert a.masks is not None and b.masks is None
    assert load_test_maps(tmp_path, "syn_c") is None
    failed = MapsWriter(tmp_path / "failed")
    failed.add("syn_a", *cases["syn_a"][:3])
    failed.abort()  # a failed run leaves neither the file nor its temporary
    assert list((tmp_path / "failed").iterdir()) == []
