"""Tiny category layouts of every kind the data layer reads, for end-to-end tests (`trainer=smoke`).

Each builder writes one category under `root` and returns a `Layout`: the CLI overrides that select it
(`dataset=... dataset.root=... dataset.category=...`), its dataset class, and the counts the listing must give.
Images are small periodic textures with noise (every model can fit them); each defect is a saturated square
with an exact mask, so pixel metrics are computable.

- `gray_mvtec`: MVTec AD layout, 8-bit grey-scale ('L') PNGs (`load_image` must make them RGB).
- `btad_mixed`: BTAD layout; train/test images mix .bmp and .png, masks use the other extension than their
  image (matched by stem).
- `visa_raw`: VisA raw layout (`Data/Images/{Normal,Anomaly}/*.JPG`, `Data/Masks/Anomaly/*.png` holding label
  ids, not 255) with its `split_csv/1cls.csv`.
- `few_shot`: MVTec layout with only 3 training normals (no held-out validation is possible).
- `mvtec_ad2`: MVTec AD 2 layout, non-square images, official `validation/good`, `test_public` with
  `ground_truth/bad/<stem>_mask.png`, unlabelled `test_private` / `test_private_mixed`.
- `mvtec_loco`: MVTec LOCO layout: logical and structural anomalies, several ground-truth PNGs per image (one per
  defect, some overlapping, each drawn in its type's pixel value) and `defects_config.json`.
- `real_iad`: Real-IAD layout: `realiad_1024/<obj>/{OK,NG/<code>}/S<sample>/..._C<view>_...jpg`, 5 views per
  sample, JSON splits in `realiad_jsons` (multi-view) and `realiad_jsons_sv` (single view).

    from tests.layouts import LAYOUTS
    layout = LAYOUTS["btad_mixed"](tmp_path)
    run(["model=patchcore", "trainer=smoke", *layout.overrides])
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image

SIZE = 48  # pixels: small enough to be fast, large enough for a 33 px PDN patch after resizing
SQUARE = 12  # side of the pasted defect


@dataclass(frozen=True)
class Layout:
    name: str
    root: Path
    dataset: str  # conf/dataset option
    category: str
    #: expected counts after listing: train normals, test normals, test anomalies (all with masks)
    n_train: int
    n_test_good: int
    n_test_bad: int
    overrides: List[str] = field(default_factory=list)

    @property
    def n_test(self) -> int:
        return self.n_test_good + self.n_test_bad

    def data_module(self, **kwargs):
        """The layout's dataset class (looked up from conf/dataset/<dataset>.yaml) on this root and category."""
        from ad.registry import DATASETS

        return DATASETS.get(self.dataset)(root=str(self.root), category=self.category, **kwargs)


def _texture(rng: np.random.Generator, gray: bool) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    ph = rng.uniform(0, 6.28, 2)
    base = 0.5 + 0.2 * np.sin(xx * 0.5 + ph[0]) * np.cos(yy * 0.3 + ph[1])
    img = base[..., None] * np.array([1.0, 0.8, 0.6], np.float32)
    img = (img + 0.03 * rng.standard_normal(img.shape)).clip(0, 1)
    return img.mean(axis=-1) if gray else img


def _defect(rng: np.random.Generator, gray: bool) -> Tuple[np.ndarray, np.ndarray]:
    img, mask = _texture(rng, gray), np.zeros((SIZE, SIZE), np.uint8)
    y, x = rng.integers(0, SIZE - SQUARE, 2)
    img[y:y + SQUARE, x:x + SQUARE] = 0.95 if gray else np.array([0.1, 0.2, 0.9])
    mask[y:y + SQUARE, x:x + SQUARE] = 255
    return img, mask


