"""Data-layer robustness: bad values refused at construction, bad files found before training, the folder
dataset's label, generated-data permissions, k-shot training sets, the min_val rule and K-fold splits; plus the
tiny layouts of `tests/layouts.py` loading through their dataset classes."""
from __future__ import annotations

import os
import stat
from collections import Counter

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from ad.config import compose
from ad.data._base import Sample, kfold_split
from ad.data.folder import Folder
from ad.data.mvtec import MVTecAD
from ad.data.synthetic import generate_synthetic
from ad.errors import ConfigError, DataError
from tests.layouts import LAYOUTS
from tests.test_data import _mask, _mvtec


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# --- bad values: one line naming the key, at construction (setup is never called) ----------------------------
@pytest.mark.parametrize("key,value", [
    ("image_size", 0), ("image_size", -8), ("image_size", 1.5), ("image_size", "abc"), ("image_size", [0, 32]),
    ("image_size", [32, 32, 3]), ("image_size", True),
    ("center_crop", 0), ("center_crop", -4), ("center_crop", "x"), ("center_crop", [16, 0]),
    ("val_fraction", 1.0), ("val_fraction", -0.1), ("val_fraction", "abc"), ("val_fraction", float("nan")),
    ("shots", 0), ("shots", -1), ("shots", 1.5), ("shots", "two"), ("min_val", 0), ("seed", "abc"),
])
def test_bad_values_are_refused_at_construction_naming_the_key(tmp_path, key, value):
    kwargs = {"image_size": 32, key: value}
    with pytest.raises((ConfigError, DataError)) as e:
        MVTecAD(str(tmp_path / "not-even-there"), "widget", **kwargs)
    msg = _one_line(e)
    assert (f"dataset.{key}=" if key != "seed" else "seed=") in msg


@pytest.mark.parametrize("root", [None, "", "???"])
def test_unset_root_names_the_key(root):
    with pytest.raises(DataError, match=r"^dataset.root is not set .*set dataset.root=") as e:
        MVTecAD(root, "widget")
    _one_line(e)


def test_bad_value_errors_are_both_config_and_data_errors(tmp_path):
    """Callers that catch ConfigError (bad values) or DataError (dataset problems) both see them."""
    with pytest.raises(ConfigError):
        MVTecAD(str(tmp_path), "widget", image_size=0)
    with pytest.raises(DataError):
        MVTecAD(str(tmp_path), "widget", image_size=0)


def test_valid_sizes_are_accepted(tmp_path):
    assert MVTecAD(str(tmp_path), "w", image_size=[40, 60], center_crop=32).transform.output_size == (32, 32)
    assert MVTecAD(str(tmp_path), "w", image_size=(40, 60)).transform.output_size == (40, 60)


def test_composed_config_with_image_size_zero_fails_at_instantiate(tmp_path):
    cfg = compose(["dataset=mvtec", f"dataset.root={tmp_path}", "dataset.image_size=0"])
    with pytest.raises(Exception, match=r"dataset.image_size=0"):
        instantiate(cfg.dataset)


# --- bad files: found by setup(), before any training ------------------------------------------------------------
def test_corrupt_test_image_is_found_by_setup(tmp_path):
    _mvtec(tmp_path, n_train=4)
    bad = tmp_path / "widget" / "test" / "crack" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError) as e:
        MVTecAD(str(tmp_path), "widget", image_size=16).setup()
    msg = _one_line(e)
    assert str(bad) in msg and msg.startswith("1 of 9 listed files failed the pre-training check")


def test_truncated_png_is_found_by_setup(tmp_path):
    _mvtec(tmp_path, n_train=4)
    p = tmp_path / "widget" / "test" / "good" / "000.png"
    p.write_bytes(p.read_bytes()[:-20])  # header intact, image data cut: only a whole-file check sees it
    with pytest.raises(DataError, match=str(p)):
        MVTecAD(str(tmp_path), "widget", image_size=16).setup()


def test_wrong_size_mask_is_found_by_setup(tmp_path):
    _mvtec(tmp_path, n_train=4)
    m = _mask(tmp_path / "widget" / "ground_truth" / "hole" / "000_mask.png", size=(30, 20))
    with pytest.raises(DataError) as e:
        MVTecAD(str(tmp_path), "widget", image_size=16).setup()
    assert f"mask {m} is 30x20 but its image" in _one_line(e) and "is 60x40" in str(e.value)


def test_precheck_lists_a_count_and_a_few_examples(tmp_path):
    _mvtec(tmp_path, n_train=6)
    for i in range(6):
        (tmp_path / "widget" / "train" / "good" / f"{i:03d}.png").write_bytes(b"junk")
    with pytest.raises(DataError) as e:
        MVTecAD(str(tmp_path), "widget", image_size=16, val_fraction=0).setup()
    msg = _one_line(e)
    assert msg.startswith("6 of 11 listed files") and "(and 3 more)" in msg


