"""Dataset listings and data modules on tiny hand-built MVTec / VisA-raw / BTAD / folder layouts."""
from __future__ import annotations

import csv
import inspect
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ad.data import AnomalyDataModule, split_validation
from ad.data._base import Sample
from ad.io import DataFileError, load_mask
from ad.data.btad import BTAD, list_btad
from ad.data.folder import Folder, list_folder
from ad.data.mvtec import MVTecAD, list_mvtec
from ad.data.visa import VisA, list_visa, read_visa_split
from ad.errors import DataError
from ad.registry import DATASETS

REPO = Path(__file__).resolve().parent.parent

# A 60x40 (w x h) image with a known defect rectangle: x in [30,45), y in [10,20).
W, H = 60, 40
RECT = (slice(10, 20), slice(30, 45))


def _img(path: Path, value: int = 120, mode: str = "RGB", size=(W, H), rect_colour=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, np.uint8)
    arr[..., 1] = (value + 17) % 256  # not grey: channel order is checked
    if rect_colour is not None:
        arr[RECT] = rect_colour
    im = Image.fromarray(arr)
    if mode == "L":
        im = im.convert("L")
    im.save(path)
    return path


def _mask(path: Path, value: int = 255, size=(W, H), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size[1], size[0]), np.uint8)
    m[RECT] = value
    im = Image.fromarray(m)
    if mode == "P":
        im = im.convert("P")
        im.putpalette([0, 0, 0] * 256)  # every label drawn black: must be read by index, not colour
    im.save(path)
    return path


def _mvtec(root: Path, cat: str = "widget", n_train=5, n_good=2, defects=(("crack", 2), ("hole", 1)),
           masks=True, gray=False) -> Path:
    c = root / cat
    mode = "L" if gray else "RGB"
    for i in range(n_train):
        _img(c / "train" / "good" / f"{i:03d}.png", 100 + i, mode)
    for i in range(n_good):
        _img(c / "test" / "good" / f"{i:03d}.png", 90 + i, mode)
    for d, n in defects:
        for i in range(n):
            _img(c / "test" / d / f"{i:03d}.png", 80, mode, rect_colour=(250, 10, 10))
            if masks:
                _mask(c / "ground_truth" / d / f"{i:03d}_mask.png")
    return root


# --------------------------------------------------------------------------------------------------------------
# MVTec AD
# --------------------------------------------------------------------------------------------------------------

def test_mvtec_listing_counts_labels_masks(tmp_path):
    _mvtec(tmp_path)
    (tmp_path / "widget" / "ground_truth" / "hole" / "000_mask.png").unlink()  # one mask missing
    samples = list_mvtec(tmp_path, "widget")
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == "test"]
    assert len(train) == 5 and all(s.label == 0 and s.defect_type == "good" for s in train)
    assert Counter(s.defect_type for s in test) == {"good": 2, "crack": 2, "hole": 1}
    assert all(s.label == (s.defect_type != "good") for s in test)
    masked = {Path(s.path).relative_to(tmp_path).as_posix(): s.mask_path for s in test if s.label}
    assert masked["widget/test/crack/001.png"].endswith("widget/ground_truth/crack/001_mask.png")
    assert masked["widget/test/hole/000.png"] is None


def test_mvtec_partial_masks_warn_once_and_no_pixel_metrics(tmp_path, caplog):
    _mvtec(tmp_path)
    (tmp_path / "widget" / "ground_truth" / "hole" / "000_mask.png").unlink()
    dm = MVTecAD(str(tmp_path), "widget", image_size=16, val_fraction=0.2)
    with caplog.at_level(logging.WARNING, logger="ad.data"):
        assert dm.has_masks is False
        dm.samples("train"), dm.samples("val"), dm.samples("test")
        for _ in dm.dataloader("test", batch_size=4):
            pass
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 of 3 anomalous test images have no mask" in warnings[0].getMessage()


def test_mvtec_without_masks_single_warning(tmp_path, caplog):
    _mvtec(tmp_path, masks=False)
    dm = MVTecAD(str(tmp_path), "widget", image_size=16)
    with caplog.at_level(logging.WARNING, logger="ad.data"):
        dm.setup()
        dm.setup()
        assert not dm.has_masks
        batch = next(iter(dm.dataloader("test", batch_size=8)))
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1 and "no ground-truth masks" in msgs[0] and "unavailable" in msgs[0]
    assert not batch["has_mask"].any() and (batch["mask"] == 0).all()
    assert batch["label"].sum() == 3


