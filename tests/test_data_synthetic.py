"""The generated synthetic dataset: layout, counts, determinism, exact masks, write-once behaviour."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ad.data import synthetic as S
from ad.data.mvtec import list_mvtec
from ad.errors import DataError
from ad.registry import DATASETS


def _tree_digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_and_counts(synthetic_root: Path):
    # conftest: num_train=12, num_test_good=4, num_test_defect=2 (per defect type), size=64
    for cat in ("syn_tiles", "syn_weave", "syn_disc"):
        c = synthetic_root / cat
        assert len(list((c / "train" / "good").glob("*.png"))) == 12
        assert len(list((c / "test" / "good").glob("*.png"))) == 4
        test_dirs = sorted(p.name for p in (c / "test").iterdir())
        assert test_dirs == sorted(["good", "scratch", "spot", "stain", "cut_paste"])
        for d in ("scratch", "spot", "stain", "cut_paste"):
            imgs = sorted(p.stem for p in (c / "test" / d).glob("*.png"))
            masks = sorted(p.stem for p in (c / "ground_truth" / d).glob("*.png"))
            assert imgs == ["000", "001"]
            assert masks == [f"{s}_mask" for s in imgs]
        with Image.open(c / "train" / "good" / "000.png") as im:
            assert im.size == (64, 64) and im.mode == "RGB"
        samples = list_mvtec(synthetic_root, cat)
        assert sum(s.split == "train" for s in samples) == 12
        test = [s for s in samples if s.split == "test"]
        assert len(test) == 4 + 4 * 2
        assert sum(s.label for s in test) == 8
        assert all((s.mask_path is not None) == (s.label == 1) for s in test)


def test_masks_nonempty_exactly_for_defect_images(synthetic_root: Path):
    for mask_path in synthetic_root.glob("*/ground_truth/*/*_mask.png"):
        m = np.asarray(Image.open(mask_path))
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
        assert 0 < (m > 0).sum() < 0.25 * m.size, mask_path  # a defect, not the whole image
    # Good images have no masks at all.
    assert not list(synthetic_root.glob("*/ground_truth/good*"))


@pytest.mark.parametrize("category", ["syn_tiles", "syn_weave", "syn_disc"])
@pytest.mark.parametrize("defect", ["scratch", "spot", "stain", "cut_paste"])
def test_mask_is_exactly_where_pixels_changed(category: str, defect: str):
    for index in range(3):
        img, mask, clean = S.render_defect_with_clean(category, defect, 128, seed=3, index=index)
        changed = np.any(img != clean, axis=-1)
        assert changed.any()
        assert not (changed & ~mask).any(), "a pixel outside the mask changed"
        # Nearly all masked pixels visibly change (the few that do not are anti-aliased fringes that round
        # back to the same value).
        assert changed[mask].mean() > 0.6, (category, defect, index, changed[mask].mean())


def test_deterministic_bytes_and_seed_dependence(tmp_path: Path):
    kw = dict(categories=["syn_disc", "syn_weave"], num_train=3, num_test_good=2, num_test_defect=1, size=48)
    a = _tree_digest(S.generate_synthetic(tmp_path / "a", seed=5, **kw))
    b = _tree_digest(S.generate_synthetic(tmp_path / "b", seed=5, **kw))
    c = _tree_digest(S.generate_synthetic(tmp_path / "c", seed=6, **kw))
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in images if "train" in k)
    # An image's bytes do not depend on how many other images were requested.
    d = S.generate_synthetic(tmp_path / "d", seed=5, **{**kw, "num_train": 5})
    assert hashlib.sha256((d / "syn_disc/train/good/002.png").read_bytes()).hexdigest() == a["syn_disc/train/good/002.png"]


def test_normal_images_vary(tmp_path: Path):
    # Pose/lighting/phase vary between normal images: no two train images are identical.
    for cat in S.CATEGORIES:
        imgs = [S.render_normal(cat, 64, 0, "train", i).astype(np.int16) for i in range(4)]
        for i in range(4):
            for j in range(i + 1, 4):
                assert np.abs(imgs[i] - imgs[j]).mean() > 1.0


def test_written_once_and_regenerated_when_params_change(tmp_path: Path):
    kw = dict(categories=["syn_tiles"], num_train=2, num_test_good=1, num_test_defect=1, size=40, seed=0)
    root = S.generate_synthetic(tmp_path, **kw)
    f = root / "syn_tiles" / "train" / "good" / "000.png"
    os.utime(f, (1_000_000, 1_000_000))
    S.generate_synthetic(tmp_path, **kw)
    assert f.stat().st_mtime == 1_000_000  # untouched: same parameters
    marker = json.loads((root / "syn_tiles" / S.MARKER).read_text())
    assert marker["num_train"] == 2 and marker["size"] == 40
    S.generate_synthetic(tmp_path, **{**kw, "num_train": 3})
    assert len(list((root / "syn_tiles" / "train" / "good").glob("*.png"))) == 3
    assert json.loads((root / "syn_tiles" / S.MARKER).read_text())["num_train"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn_tiles"]  # no temp or trash folders left


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch):
    calls = {"n": 0}
    real_save = S._save_png

    def failing_save(arr, path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_save(arr, path)

    monkeypatch.setattr(S, "_save_png", failing_save)
    with pytest.raises(KeyboardInterrupt):
        S.generate_synthetic(tmp_path, categories=["syn_disc"], num_train=4, num_test_good=1, num_test_defect=1, size=40)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(S, "_save_png", real_save)
    S.generate_synthetic(tmp_path, categories=["syn_disc"], num_train=4, num_test_good=1, num_test_defect=1, size=40)
    assert (tmp_path / "syn_disc" / S.MARKER).is_file()


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path):
    (tmp_path / "syn_disc" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"syn_disc exists but was not generated by ad.*dataset.root"):
        S.generate_synthetic(tmp_path, categories=["syn_disc"], num_train=1, num_test_good=1, num_test_defect=1, size=40)


def test_unknown_category_lists_valid_ones(tmp_path: Path):
    with pytest.raises(DataError, match=r"unknown synthetic category 'nope'; valid: syn_tiles, syn_weave, syn_disc"):
        S.generate_synthetic(tmp_path, categories=["nope"])
    dm = DATASETS.get("synthetic")(root=str(tmp_path), category="nope")
    with pytest.raises(DataError, match="unknown synthetic category 'nope'"):
        dm.samples("train")


def test_datamodule_generates_on_first_use_and_batches(tmp_path: Path):
    dm = DATASETS.create(
        "synthetic", root=str(tmp_path / "syn"), category="syn_weave", num_train=10, num_test_good=3,
        num_test_defect=1, generated_size=48, generation_seed=1, image_size=32, center_crop=None,
        val_fraction=0.2, seed=0,
    )
    assert not (tmp_path / "syn").exists()  # nothing written before first use
    assert len(dm.samples("train")) == 8 and len(dm.samples("val")) == 2
    assert len(dm.samples("test")) == 3 + 4
    assert dm.has_masks
    batch = next(iter(dm.dataloader("test", batch_size=7)))
    assert batch["image"].shape == (7, 3, 32, 32) and batch["mask"].shape == (7, 32, 32)
    assert batch["label"].tolist() == [1 if d != "good" else 0 for d in batch["defect_type"]]
    defect = batch["label"] == 1
    assert (batch["mask"][defect].flatten(1).sum(1) > 0).all()
    assert (batch["mask"][~defect] == 0).all()
    assert batch["has_mask"].tolist() == defect.tolist()
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert batch["image"].dtype == torch.float32


def test_parallel_generation_keeps_the_first_finished_copy(tmp_path: Path, monkeypatch):
    """Two jobs of a sweep generating the same category: the one finishing second must not replace (and so
    briefly remove) the folder the first one is already reading."""
    kw = dict(categories=["syn_weave"], num_train=2, num_test_good=1, num_test_defect=1, size=40, seed=0)
    real_write = S._write_category
    winner = {}

    def write_then_other_job_finishes(dest, category, params):
        real_write(dest, category, params)
        other = Path(str(dest) + "-other")
        real_write(other, category, params)
        os.rename(other, tmp_path / category)  # the other job wins the rename
        winner["ino"] = (tmp_path / category).stat().st_ino

    monkeypatch.setattr(S, "_write_category", write_then_other_job_finishes)
    S.generate_synthetic(tmp_path, **kw)
    assert (tmp_path / "syn_weave").stat().st_ino == winner["ino"]
    monkeypatch.setattr(S, "_write_category", real_write)
    S.generate_synthetic(tmp_path, **kw)
    assert (tmp_path / "syn_weave").stat().st_ino == winner["ino"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn_weave"]


@pytest.mark.slow
def test_defects_detectable_but_not_trivially(tmp_path: Path):
    """A plain pretrained-feature nearest-neighbour detector (PatchCore without coreset) finds the defects
    well but not perfectly everywhere: the synthetic data is neither noise nor a giveaway."""
    import torch.nn.functional as F
    from sklearn.metrics import roc_auc_score

    from ad.backbones import BackboneConfig, FeatureExtractor
    from ad.errors import WeightsError

    try:
        fe = FeatureExtractor(BackboneConfig(name="tf_efficientnet_lite0", pretrained=True), layers=(2, 3)).eval()
    except WeightsError as exc:
        pytest.skip(str(exc))

    def patch_features(x):
        with torch.no_grad():
            fs = [F.avg_pool2d(f, 3, 1, 1) for f in fe(x)]
        size = fs[0].shape[-2:]
        f = torch.cat([F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in fs], 1)
        return f.permute(0, 2, 3, 1).reshape(len(x), -1, f.shape[1])

    aurocs = {}
    for cat in S.CATEGORIES:
        dm = DATASETS.create("synthetic", root=str(tmp_path), category=cat, num_train=30, num_test_good=20,
                             num_test_defect=5, generated_size=256, generation_seed=0, image_size=256,
                             val_fraction=0.0)
        bank = torch.cat([patch_features(b["image"]).flatten(0, 1) for b in dm.dataloader("train", 10)])
        bank = bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))[:12000]]
        scores, labels = [], []
        for b in dm.dataloader("test", 10):
            q = patch_features(b["image"])
            d = torch.cdist(q.flatten(0, 1), bank).min(1).values.reshape(q.shape[:2])
            scores += d.max(1).values.tolist()
            labels += b["label"].tolist()
        aurocs[cat] = roc_auc_score(labels, scores)
    assert min(aurocs.values()) > 0.75, aurocs
    assert sum(aurocs.values()) / len(aurocs) > 0.85, aurocs
    assert min(aurocs.values()) < 1.0, aurocs
