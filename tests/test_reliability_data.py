"""Never wrong, round two — the data layer (issue 22, classes 3, 4, 5 and the `test/Good` label of class 7).

Each test reproduces a case that gave a silently wrong result before: a leak between splits, a mask borrowed from
another defect type, an image format decoded to the wrong values, a truncated file found only after training.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ad.data._base import load_image
from ad.data.folder import Folder, list_folder
from ad.data.leaks import check_disjoint, find_overlaps
from ad.data.mvtec import MVTecAD, list_mvtec
from ad.data.visa import list_visa
from ad.errors import DataError
from tests.layouts import gray_mvtec, visa_raw


def _scene(h: int = 40, w: int = 56) -> np.ndarray:
    """An under-exposed grey scene (values 0..60 of 255) with a faint defect: what a per-file stretch hides."""
    yy, xx = np.mgrid[0:h, 0:w]
    scene = (20 + 15 * np.sin(xx / 4.0) * np.cos(yy / 5.0)).round()
    scene[10:18, 20:30] = 60
    return scene.astype(np.uint8)


# --- class 5: image formats by one rule per bit depth ------------------------------------------------------
@pytest.mark.parametrize("kind", ["png16", "tif16", "tif_float", "tif8", "bmp8", "palette"])
def test_every_mode_decodes_like_the_8bit_rendering_of_the_same_scene(tmp_path, kind):
    scene = _scene()
    reference = np.asarray(load_image(_save(Image.fromarray(scene), tmp_path / "ref.png")))
    wide = scene.astype(np.uint16) * 257  # the same scene with 16-bit resolution: v -> v*257 spans 0..65535
    image = {
        "png16": lambda: Image.fromarray(wide),
        "tif16": lambda: Image.fromarray(wide),
        "tif_float": lambda: Image.fromarray(scene.astype(np.float32) / 255.0),
        "tif8": lambda: Image.fromarray(scene),
        "bmp8": lambda: Image.fromarray(scene),
        "palette": lambda: Image.fromarray(scene).convert("P"),
    }[kind]()
    ext = {"png16": ".png", "tif16": ".tif", "tif_float": ".tiff", "tif8": ".tif", "bmp8": ".bmp", "palette": ".png"}
    path = _save(image, tmp_path / f"img{ext[kind]}")
    np.testing.assert_array_equal(np.asarray(load_image(path)), reference, err_msg=kind)


def _png16_rgb(rgb16: np.ndarray, path: Path) -> Path:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one): IHDR bit depth 16, colour type 2."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = rgb16.shape
    raw = b"".join(b"\0" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_sixteen_bit_colour_decodes_like_the_8bit_rendering(tmp_path):
    scene = np.stack([_scene(), 255 - _scene(), _scene() // 2], axis=-1)
    reference = np.asarray(load_image(_save(Image.fromarray(scene), tmp_path / "ref.png")))
    got = np.asarray(load_image(_png16_rgb(scene.astype(np.uint16) * 257, tmp_path / "rgb16.png")))
    np.testing.assert_array_equal(got, reference)


def test_sixteen_bit_images_keep_their_exposure_across_files(tmp_path):
    """Two 16-bit files of one dataset map by the same rule: a dark file stays darker than a bright one."""
    dark, bright = _scene().astype(np.uint16) * 257, (_scene().astype(np.uint16) * 257) * 4
    a = np.asarray(load_image(_save(Image.fromarray(dark), tmp_path / "dark.png")), dtype=float)
    b = np.asarray(load_image(_save(Image.fromarray(bright), tmp_path / "bright.png")), dtype=float)
    assert a.max() == 60 and abs(b.mean() / a.mean() - 4) < 0.05


@pytest.mark.parametrize("kind,phrase", [("int32", "32-bit integer"), ("float_range", "values in [0, 1]")])
def test_modes_without_an_honest_mapping_are_refused_in_one_line(tmp_path, kind, phrase):
    arr = _scene()
    image = (Image.fromarray(arr.astype(np.int32) * 1000) if kind == "int32"
             else Image.fromarray(arr.astype(np.float32)))  # float, but 0..60: not a [0, 1] image
    path = _save(image, tmp_path / "odd.tif")
    with pytest.raises(DataError) as info:
        load_image(path)
    assert phrase in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def _mvtec(tmp_path: Path) -> Path:
    layout = gray_mvtec(tmp_path)
    return layout.root / layout.category


@pytest.mark.parametrize("ext", [".jpg", ".bmp", ".tif"])
def test_precheck_reads_every_image_kind_in_full(tmp_path, ext):
    """A truncated JPEG/BMP/TIFF has a valid header: only a full read finds it, and it must before training."""
    cat = _mvtec(tmp_path)
    victim = cat / "test" / "crack" / "000.png"
    bad = victim.with_suffix(ext)
    Image.open(victim).convert("RGB").save(bad)
    victim.unlink()
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) * 2 // 3])
    with pytest.raises(DataError) as info:
        MVTecAD(str(tmp_path), cat.name, image_size=16).setup()
    assert str(bad) in str(info.value) and "pre-training check" in str(info.value)


def test_huge_image_is_one_line(tmp_path, monkeypatch):
    """A decompression bomb (20000x20000 here stood in for by a lowered limit) is one line, not a traceback."""
    cat = _mvtec(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 48x48 = 2304 px > 2x the limit: Pillow's error case
    with pytest.raises(DataError) as info:
        MVTecAD(str(tmp_path), cat.name, image_size=16).setup()
    assert "too large to decode" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="too large to decode"):
        load_image(cat / "train" / "good" / "000.png")


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# --- class 3: leaks between splits -------------------------------------------------------------------------
def test_folder_whose_normal_test_folder_is_its_training_folder_is_refused(tmp_path):
    _save(Image.fromarray(_scene()), tmp_path / "defect" / "x.png")
    for i in range(4):
        _save(Image.fromarray(_scene() + i), tmp_path / "good" / f"{i}.png")
    with pytest.raises(DataError) as info:
        Folder(str(tmp_path), normal_dir="good", normal_test_dir="good", image_size=16).setup()
    msg = str(info.value)
    assert "4 file(s) are in both the train and the test split" in msg and "good" in msg and "\n" not in msg


def test_split_file_listing_one_image_in_train_and_test_is_refused(tmp_path):
    layout = visa_raw(tmp_path)
    csv_path = layout.root / "split_csv" / "1cls.csv"
    rows = list(csv.DictReader(open(csv_path)))
    train_row = next(r for r in rows if r["object"] == layout.category and r["split"] == "train")
    rows.append({**train_row, "split": "test"})  # the same normal image listed for testing as well
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError) as info:
        layout.data_module(image_size=16).setup()
    assert "1 file(s) are in both the train and the test split" in str(info.value)
    assert train_row["image"] in str(info.value)


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_the_same_file_reached_through_a_link_is_a_leak(tmp_path, link):
    cat = _mvtec(tmp_path)
    source = cat / "train" / "good" / "000.png"
    target = cat / "test" / "good" / "linked.png"
    (os.symlink if link == "symlink" else os.link)(source, target)
    with pytest.raises(DataError) as info:
        MVTecAD(str(tmp_path), cat.name, image_size=16).setup()
    assert f"{source} (also listed as {target})" in str(info.value)


def test_leak_check_is_a_reusable_data_layer_function(tmp_path):
    """The API other datasets' split readers call: paths or samples per split."""
    a = _save(Image.fromarray(_scene()), tmp_path / "a.png")
    b = _save(Image.fromarray(_scene()), tmp_path / "b.png")  # same pixels, another file: not a leak
    check_disjoint({"train": [a], "test": [b]})
    assert find_overlaps({"train": [str(a)], "test": [str(tmp_path / "." / "a.png")]})
    with pytest.raises(DataError, match="my split"):
        check_disjoint({"train": [a], "test": [a]}, "my split")