def test_grayscale_images_become_three_channels(tmp_path):
    _mvtec(tmp_path, gray=True)
    with Image.open(tmp_path / "widget" / "train" / "good" / "000.png") as im:
        assert im.mode == "L"
    dm = MVTecAD(str(tmp_path), "widget", image_size=8, val_fraction=0.0)
    batch = next(iter(dm.dataloader("train", batch_size=5)))
    assert batch["image"].shape == (5, 3, 8, 8)
    assert torch.equal(batch["image"][:, 0], batch["image"][:, 1]) and torch.equal(batch["image"][:, 1], batch["image"][:, 2])


def test_mask_and_image_alignment_after_resize_and_crop(tmp_path):
    _mvtec(tmp_path, defects=(("crack", 1),))
    # 60x40 -> 20x20: x scales by 1/3, y by 1/2, so the rectangle x[30,45) y[10,20) lands at x[10,15) y[5,10).
    dm = MVTecAD(str(tmp_path), "widget", image_size=20, val_fraction=0.0)
    item = dm.dataset("test")[[s.defect_type for s in dm.samples("test")].index("crack")]
    expected = torch.zeros(20, 20)
    expected[5:10, 10:15] = 1
    assert torch.equal(item["mask"], expected)
    assert item["has_mask"] is True and item["label"] == 1
    red = (item["image"][0] > 0.9) & (item["image"][1] < 0.1)
    assert red[expected.bool()].float().mean() > 0.5  # image pixels moved with the mask
    assert not red[~expected.bool()].any()
    # Centre crop 10 of the 20x20 resize: offset (5,5) -> rectangle at x[5,10) y[0,5).
    dm = MVTecAD(str(tmp_path), "widget", image_size=20, center_crop=10, val_fraction=0.0)
    item = dm.dataset("test")[[s.defect_type for s in dm.samples("test")].index("crack")]
    expected = torch.zeros(10, 10)
    expected[0:5, 5:10] = 1
    assert item["image"].shape == (3, 10, 10) and torch.equal(item["mask"], expected)
    # (height, width) keeps the aspect ratio: 40x60 -> 20x30; nearest samples source pixel 2i+1, so x[15,22) y[5,10).
    dm = MVTecAD(str(tmp_path), "widget", image_size=(20, 30), val_fraction=0.0)
    item = dm.dataset("test")[[s.defect_type for s in dm.samples("test")].index("crack")]
    ys, xs = torch.nonzero(item["mask"], as_tuple=True)
    assert item["mask"].shape == (20, 30)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 9, 15, 21)


def test_center_crop_larger_than_image_size_is_rejected(tmp_path):
    with pytest.raises(DataError, match=r"dataset.center_crop=300 is larger than dataset.image_size=256"):
        MVTecAD(str(tmp_path), "widget", image_size=256, center_crop=300)


