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


#: name -> builder(root) -> Layout; each builder writes into its own `root` (use a fresh folder per layout)
LAYOUTS: Dict[str, Callable[[Path], Layout]] = {
    "gray_mvtec": gray_mvtec, "btad_mixed": btad_mixed, "visa_raw": visa_raw, "few_shot": few_shot,
}