# --- class 4: masks by the documented rule only --------------------------------------------------------------
def test_folder_masks_are_never_borrowed_from_another_defect_type(tmp_path):
    for i in range(3):
        _save(Image.fromarray(_scene()), tmp_path / "good" / f"{i}.png")
    for d in ("scratch", "crack"):
        _save(Image.fromarray(_scene()), tmp_path / "defect" / d / "000.png")
    _save(Image.fromarray(_scene()), tmp_path / "defect" / "crack" / "001.png")
    mask = Image.fromarray((_scene() > 50).astype(np.uint8) * 255)
    _save(mask, tmp_path / "masks" / "scratch" / "000_mask.png")
    _save(mask, tmp_path / "masks" / "scratch" / "001_mask.png")  # a scratch mask whose stem only crack has
    samples = {Path(s.path).relative_to(tmp_path).as_posix(): s for s in list_folder(tmp_path, mask_dir="masks")
               if s.label == 1}
    assert samples["defect/scratch/000.png"].mask_path == str(tmp_path / "masks" / "scratch" / "000_mask.png")
    assert samples["defect/crack/000.png"].mask_path is None
    assert samples["defect/crack/001.png"].mask_path is None


def test_flat_mask_dir_matches_unambiguous_stems(tmp_path):
    for i in range(3):
        _save(Image.fromarray(_scene()), tmp_path / "good" / f"{i}.png")
    for d, stem in (("scratch", "000"), ("crack", "000"), ("crack", "007")):
        _save(Image.fromarray(_scene()), tmp_path / "defect" / d / f"{stem}.png")
    mask = Image.fromarray((_scene() > 50).astype(np.uint8) * 255)
    for stem in ("000", "007"):
        _save(mask, tmp_path / "masks" / f"{stem}.png")
    got = {Path(s.path).relative_to(tmp_path).as_posix(): s.mask_path for s in list_folder(tmp_path, mask_dir="masks")
           if s.label == 1}
    assert got["defect/crack/007.png"] == str(tmp_path / "masks" / "007.png")
    assert got["defect/crack/000.png"] is None and got["defect/scratch/000.png"] is None  # ambiguous stem


def test_pixel_metrics_note_names_the_defect_types_without_masks():
    from ad.engine.evaluation import _no_pixels_note
    from ad.engine.scoring import PredictionSet

    z = np.zeros((4, 2, 2))
    test = PredictionSet(scores=np.arange(4.0), maps=z, labels=np.array([0, 1, 1, 1]), masks=z.astype(np.uint8),
                         has_mask=np.array([False, True, False, False]), paths=list("abcd"),
                         defect_types=["good", "scratch", "crack", "crack"])
    assert "2 of 3 anomalous test images have no mask (defect type(s) crack)" in _no_pixels_note(test)


# --- class 7: a label that is true ------------------------------------------------------------------------
def test_test_good_in_any_case_is_the_normal_folder(tmp_path):
    cat = _mvtec(tmp_path)
    (cat / "test" / "good").rename(cat / "test" / "Good")
    samples = [s for s in list_mvtec(tmp_path, cat.name) if s.split == "test"]
    assert {s.defect_type for s in samples} == {"good", "crack", "hole"}
    assert all(s.label == 0 for s in samples if "Good" in s.path)