def test_grey_16bit_and_palette_images_pass_the_precheck(tmp_path):
    _mvtec(tmp_path, n_train=3)
    Image.fromarray(np.full((40, 60), 40000, np.uint16)).save(tmp_path / "widget" / "train" / "good" / "000.png")
    Image.new("P", (60, 40)).save(tmp_path / "widget" / "train" / "good" / "001.png")
    MVTecAD(str(tmp_path), "widget", image_size=16).setup()  # no error
    MVTecAD(str(tmp_path), "widget", image_size=16).verify()


# --- the folder dataset's label -----------------------------------------------------------------------------------
def test_folder_dataset_is_labelled_by_its_root_not_syn_disc(tmp_path):
    root = tmp_path / "screws"
    cfg = compose(["dataset=folder", f"dataset.root={root}"])
    assert cfg.dataset.category == "screws"
    assert instantiate(cfg.dataset).category == "screws"
    assert compose(["dataset=folder"]).dataset.category == "custom"  # the default root datasets/custom
    assert compose(["dataset=folder", f"dataset.root={root}", "dataset.category=m3"]).dataset.category == "m3"
    assert Folder(str(root)).category == "screws"


def test_dataset_without_category_takes_its_own_default():
    assert compose(["dataset=mvtec"]).dataset.category == "bottle"
    assert compose(["dataset=visa"]).dataset.category == "candle"
    assert compose([]).dataset.category == "syn_disc"  # the no-argument run is unchanged
    cfg = compose(["category=carpet"])
    assert cfg.dataset.category == "carpet" and cfg.dataset._target_.endswith("MVTecAD")


# --- generated data permissions -----------------------------------------------------------------------------------
def test_generated_synthetic_dataset_is_world_readable(tmp_path):
    old = os.umask(0o022)
    try:
        generate_synthetic(tmp_path, ["syn_tiles"], num_train=2, num_test_good=1, num_test_defect=1, size=32)
    finally:
        os.umask(old)
    cat = tmp_path / "syn_tiles"
    assert stat.S_IMODE(cat.stat().st_mode) == 0o755
    files = [p for p in cat.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o755 for p in cat.rglob("*") if p.is_dir())


# --- k-shot training sets -----------------------------------------------------------------------------------------
def test_shots_are_nested_seeded_and_exact(tmp_path):
    _mvtec(tmp_path, n_train=20)

    def chosen(k, seed):
        dm = MVTecAD(str(tmp_path), "widget", image_size=16, shots=k, seed=seed)
        return [s.path for s in dm.samples("train")], dm

    for seed in (0, 1):
        sets = {k: chosen(k, seed)[0] for k in (1, 2, 4, 8, 16)}
        assert all(len(sets[k]) == k for k in sets)
        for a, b in ((1, 2), (2, 4), (4, 8), (8, 16)):
            assert set(sets[a]) < set(sets[b]), (seed, a, b)
        assert chosen(4, seed)[0] == sets[4]  # same seed, same images
    assert {tuple(chosen(4, s)[0]) for s in range(6)} != {tuple(chosen(4, 0)[0])}  # the seed matters
    paths, dm = chosen(2, 0)
    assert dm.samples("val") == [] and not dm.has_validation
    assert "dataset.shots=2" in dm.no_val_reason
    assert Counter(s.label for s in dm.samples("test")) == {0: 2, 1: 3}  # test set untouched


def test_shots_do_not_depend_on_listing_order(tmp_path):
    samples = [Sample(f"/x/{i:02d}.png", 0, split="train") for i in range(10)]
    from ad.data._base import choose_shots

    assert {s.path for s in choose_shots(samples, 3, 7)} == {s.path for s in choose_shots(samples[::-1], 3, 7)}


def test_more_shots_than_images_is_a_one_line_error(tmp_path):
    _mvtec(tmp_path, n_train=5)
    with pytest.raises(DataError, match=r"dataset.shots=8 but MVTec AD 'widget' has only 5 training normals") as e:
        MVTecAD(str(tmp_path), "widget", image_size=16, shots=8).setup()
    _one_line(e)


# --- the validation rule for small training sets --------------------------------------------------------------------
@pytest.mark.parametrize("n_train,fraction,min_val,n_val", [
    (20, 0.1, 2, 2), (120, 0.1, 2, 12), (12, 0.2, 2, 2), (15, 0.1, 2, 2),
    (8, 0.1, 2, 0), (4, 0.1, 2, 0), (2, 0.5, 2, 0), (1, 0.1, 2, 0), (1, 0.9, 1, 0), (3, 0.1, 1, 0), (4, 0.25, 1, 1),
    (20, 0.0, 2, 0), (3, 0.9, 1, 0),
])
def test_validation_is_held_out_only_when_enough(tmp_path, n_train, fraction, min_val, n_val):
    _mvtec(tmp_path, n_train=n_train)
    dm = MVTecAD(str(tmp_path), "widget", image_size=16, val_fraction=fraction, min_val=min_val)
    assert len(dm.samples("val")) == n_val
    assert len(dm.samples("train")) == n_train - n_val  # nothing is lost
    assert dm.has_validation == (n_val > 0)
    assert (dm.no_val_reason is None) == (n_val > 0)
    if n_val == 0:
        assert dm.no_val_reason.startswith("no held-out validation")


