"""`test_maps.npz`: a run's test anomaly maps, kept next to predictions.csv so that pixel metrics, their
bootstrap CIs and the report's heatmaps can be recomputed later without re-running the model.

A zip of .npy members (readable with `np.load`), one group per evaluated category (a unified run has several)
in predictions.csv order; group i of ``categories`` holds:

* ``i.paths`` [N] str: the image paths, exactly as in predictions.csv (the join key);
* ``i.labels`` [N] uint8;
* ``i.maps`` [N,H,W] float16: the raw maps divided by ``i.scale`` (a power of two that brings them into
  [-1, 1]: float16 keeps ~3 significant digits and cannot overflow; a power of two loses nothing more);
* ``i.masks`` [N, ceil(H*W/8)] uint8: the ground-truth masks as packed bits, ``i.has_mask`` [N] bool;
* ``i.factor`` (maps were block-averaged by this integer factor when a side exceeded ``max_side``), ``i.shape``.

Groups are written as their category is scored (`MapsWriter.add`), so memory stays bounded by one category.
Evaluation resolution is kept up to ``max_side`` (default 256, the default image size): at most
N * 256 * 256 * 2 bytes per category before compression (README gives measured sizes).
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ad.errors import DataError
from ad.io import PendingFile

MAPS_FILE = "test_maps.npz"
VERSION = 2


@dataclass
class TestMaps:
    paths: list
    labels: np.ndarray  # [N] int
    maps: np.ndarray  # [N,H,W] float16, raw map = maps * scale
    masks: Optional[np.ndarray]  # [N,H,W] bool, or None when no image has a mask
    has_mask: np.ndarray  # [N] bool
    scale: float
    factor: int

    __test__ = False  # not a pytest test class despite its name

    def raw(self, i: Optional[int] = None) -> np.ndarray:
        """Maps (all, or image i) as float32 on the model's scale."""
        m = self.maps if i is None else self.maps[i]
        return m.astype(np.float32) * np.float32(self.scale)

    def index(self) -> dict:
        return {p: i for i, p in enumerate(self.paths)}


def _block_mean(x: np.ndarray, f: int) -> np.ndarray:
    n, h, w = x.shape
    h2, w2 = h // f, w // f
    return x[:, : h2 * f, : w2 * f].reshape(n, h2, f, w2, f).mean(axis=(2, 4))


def _scale(maps: np.ndarray) -> float:
    peak = float(np.max(np.abs(maps))) if maps.size else 0.0
    return float(2.0 ** np.ceil(np.log2(peak))) if peak > 0 else 1.0


def _group(paths: Sequence[str], labels, maps, masks, has_mask, max_side: int) -> dict:
    maps = np.asarray(maps, dtype=np.float32)
    n = len(paths)
    if maps.ndim != 3 or maps.shape[0] != n:
        raise DataError(f"save_test_maps: maps must be [{n},H,W] (one per path), got {maps.shape}")
    if not np.isfinite(maps).all():
        raise DataError("save_test_maps: the anomaly maps contain NaN or inf; the model's predict is broken")
    factor = max(1, int(np.ceil(max(maps.shape[1:]) / max(1, int(max_side)))))
    if factor > 1:
        maps = _block_mean(maps, factor)
    scale = _scale(maps)
    has = np.zeros(n, bool) if has_mask is None else np.asarray(has_mask, bool).reshape(n)
    if masks is not None:
        m = np.asarray(masks, dtype=np.float32)
        if factor > 1:
            m = _block_mean(m, factor)
        m = m >= 0.5
        if m.shape != maps.shape:
            raise DataError(f"save_test_maps: masks {m.shape} and maps {maps.shape} differ in shape")
        packed = np.packbits(m.reshape(n, -1), axis=1)
    else:
        packed = np.zeros((n, 0), np.uint8)
        has[:] = False
    return {"paths": np.asarray([str(p) for p in paths]), "labels": np.asarray(labels, dtype=np.uint8).reshape(n),
            "maps": (maps / scale).astype(np.float16), "masks": packed, "has_mask": has,
            "scale": np.float64(scale), "factor": np.int64(factor), "shape": np.asarray(maps.shape[1:], np.int64)}


class MapsWriter:
    """Streams one group per category into `run_dir/test_maps.npz`, made visible atomically by `close`."""

    def __init__(self, run_dir: "str | Path", max_side: int = 256) -> None:
        self.path = Path(run_dir) / MAPS_FILE
        self.max_side = int(max_side)
        self._file = PendingFile(self.path)  # the same file mode and atomic rename as every other output
        self._zip: Optional[zipfile.ZipFile] = zipfile.ZipFile(self._file.tmp, "w", zipfile.ZIP_DEFLATED)
        self.categories: List[str] = []

    def _put(self, name: str, arr: np.ndarray) -> None:
        assert self._zip is not None
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)

    def add(self, category: str, paths: Sequence[str], labels, maps, masks=None, has_mask=None) -> None:
        group = _group(paths, labels, maps, masks, has_mask, self.max_side)
        i = len(self.categories)
        for key, arr in group.items():
            self._put(f"{i}.{key}", arr)
        self.categories.append(str(category))

    def close(self) -> Path:
        assert self._zip is not None, "MapsWriter closed twice"
        self._put("categories", np.asarray(self.categories, dtype=str))
        self._put("version", np.int64(VERSION))
        self._zip.close()
        self._zip = None
        return self._file.commit()

    def abort(self) -> None:
        """Drop a partly written file (a failed run); a no-op after `close`."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None
            self._file.discard()


def save_test_maps(run_dir: "str | Path", paths: Sequence[str], labels, maps, masks=None, has_mask=None,
                   max_side: int = 256, category: str = "") -> Path:
    """Write a one-category `run_dir/test_maps.npz`; maps [N,H,W] float, masks [N,H,W] in {0,1} or None."""
    writer = MapsWriter(run_dir, max_side)
    try:
        writer.add(category, paths, labels, maps, masks, has_mask)
        return writer.close()
    finally:
        writer.abort()


def _read_group(z, i: int) -> TestMaps:
    h, w = (int(v) for v in z[f"{i}.shape"])
    has = z[f"{i}.has_mask"].astype(bool)
    packed = z[f"{i}.masks"]
    masks = np.unpackbits(packed, axis=1, count=h * w).reshape(-1, h, w).astype(bool) if packed.shape[1] and has.any() else None
    return TestMaps(paths=[str(p) for p in z[f"{i}.paths"]], labels=z[f"{i}.labels"].astype(int), maps=z[f"{i}.maps"],
                    masks=masks, has_mask=has, scale=float(z[f"{i}.scale"]), factor=int(z[f"{i}.factor"]))


def load_test_maps(run_dir: "str | Path", category: Optional[str] = None) -> Optional[TestMaps]:
    """The saved maps of one category of a run (the only one, or `category` of a unified run), or None when
    the run saved none (evaluation.save_maps=false, older runs) or none for that category."""
    path = Path(run_dir)
    path = path if path.suffix == ".npz" else path / MAPS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != VERSION:
                raise DataError(f"{path}: version {int(z['version'])}, this code reads {VERSION}")
            cats = [str(c) for c in z["categories"]]
            if category is None or len(cats) == 1:
                return _read_group(z, 0) if cats else None
            return _read_group(z, cats.index(category)) if category in cats else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: unreadable saved maps ({exc}); delete it or re-run the job") from None