def _save(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((arr * 255).round().astype(np.uint8) if arr.dtype != np.uint8 else arr).save(path)
    return path


def _mvtec_like(root: Path, name: str, category: str, n_train: int, n_good: int, defects: Dict[str, int],
                gray: bool, seed: int) -> Layout:
    rng = np.random.default_rng(seed)
    c = root / category
    for i in range(n_train):
        _save(_texture(rng, gray), c / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        _save(_texture(rng, gray), c / "test" / "good" / f"{i:03d}.png")
    for d, n in defects.items():
        for i in range(n):
            img, mask = _defect(rng, gray)
            _save(img, c / "test" / d / f"{i:03d}.png")
            _save(mask, c / "ground_truth" / d / f"{i:03d}_mask.png")
    return Layout(name, root, "mvtec", category, n_train, n_good, sum(defects.values()),
                  ["dataset=mvtec", f"dataset.root={root}", f"dataset.category={category}"])


def gray_mvtec(root: Path, seed: int = 0) -> Layout:
    """Grey-scale MVTec-like category `gray_widget`: 10 train, 3 good + 2x2 defective test images."""
    return _mvtec_like(Path(root), "gray_mvtec", "gray_widget", 10, 3, {"crack": 2, "hole": 2}, True, seed)


def few_shot(root: Path, seed: int = 1) -> Layout:
    """MVTec-like category `three_shot` with 3 training normals, 3 good + 3 defective test images."""
    return _mvtec_like(Path(root), "few_shot", "three_shot", 3, 3, {"dent": 3}, False, seed)


def btad_mixed(root: Path, seed: int = 2) -> Layout:
    """BTAD-like category `02`: .bmp and .png images mixed in every folder; each mask has the other extension."""
    root, rng = Path(root), np.random.default_rng(seed)
    c = root / "02"
    ext = lambda i: ".bmp" if i % 2 == 0 else ".png"  # noqa: E731
    other = lambda i: ".png" if i % 2 == 0 else ".bmp"  # noqa: E731
    n_train, n_good, n_bad = 8, 3, 4
    for i in range(n_train):
        _save(_texture(rng, False), c / "train" / "ok" / f"{i:04d}{ext(i)}")
    for i in range(n_good):
        _save(_texture(rng, False), c / "test" / "ok" / f"{i:04d}{ext(i)}")
    for i in range(n_bad):
        img, mask = _defect(rng, False)
        _save(img, c / "test" / "ko" / f"{i:04d}{ext(i)}")
        _save(mask, c / "ground_truth" / "ko" / f"{i:04d}{other(i)}")
    return Layout("btad_mixed", root, "btad", "02", n_train, n_good, n_bad,
                  ["dataset=btad", f"dataset.root={root}", "dataset.category='02'"])


def visa_raw(root: Path, seed: int = 3) -> Layout:
    """VisA-like object `pcb9` in the raw layout plus its split csv (a second object `decoy` is listed too,
    so the loader must filter by object). Masks hold label ids 1..n instead of 255."""
    root, rng = Path(root), np.random.default_rng(seed)
    rows = []
    counts = {"train": 8, "test_good": 3, "test_bad": 4}
    for obj in ("pcb9", "decoy"):
        for kind, n in counts.items():
            for i in range(n):
                anomalous = kind == "test_bad"
                num = f"{kind}_{i:03d}"
                img_rel = f"{obj}/Data/Images/{'Anomaly' if anomalous else 'Normal'}/{num}.JPG"
                mask_rel = f"{obj}/Data/Masks/Anomaly/{num}.png" if anomalous else ""
                if anomalous:
                    img, mask = _defect(rng, False)
                    _save(np.where(mask > 0, i + 1, 0).astype(np.uint8), root / mask_rel)
                else:
                    img = _texture(rng, False)
                path = root / img_rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((img * 255).round().astype(np.uint8)).save(path, format="JPEG", quality=95)
                rows.append((obj, "train" if kind == "train" else "test", "anomaly" if anomalous else "normal",
                             img_rel, mask_rel))
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return Layout("visa_raw", root, "visa", "pcb9", counts["train"], counts["test_good"], counts["test_bad"],
                  ["dataset=visa", f"dataset.root={root}", "dataset.category=pcb9"])


def _texture_hw(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ph = rng.uniform(0, 6.28, 2)
    base = 0.5 + 0.2 * np.sin(xx * 0.5 + ph[0]) * np.cos(yy * 0.3 + ph[1])
    img = base[..., None] * np.array([1.0, 0.8, 0.6], np.float32)
    return (img + 0.03 * rng.standard_normal(img.shape)).clip(0, 1)


def _square(rng: np.random.Generator, h: int, w: int, side: int = SQUARE) -> np.ndarray:
    m = np.zeros((h, w), bool)
    y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
    m[y:y + side, x:x + side] = True
    return m


AD2_H, AD2_W = SIZE, SIZE * 4 // 3  # non-square, like the release's images


def mvtec_ad2(root: Path, seed: int = 4, category: str = "can") -> Layout:
    """MVTec AD 2-like category `can`: 8 train, 3 validation, 3 good + 3 bad public test images (48x64), and
    4 + 4 private images named like the release (`000_regular.png`, `000_mixed.png`)."""
    root, rng = Path(root), np.random.default_rng(seed)
    c = root / category
    for i in range(8):
        _save(_texture_hw(rng, AD2_H, AD2_W), c / "train" / "good" / f"{i:03d}_regular.png")
    for i in range(3):
        _save(_texture_hw(rng, AD2_H, AD2_W), c / "validation" / "good" / f"{i:03d}_regular.png")
        _save(_texture_hw(rng, AD2_H, AD2_W), c / "test_public" / "good" / f"{i:03d}_regular.png")
    for i in range(3):
        img, m = _texture_hw(rng, AD2_H, AD2_W), _square(rng, AD2_H, AD2_W)
        img[m] = np.array([0.1, 0.2, 0.9])
        _save(img, c / "test_public" / "bad" / f"{i:03d}_regular.png")
        _save((m * 255).astype(np.uint8), c / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png")
    for split, suffix in (("test_private", "regular"), ("test_private_mixed", "mixed")):
        for i in range(4):
            _save(_texture_hw(rng, AD2_H, AD2_W), c / split / f"{i:03d}_{suffix}.png")
    return Layout("mvtec_ad2", root, "mvtec_ad2", category, 8, 3, 3,
                  ["dataset=mvtec_ad2", f"dataset.root={root}", f"dataset.category={category}"])


LOCO_CONFIG = [
    {"defect_name": "missing_part", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True},
    {"defect_name": "extra_part", "pixel_value": 23, "saturation_threshold": 0.5, "relative_saturation": True},
    {"defect_name": "scratch", "pixel_value": 7, "saturation_threshold": 60, "relative_saturation": False},
]
#: defects (pixel values) of each anomalous LOCO test image: several PNGs per image, types mixed
LOCO_DEFECTS = {"logical_anomalies": [[255, 23], [23]], "structural_anomalies": [[7, 7, 255], [7]]}


def mvtec_loco(root: Path, seed: int = 5, category: str = "box_like") -> Layout:
    """MVTec LOCO-like category `box_like`: 8 train, 3 validation, 3 good, 2 logical and 2 structural test images;
    anomalous images carry 1-3 ground-truth PNGs each (the first two of an image overlap)."""
    import json

    root, rng = Path(root), np.random.default_rng(seed)
    c = root / category
    for i in range(8):
        _save(_texture(rng, False), c / "train" / "good" / f"{i:03d}.png")
    for i in range(3):
        _save(_texture(rng, False), c / "validation" / "good" / f"{i:03d}.png")
        _save(_texture(rng, False), c / "test" / "good" / f"{i:03d}.png")
    for kind, images in LOCO_DEFECTS.items():
        for i, values in enumerate(images):
            img = _texture(rng, False)
            prev = None
            for j, v in enumerate(values):
                m = _square(rng, SIZE, SIZE, 10)
                if j == 1 and prev is not None:  # overlap the previous defect
                    m = np.roll(prev, 4, axis=1)
                img[m] = np.array([0.1, 0.2, 0.9])
                _save(np.where(m, v, 0).astype(np.uint8), c / "ground_truth" / kind / f"{i:03d}" / f"{j:03d}.png")
                prev = m
            _save(img, c / "test" / kind / f"{i:03d}.png")
    (c / "defects_config.json").write_text(json.dumps(LOCO_CONFIG, indent=2))
    return Layout("mvtec_loco", root, "mvtec_loco", category, 8, 3, 4,
                  ["dataset=mvtec_loco", f"dataset.root={root}", f"dataset.category={category}"])


def real_iad(root: Path, seed: int = 6, category: str = "toy9") -> Layout:
    """Real-IAD-like object `toy9`: 2 OK training samples and 1 OK + 2 NG test samples of 5 views each; in the NG
    samples 3 of 5 views show the defect (mask), the others are labelled OK. Multi-view and single-view splits."""
    import json

    root, rng = Path(root), np.random.default_rng(seed)
    obj = root / "realiad_1024" / category
    entries: Dict[str, List[dict]] = {"train": [], "test": []}

    def view(part: str, folder: str, sample: int, v: int, anomalous: bool) -> None:
        code = folder.split("/")[-1]
        stem = f"{category}_{sample:04d}_{code}_C{v}_20230922093348"
        rel = f"{folder}/S{sample:04d}/{stem}.jpg"
        img = _texture(rng, False)
        mask_rel = None
        if anomalous:
            m = _square(rng, SIZE, SIZE)
            img[m] = np.array([0.1, 0.2, 0.9])
            mask_rel = rel[:-4] + ".png"
            _save((m * 255).astype(np.uint8), obj / mask_rel)
        (obj / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(obj / rel, format="JPEG", quality=95)
        entries[part].append({"category": "NG" if folder.startswith("NG") else "OK",
                              "anomaly_class": code if anomalous else "OK", "image_path": rel, "mask_path": mask_rel})

    for s in (1, 2):
        for v in range(1, 6):
            view("train", "OK", s, v, False)
    for v in range(1, 6):
        view("test", "OK", 3, v, False)
    for s in (4, 5):
        for v in range(1, 6):
            view("test", "NG/AK", s, v, anomalous=v <= 3)
    meta = {"prefix": "", "normal_class": "OK"}
    for name, keep in (("realiad_jsons", lambda e: True), ("realiad_jsons_sv", lambda e: "_C1_" in e["image_path"])):
        data = {"meta": meta, "train": [e for e in entries["train"] if keep(e)],
                "test": [e for e in entries["test"] if keep(e)]}
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{category}.json").write_text(json.dumps(data))
    return Layout("real_iad", root, "real_iad", category, 10, 9, 6,
                  ["dataset=real_iad", f"dataset.root={root}", f"dataset.category={category}"])


#: name -> builder(root) -> Layout; each builder writes into its own `root` (use a fresh folder per layout)
LAYOUTS: Dict[str, Callable[[Path], Layout]] = {
    "gray_mvtec": gray_mvtec, "btad_mixed": btad_mixed, "visa_raw": visa_raw, "few_shot": few_shot,
    "mvtec_ad2": mvtec_ad2, "mvtec_loco": mvtec_loco, "real_iad": real_iad,
}