# --- K-fold splits of the training normals ---------------------------------------------------------------------------
@pytest.mark.parametrize("n,k", [(2, 2), (3, 5), (7, 3), (16, 5), (10, 10)])
def test_kfold_holds_every_sample_out_exactly_once(n, k):
    samples = [Sample(f"{i}", 0, split="train") for i in range(n)]
    folds = kfold_split(samples, k, seed=3)
    assert len(folds) == min(k, n)
    held = [s.path for _, h in folds for s in h]
    assert sorted(held) == sorted(s.path for s in samples)
    sizes = [len(h) for _, h in folds]
    assert max(sizes) - min(sizes) <= 1
    for fit, h in folds:
        assert fit and not {s.path for s in fit} & {s.path for s in h}
        assert len(fit) + len(h) == n
    assert kfold_split(samples, k, seed=3) == folds  # deterministic
    if n > k:
        assert any(kfold_split(samples, k, seed=s) != folds for s in range(4, 8))


def test_kfold_refuses_what_cannot_be_cross_fitted():
    with pytest.raises(DataError, match="at least 2 training normals"):
        kfold_split([Sample("a", 0)], 5, 0)
    with pytest.raises(ConfigError, match="k >= 2"):
        kfold_split([Sample("a", 0), Sample("b", 0)], 1, 0)


def test_data_module_folds_cover_the_training_split(tmp_path):
    _mvtec(tmp_path, n_train=4)
    dm = MVTecAD(str(tmp_path), "widget", image_size=16, shots=3)
    folds = dm.folds(5)  # 3 images: leave-one-out
    assert len(folds) == 3 and all(len(h) == 1 and len(f) == 2 for f, h in folds)
    assert {h[0].path for _, h in folds} == {s.path for s in dm.samples("train")}


# --- generated layouts load with the right counts ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_loads_through_its_dataset_class(name, tmp_path):
    layout = LAYOUTS[name](tmp_path / name)
    dm = layout.data_module(image_size=32, val_fraction=0.0)
    train, test = dm.samples("train"), dm.samples("test")
    assert len(train) == layout.n_train
    assert Counter(s.label for s in test) == {0: layout.n_test_good, 1: layout.n_test_bad}
    assert dm.has_masks
    batch = next(iter(dm.dataloader("test", batch_size=layout.n_test)))
    assert batch["image"].shape == (layout.n_test, 3, 32, 32)
    masks = batch["mask"][batch["label"] == 1]
    assert masks.shape[0] == layout.n_test_bad and bool((masks.flatten(1).sum(1) > 0).all())
    assert float(batch["mask"][batch["label"] == 0].sum()) == 0
    cfg = compose(layout.overrides)
    assert cfg.dataset.category == layout.category or str(cfg.dataset.category).zfill(2) == layout.category


def test_layout_kinds_are_what_they_claim(tmp_path):
    gray = LAYOUTS["gray_mvtec"](tmp_path / "g")
    images = [p for p in (gray.root / gray.category).rglob("*.png") if "ground_truth" not in str(p)]
    assert {Image.open(p).mode for p in images} == {"L"}
    btad = LAYOUTS["btad_mixed"](tmp_path / "b")
    exts = Counter(p.suffix for p in (btad.root / "02").rglob("*") if p.is_file())
    assert exts[".bmp"] > 0 and exts[".png"] > 0
    visa = LAYOUTS["visa_raw"](tmp_path / "v")
    assert (visa.root / "split_csv" / "1cls.csv").is_file()
    few = LAYOUTS["few_shot"](tmp_path / "f")
    dm = few.data_module(image_size=32)
    assert len(dm.samples("train")) == 3 and dm.samples("val") == [] and dm.no_val_reason


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_shots_work_on_every_layout(name, tmp_path):
    layout = LAYOUTS[name](tmp_path / name)
    for k in (1, 2, 3):
        dm = layout.data_module(image_size=32, shots=k, seed=5)
        assert len(dm.samples("train")) == k and dm.samples("val") == [] and dm.no_val_reason
        assert len(dm.samples("test")) == layout.n_test
    small = {s.path for s in layout.data_module(image_size=32, shots=2, seed=5).samples("train")}
    big = {s.path for s in layout.data_module(image_size=32, shots=3, seed=5).samples("train")}
    assert small < big


def test_shots_compose_from_the_command_line(tmp_path):
    layout = LAYOUTS["few_shot"](tmp_path)
    cfg = compose([*layout.overrides, "dataset.shots=2", "dataset.image_size=32"])
    dm = instantiate(cfg.dataset)
    assert dm.shots == 2 and len(dm.samples("train")) == 2
