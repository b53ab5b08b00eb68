"""`test_maps.npz`: a run's test anomaly maps, kept next to predictions.csv so that pixel metrics, their
bootstrap CIs and the report's heatmaps can be recomputed later without re-running the model.

Layout (numpy `savez_compressed`, one row per test image in predictions.csv order):

* ``paths`` [N] str: the image paths, exactly as in predictions.csv (the join key);
* ``labels`` [N] uint8;
* ``maps`` [N,H,W] float16: the raw maps divided by ``scale`` (a power of two that brings them into [-1, 1]:
  float16 keeps ~3 significant digits and cannot overflow; dividing by a power of two loses nothing more);
* ``masks`` [N,H*W/8] uint8: the ground-truth masks as packed bits, ``has_mask`` [N] bool;
* ``scale``, ``factor`` (maps were block-averaged by this integer factor when a side exceeded ``max_side``),
  ``shape`` (H, W) and ``version``.

Evaluation resolution is kept up to ``max_side`` (default 256, the default image size), so the size is bounded
by N * 256 * 256 * 2 bytes before compression (~8 MB for 60 images; the README gives measured sizes).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ad.errors import DataError

MAPS_FILE = "test_maps.npz"
VERSION = 1


@dataclass
class TestMaps:
    paths: list
    labels: np.ndarray  # [N] int
    maps: np.ndarray  # [N,H,W] float16, raw map = maps * scale
    masks: Optional[np.ndarray]  # [N,H,W] bool, or None when no image has a mask
    has_mask: np.ndarray  # [N] bool
    scale: float
    factor: int

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


def save_test_maps(run_dir: "str | Path", paths: Sequence[str], labels, maps, masks=None, has_mask=None,
                   max_side: int = 256) -> Path:
    """Write `run_dir/test_maps.npz` atomically; maps [N,H,W] float, masks [N,H,W] in {0,1} or None."""
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
    data = {"version": np.int64(VERSION), "paths": np.asarray([str(p) for p in paths]),
            "labels": np.asarray(labels, dtype=np.uint8).reshape(n), "maps": (maps / scale).astype(np.float16),
            "masks": packed, "has_mask": has, "scale": np.float64(scale), "factor": np.int64(factor),
            "shape": np.asarray(maps.shape[1:], np.int64)}
    path = Path(run_dir) / MAPS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{MAPS_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_test_maps(run_dir: "str | Path") -> Optional[TestMaps]:
    """The saved maps of a run, or None when the run saved none (evaluation.save_maps=false, older runs)."""
    path = Path(run_dir)
    path = path if path.suffix == ".npz" else path / MAPS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != VERSION:
                raise DataError(f"{path}: version {int(z['version'])}, this code reads {VERSION}")
            h, w = (int(v) for v in z["shape"])
            maps = z["maps"]
            has = z["has_mask"].astype(bool)
            masks = None
            if z["masks"].shape[1] and has.any():
                masks = np.unpackbits(z["masks"], axis=1, count=h * w).reshape(-1, h, w).astype(bool)
            return TestMaps(paths=[str(p) for p in z["paths"]], labels=z["labels"].astype(int), maps=maps,
                            masks=masks, has_mask=has, scale=float(z["scale"]), factor=int(z["factor"]))
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: unreadable saved maps ({exc}); delete it or re-run the job") from None