def test_mvtec_errors(tmp_path):
    with pytest.raises(DataError, match=r"MVTec AD root .*nope does not exist; .*dataset.root=<dir>"):
        list_mvtec(tmp_path / "nope", "bottle")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"has no MVTec AD category folders: expected <root>/<category>/train/good"):
        list_mvtec(tmp_path / "empty", "bottle")
    _mvtec(tmp_path / "ok", "widget")
    _mvtec(tmp_path / "ok", "gadget")
    with pytest.raises(DataError, match=r"unknown MVTec AD category 'bottle'.*available under .*: gadget, widget"):
        list_mvtec(tmp_path / "ok", "bottle")
    with pytest.raises(DataError, match=r"is itself a category folder; set dataset.root=.*ok and category=widget"):
        list_mvtec(tmp_path / "ok" / "widget", "bottle")
    (tmp_path / "ok" / "notrain" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"expected folder .*notrain/train/good is missing"):
        list_mvtec(tmp_path / "ok", "notrain")
    (tmp_path / "ok" / "notest" / "train" / "good").mkdir(parents=True)
    _img(tmp_path / "ok" / "notest" / "train" / "good" / "a.png")
    with pytest.raises(DataError, match=r"expected folder .*notest/test is missing"):
        list_mvtec(tmp_path / "ok", "notest")
    (tmp_path / "ok" / "emptytrain" / "train" / "good").mkdir(parents=True)
    (tmp_path / "ok" / "emptytrain" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty train set: no images in .*emptytrain/train/good"):
        MVTecAD(str(tmp_path / "ok"), "emptytrain").setup()
    _img(tmp_path / "ok" / "emptytrain" / "train" / "good" / "a.png")
    with pytest.raises(DataError, match=r"no test images in .*emptytrain/test"):
        list_mvtec(tmp_path / "ok", "emptytrain")


def _single_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    return msg


def test_corrupt_truncated_and_mismatched_files_name_the_file(tmp_path):
    """Files that go bad after setup()'s pre-check are still reported by the loader, one line each."""
    _mvtec(tmp_path, n_train=2, defects=(("crack", 1),))
    c = tmp_path / "widget"
    dm = MVTecAD(str(tmp_path), "widget", image_size=8, val_fraction=0.0).setup()
    (c / "train" / "good" / "000.png").write_bytes(b"this is not a png")
    good = (c / "train" / "good" / "001.png").read_bytes()
    (c / "train" / "good" / "001.png").write_bytes(good[: len(good) // 2])
    _mask(c / "ground_truth" / "crack" / "000_mask.png", size=(30, 20))
    ds = dm.dataset("train")
    with pytest.raises(DataError) as e:
        ds[0]
    assert "cannot read image" in _single_line(e.value) and "000.png" in str(e.value)
    with pytest.raises(DataError) as e:
        ds[1]
    assert "cannot read image" in _single_line(e.value) and "001.png" in str(e.value)
    test = dm.dataset("test")
    idx = [s.defect_type for s in test.samples].index("crack")
    with pytest.raises(DataError) as e:
        test[idx]
    assert _single_line(e.value).startswith(f"mask {c / 'ground_truth' / 'crack' / '000_mask.png'} is 30x20 but its image is 60x40")
    (c / "test" / "good" / "000.png").unlink()
    with pytest.raises(DataError, match=r"image file .*test/good/000.png does not exist"):
        test[[Path(s.path).relative_to(c).as_posix() for s in test.samples].index("test/good/000.png")]


def test_worker_errors_stay_one_line(tmp_path):
    _mvtec(tmp_path, n_train=2, defects=(("crack", 1),))
    dm = MVTecAD(str(tmp_path), "widget", image_size=8, val_fraction=0.0).setup()
    (tmp_path / "widget" / "train" / "good" / "000.png").write_bytes(b"garbage")
    with pytest.raises(DataFileError) as e:
        next(iter(dm.dataloader("train", batch_size=2, num_workers=1)))
    msg = _single_line(e.value)
    assert msg.startswith("cannot read image") and "000.png" in msg


def test_non_binary_palette_and_colour_masks(tmp_path):
    for name, kw in {"ids.png": dict(value=3), "pal.png": dict(value=1, mode="P")}.items():
        m = np.asarray(load_mask(_mask(tmp_path / name, **kw), (W, H)))
        expected = np.zeros((H, W), np.uint8)
        expected[RECT] = 255
        assert np.array_equal(m, expected), name
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[RECT] = (0, 0, 1)  # luminance rounds to 0: must still count
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert (np.asarray(load_mask(tmp_path / "rgb.png", (W, H))) > 0).sum() == 10 * 15


# --------------------------------------------------------------------------------------------------------------
# Validation split
# --------------------------------------------------------------------------------------------------------------

def test_validation_split_properties(tmp_path):
    _mvtec(tmp_path, n_train=20, n_good=3)
    dm = MVTecAD(str(tmp_path), "widget", val_fraction=0.25, seed=1)
    train, val, test = dm.samples("train"), dm.samples("val"), dm.samples("test")
    assert len(val) == 5 and len(train) == 15
    assert not {s.path for s in train} & {s.path for s in val}
    assert all(s.label == 0 and s.split == "train" for s in val)
    assert not {s.path for s in val} & {s.path for s in test}
    assert {s.path for s in train} | {s.path for s in val} == {
        str(p) for p in (tmp_path / "widget" / "train" / "good").iterdir()}
    again = MVTecAD(str(tmp_path), "widget", val_fraction=0.25, seed=1).samples("val")
    assert [s.path for s in again] == [s.path for s in val]
    others = {tuple(s.path for s in MVTecAD(str(tmp_path), "widget", val_fraction=0.25, seed=k).samples("val"))
              for k in range(2, 6)}
    assert any(set(o) != {s.path for s in val} for o in others)
    assert MVTecAD(str(tmp_path), "widget", val_fraction=0.0).samples("val") == []
    # A tiny positive fraction still holds one image out; a whole train set is never taken.
    assert len(split_validation([Sample(f"{i}", 0, split="train") for i in range(5)], 0.01, 0)[1]) == 1
    with pytest.raises(DataError, match=r"dataset.val_fraction=1.0 must be in \[0, 1\)"):
        MVTecAD(str(tmp_path), "widget", val_fraction=1.0).setup()


def test_anomalous_training_image_is_rejected(tmp_path):
    class Bad(AnomalyDataModule):
        name = "bad"

        def list_samples(self):
            return [Sample("a.png", 1, "x", None, "train"), Sample("b.png", 0, "good", None, "test")]

    with pytest.raises(DataError, match="training split contains anomalous images"):
        Bad(str(tmp_path), "c").setup()


# --------------------------------------------------------------------------------------------------------------
# VisA (raw release + split csv)
# --------------------------------------------------------------------------------------------------------------

def _visa(root: Path, objects=("candle", "pcb1"), images=True) -> Path:
    rows = []
    for obj in objects:
        for split, label, n in (("train", "normal", 4), ("test", "normal", 2), ("test", "anomaly", 3)):
            for i in range(n):
                folder = "Normal" if label == "normal" else "Anomaly"
                num = f"{split[:2]}{i:03d}"
                img = f"{obj}/Data/Images/{folder}/{num}.JPG"
                mask = f"{obj}/Data/Masks/Anomaly/{num}.png" if label == "anomaly" else ""
                rows.append((obj, split, label, img, mask))
                if images:
                    _img(root / img, 70, rect_colour=(250, 10, 10) if mask else None)
                    if mask:
                        _mask(root / mask, value=i + 1)  # VisA masks hold label ids, not 255
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root


def test_visa_listing_and_masks(tmp_path):
    _visa(tmp_path)
    samples = list_visa(tmp_path, "pcb1")
    assert Counter((s.split, s.label) for s in samples) == {("train", 0): 4, ("test", 0): 2, ("test", 1): 3}
    assert all(s.path.startswith(str(tmp_path / "pcb1" / "Data" / "Images")) for s in samples)
    assert all((s.mask_path is not None) == (s.label == 1) for s in samples)
    dm = VisA(str(tmp_path), "pcb1", image_size=20, val_fraction=0.25, min_val=1)
    assert len(dm.samples("train")) == 3 and len(dm.samples("val")) == 1 and dm.has_masks
    batch = next(iter(dm.dataloader("test", batch_size=5)))
    expected = torch.zeros(20, 20)
    expected[5:10, 10:15] = 1
    for m, lab in zip(batch["mask"], batch["label"]):
        assert torch.equal(m, expected if lab == 1 else torch.zeros(20, 20))


def test_visa_csv_without_images(tmp_path):
    _visa(tmp_path, images=False)
    assert len(list_visa(tmp_path, "candle", check_files=False)) == 9
    with pytest.raises(DataError, match=r"expected folder .*candle/Data/Images is missing .*extract the VisA 'candle'"):
        VisA(str(tmp_path), "candle").setup()
    _img(tmp_path / "candle" / "Data" / "Images" / "Normal" / "tr000.JPG")
    with pytest.raises(DataError, match=r"\d+ file\(s\) listed in .*1cls.csv for 'candle' are missing, e.g. .*tr001.JPG"):
        VisA(str(tmp_path), "candle").setup()


def test_visa_errors(tmp_path):
    with pytest.raises(DataError, match=r"VisA root .*missing does not exist"):
        list_visa(tmp_path / "missing", "candle")
    (tmp_path / "candle" / "Data" / "Images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"VisA split file .*split_csv/1cls.csv not found; copy split_csv/1cls.csv"):
        VisA(str(tmp_path), "candle").setup()
    _visa(tmp_path, images=False)
    with pytest.raises(DataError, match=r"unknown VisA category 'bottle': .*valid: candle, pcb1"):
        list_visa(tmp_path, "bottle", check_files=False)
    (tmp_path / "bad.csv").write_text("object,split,image\ncandle,train,a.JPG\n")
    with pytest.raises(DataError, match=r"bad.csv lacks column\(s\) label, mask"):
        read_visa_split(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("object,split,label,image,mask\ncandle,train,normal,a.JPG,\ncandle,val,normal,b.JPG,\n")
    with pytest.raises(DataError, match=r"bad2.csv line 3: split 'val' is not train/test"):
        list_visa(tmp_path, "candle", split_file="bad2.csv", check_files=False)


def test_real_visa_split_counts(visa_split_csv):
    root = visa_split_csv.parent.parent
    with open(visa_split_csv, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    expected = Counter((r[0], r[1], r[2]) for r in rows)
    objects = sorted({r[0] for r in rows})
    assert len(objects) == 12 and len(rows) == 10821
    for obj in objects:
        samples = list_visa(root, obj, check_files=False)
        got = Counter((obj, s.split, "anomaly" if s.label else "normal") for s in samples)
        assert got == {k: v for k, v in expected.items() if k[0] == obj}
        assert sum(s.mask_path is not None for s in samples) == sum(1 for r in rows if r[0] == obj and r[4])


# --------------------------------------------------------------------------------------------------------------
# BTAD
# --------------------------------------------------------------------------------------------------------------

def _btad(root: Path) -> Path:
    exts = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}  # (image, mask)
    for cat, (ie, me) in exts.items():
        c = root / cat
        for i in range(4):
            _img(c / "train" / "ok" / f"{i:04d}{ie}")
        _img(c / "test" / "ok" / f"{0:04d}{ie}")
        for i in range(2):
            _img(c / "test" / "ko" / f"{i:04d}{ie}", rect_colour=(250, 10, 10))
            _mask(c / "ground_truth" / "ko" / f"{i:04d}{me}")
    return root


def test_btad_mixed_extensions(tmp_path):
    _btad(tmp_path)
    for cat in ("01", "02", "03"):
        samples = list_btad(tmp_path, cat)
        assert Counter((s.split, s.label) for s in samples) == {("train", 0): 4, ("test", 0): 1, ("test", 1): 2}
        for s in samples:
            if s.label:
                assert Path(s.mask_path).stem == Path(s.path).stem and Path(s.mask_path).parent.name == "ko"
    dm = BTAD(str(tmp_path), 1, image_size=20, val_fraction=0.25)  # an integer category from YAML/CLI
    assert dm.category == "01" and dm.has_masks
    batch = next(iter(dm.dataloader("test", batch_size=3)))
    expected = torch.zeros(20, 20)
    expected[5:10, 10:15] = 1
    assert all(torch.equal(m, expected) for m, lab in zip(batch["mask"], batch["label"]) if lab == 1)


def test_btad_errors(tmp_path):
    with pytest.raises(DataError, match=r"BTAD root .* does not exist"):
        list_btad(tmp_path / "x", "01")
    _btad(tmp_path)
    with pytest.raises(DataError, match=r"unknown BTAD category '04'.*available under .*: 01, 02, 03"):
        list_btad(tmp_path, "04")
    with pytest.raises(DataError, match=r"is itself a BTAD category folder"):
        list_btad(tmp_path / "02", "01")
    (tmp_path / "04" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"expected folder .*04/train/ok is missing"):
        list_btad(tmp_path, "04")
    (tmp_path / "04" / "train" / "ok").mkdir()
    with pytest.raises(DataError, match=r"expected folders .*04/test/ok and .*04/test/ko are missing"):
        list_btad(tmp_path, "04")
    (tmp_path / "04" / "test" / "ok").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty train set: no images in .*04/train/ok"):
        list_btad(tmp_path, "04")


# --------------------------------------------------------------------------------------------------------------
# Folder
# --------------------------------------------------------------------------------------------------------------

def test_folder_with_subfolders_masks_and_hash_split(tmp_path):
    for i in range(10):
        _img(tmp_path / "ok" / f"n{i}.png")
    _img(tmp_path / "bad" / "a.jpg", rect_colour=(250, 10, 10))
    _img(tmp_path / "bad" / "scratch" / "b.png", rect_colour=(250, 10, 10))
    _img(tmp_path / "bad" / "scratch" / "c.png", rect_colour=(250, 10, 10))
    _mask(tmp_path / "gt" / "a_mask.png")
    _mask(tmp_path / "gt" / "scratch" / "b.bmp")
    samples = list_folder(tmp_path, "ok", "bad", "gt", None, 0.3)
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == "test"]
    assert len(train) == 7 and sum(s.label == 0 for s in test) == 3
    anomalous = {Path(s.path).name: s for s in test if s.label}
    assert anomalous["a.jpg"].defect_type == "bad" and anomalous["a.jpg"].mask_path.endswith("gt/a_mask.png")
    assert anomalous["b.png"].defect_type == "scratch" and anomalous["b.png"].mask_path.endswith("gt/scratch/b.bmp")
    assert anomalous["c.png"].mask_path is None
    # The held-out normals depend on file names only: same for any seed, stable when images are added.
    held = {s.path for s in test if s.label == 0}
    for seed in (0, 1):
        dm = Folder(str(tmp_path), normal_dir="ok", abnormal_dir="bad", mask_dir="gt", normal_test_fraction=0.3,
                    seed=seed, val_fraction=0.2)
        assert {s.path for s in dm.samples("test") if s.label == 0} == held
        assert not {s.path for s in dm.samples("train") + dm.samples("val")} & held
    # An explicit normal test folder: all of normal_dir trains.
    for i in range(2):
        _img(tmp_path / "ok_test" / f"t{i}.png")
    s2 = list_folder(tmp_path, "ok", str(tmp_path / "bad"), None, "ok_test")
    assert sum(s.split == "train" for s in s2) == 10 and sum(s.split == "test" and s.label == 0 for s in s2) == 2
    assert all(s.mask_path is None for s in s2)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match=r"folder dataset root .* does not exist"):
        list_folder(tmp_path / "none")
    with pytest.raises(DataError, match=r"expected folder .*good is missing \(dataset.normal_dir=good\)"):
        list_folder(tmp_path)
    (tmp_path / "good").mkdir()
    with pytest.raises(DataError, match=r"expected folder .*defect is missing \(dataset.abnormal_dir=defect\)"):
        list_folder(tmp_path)
    (tmp_path / "defect").mkdir()
    with pytest.raises(DataError, match=r"empty train set: no images in .*good \(dataset.normal_dir\)"):
        list_folder(tmp_path)
    _img(tmp_path / "good" / "x.png")
    _img(tmp_path / "good" / "y.png")
    with pytest.raises(DataError, match=r"no images in .*defect \(dataset.abnormal_dir\)"):
        list_folder(tmp_path)
    with pytest.raises(DataError, match=r"expected folder .*masks is missing \(dataset.mask_dir=masks\)"):
        list_folder(tmp_path, mask_dir="masks")
    with pytest.raises(DataError, match=r"dataset.abnormal_dir is not set"):
        list_folder(tmp_path, abnormal_dir=None)


# --------------------------------------------------------------------------------------------------------------
# Real MVTec bottle (optional) and configs
# --------------------------------------------------------------------------------------------------------------

def test_real_bottle_counts_and_single_warning(bottle_root, caplog):
    dm = MVTecAD(str(bottle_root), "bottle", image_size=32, val_fraction=0.1, seed=0)
    with caplog.at_level(logging.WARNING, logger="ad.data"):
        train, val, test = dm.samples("train"), dm.samples("val"), dm.samples("test")
        assert not dm.has_masks
    assert len(train) + len(val) == 209 and len(val) == round(209 * 0.1)
    assert len(test) == 83 and sum(s.label for s in test) == 63
    assert Counter(s.defect_type for s in test) == {"good": 20, "broken_large": 20, "broken_small": 22,
                                                     "contamination": 21}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no ground-truth masks" in warnings[0].getMessage()


@pytest.mark.parametrize("name", ["mvtec", "visa", "btad", "folder", "synthetic"])
def test_dataset_yaml_matches_class_signature(name):
    cfg = yaml.safe_load((REPO / "conf" / "dataset" / f"{name}.yaml").read_text())
    cls = DATASETS.get(name)
    assert cfg["_target_"] == f"{cls.__module__}.{cls.__name__}"
    # the keywords the class accepts: its own, and AnomalyDataModule's that it forwards as **common
    own = inspect.signature(cls.__init__).parameters
    params = {p for p, v in own.items() if p != "self" and v.kind is not inspect.Parameter.VAR_KEYWORD}
    if any(v.kind is inspect.Parameter.VAR_KEYWORD for v in own.values()):
        params |= set(inspect.signature(AnomalyDataModule.__init__).parameters) - {"self"}
    assert set(cfg) - {"_target_"} == params


def _png_variants(tmp_path: Path) -> dict:
    """PNG files of every kind Pillow writes, with noisy pixels (so every PNG filter type occurs)."""
    from PIL import PngImagePlugin

    rng = np.random.default_rng(0)
    rgb = (rng.integers(0, 256, (37, 53, 3)) // 3 * 3).astype(np.uint8)  # 37x53: rows not a multiple of 8
    grey = rgb[..., 0].copy()
    gamma = PngImagePlugin.PngInfo()
    gamma.add(b"gAMA", (45455).to_bytes(4, "big"))  # a gamma chunk: Pillow does not apply it, nor may we
    files = {}

    def save(name, image, **kw):
        files[name] = tmp_path / f"{name}.png"
        image.save(files[name], **kw)

    save("rgb", Image.fromarray(rgb))
    save("rgb_level1", Image.fromarray(rgb), compress_level=1)
    save("rgb_gamma", Image.fromarray(rgb), pnginfo=gamma)
    save("rgb_trns", Image.fromarray(rgb), transparency=tuple(int(v) for v in rgb[0, 0]))
    save("grey", Image.fromarray(grey))
    save("grey_trns", Image.fromarray(grey), transparency=int(grey[0, 0]))
    save("rgba", Image.fromarray(np.dstack([rgb, grey])))
    save("palette", Image.fromarray(rgb).quantize(16))
    save("grey16", Image.fromarray((grey.astype(np.uint16) * 257)))
    save("bilevel", Image.fromarray(grey > 127))
    return files


def test_fast_png_decoder_gives_pillows_pixels(tmp_path, monkeypatch):
    """libspng decodes 8-bit grey/RGB PNGs (the MVTec/VisA/BTAD kinds) to exactly the pixels Pillow gives;
    every other kind is left to Pillow."""
    import ad.io.images as base

    pytest.importorskip("pyspng")
    files = _png_variants(tmp_path)
    fast = {name: base._fast_png(p.read_bytes()) for name, p in files.items()}
    assert {n for n, im in fast.items() if im is not None} == {"rgb", "rgb_level1", "rgb_gamma",
                                                               "rgb_trns", "grey", "grey_trns"}
    via_fast = {name: np.asarray(base.load_image(p)) for name, p in files.items()}
    monkeypatch.setattr(base, "_spng", None)
    monkeypatch.setattr(base, "_fast_png", lambda data: pytest.fail("libspng used without pyspng"))
    for name, p in files.items():
        reference = np.asarray(base.load_image(p))  # Pillow only
        assert reference.shape == (37, 53, 3) and reference.dtype == np.uint8, name
        np.testing.assert_array_equal(via_fast[name], reference, err_msg=name)


def test_fast_png_decoder_leaves_broken_files_to_pillows_error(tmp_path):
    import ad.io.images as base

    pytest.importorskip("pyspng")
    p = _png_variants(tmp_path)["rgb"]
    p.write_bytes(p.read_bytes()[:200])  # truncated inside IDAT
    assert base._fast_png(p.read_bytes()) is None
    with pytest.raises(DataFileError, match=str(p)):
        base.load_image(p)


def test_fast_png_decoder_on_real_mvtec_files(bottle_root, monkeypatch):
    """The real MVTec AD bottle PNGs decode to the same pixels through libspng as through Pillow."""
    import ad.io.images as base

    pytest.importorskip("pyspng")
    files = sorted((bottle_root / "bottle" / "test").rglob("*.png"))[::8]
    assert files and all(base._fast_png(p.read_bytes()) is not None for p in files)
    fast = [np.asarray(base.load_image(p)) for p in files]
    monkeypatch.setattr(base, "_spng", None)
    for p, a in zip(files, fast):
        np.testing.assert_array_equal(a, np.asarray(base.load_image(p)), err_msg=str(p))
