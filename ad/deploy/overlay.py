"""Heat-map overlays without matplotlib: the same pixels as `ad.engine.visualize.overlay` with the 'jet'
colour map (a test holds the two equal), so a line PC needs only numpy and Pillow to draw them."""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

# matplotlib's 'jet' segment data (x, value) per channel; matplotlib samples it into a 256-entry table.
_JET = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
_N = 256


def _jet_table() -> np.ndarray:
    x = np.linspace(0.0, 1.0, _N)
    return np.stack([np.interp(x, [p[0] for p in _JET[c]], [p[1] for p in _JET[c]])
                     for c in ("red", "green", "blue")], axis=1)


_TABLE = _jet_table()


def jet(values: np.ndarray) -> np.ndarray:
    """RGB floats [..., 3] of values in [0, 1] (matplotlib's lookup: floor(v · 256), the top bin for v = 1)."""
    idx = (np.asarray(values, dtype=np.float32) * np.float32(_N))
    idx = np.clip(np.where(idx == _N, _N - 1, idx), 0, _N - 1).astype(np.int64)
    return _TABLE[idx]


def display_map(amap: np.ndarray, pixel_normalization: Optional[Mapping[str, float]]) -> np.ndarray:
    """Map on the validation scale (pixel threshold -> 0.5, clipped to [0, 1]) when calibrated, else min-max."""
    amap = np.asarray(amap)
    if pixel_normalization:
        mn, t = float(pixel_normalization["min"]), float(pixel_normalization["threshold"])
        return np.clip((amap - mn) / (2.0 * (t - mn)), 0.0, 1.0)
    return (amap - amap.min()) / max(float(amap.max() - amap.min()), 1e-12)


def overlay(pixels: np.ndarray, amap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 [H,W,3]: the preprocessed image (uint8 [H,W,3]) blended with the jet-coloured map in [0, 1]."""
    img = pixels.astype(np.float32) / np.float32(255.0)
    heat = jet(np.clip(np.asarray(amap, dtype=np.float32), 0, 1))
    out = (1 - alpha) * img + alpha * heat
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)
