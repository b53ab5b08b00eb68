"""Rendering for people: heatmap overlays with ground-truth contours, captions, and which test images to show
(TensorBoard, the report, `ad.predict`)."""
from __future__ import annotations

from typing import List, Optional

import numpy as np
from matplotlib import colormaps


def overlay(image: np.ndarray, amap: np.ndarray, mask: Optional[np.ndarray] = None,
            vmin: float = 0.0, vmax: float = 1.0, alpha: float = 0.45) -> np.ndarray:
    """image float [3,H,W] or [H,W,3] in [0,1]; amap [H,W] (scaled by vmin/vmax); mask [H,W] in {0,1} drawn
    as a green contour. Returns uint8 [H,W,3]."""
    img = np.asarray(image, dtype=np.float32)
    if img.shape[0] == 3 and img.ndim == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    span = max(vmax - vmin, 1e-12)
    heat = colormaps["jet"](np.clip((np.asarray(amap, dtype=np.float32) - vmin) / span, 0, 1))[..., :3]
    out = (1 - alpha) * img + alpha * heat
    if mask is not None and np.any(mask):
        out[contour(mask > 0)] = (0.0, 1.0, 0.0)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def contour(mask: np.ndarray) -> np.ndarray:
    """Boolean map of the inner boundary pixels of a binary mask."""
    m = np.pad(mask.astype(bool), 1, mode="constant")
    inner = m[1:-1, 1:-1]
    eroded = inner & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return inner & ~eroded


def display_map(amap: np.ndarray, pixel_normalization) -> np.ndarray:
    """Map for an overlay: on the validation scale (pixel threshold -> 0.5) when calibrated, else its own range."""
    from ad import metrics

    if pixel_normalization:
        return metrics.normalize(amap, pixel_normalization, clip=True)
    return (amap - amap.min()) / max(float(amap.max() - amap.min()), 1e-12)


def captioned(tile: np.ndarray, lines: "list[str]", line_height: int = 12) -> np.ndarray:
    """The tile (uint8 [H,W,3]) with a black strip below it holding `lines` of text: TensorBoard shows image
    grids without captions, so each overlay says itself which image it is, its score and decision."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    h, w = tile.shape[:2]
    width = max(4, (w - 4) // 6)  # the default bitmap font is ~6 px per character: wrap to the tile
    lines = [part for line in lines for part in (textwrap.wrap(line, width) or [""])]
    canvas = Image.new("RGB", (w, h + line_height * len(lines) + 4), (0, 0, 0))
    canvas.paste(Image.fromarray(tile), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for k, text in enumerate(lines):
        draw.text((3, h + 2 + k * line_height), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def pick_visualizations(labels: np.ndarray, scores: np.ndarray, n: int) -> List[tuple[int, str]]:
    """Indices of a fixed small number of test images: the worst cases (lowest-scored anomalies, highest-scored
    normals) and the best (highest-scored anomalies, lowest-scored normals), each with a caption."""
    if n <= 0:
        return []
    anomalous = np.flatnonzero(labels == 1)
    normal = np.flatnonzero(labels == 0)
    a_sorted = anomalous[np.argsort(scores[anomalous], kind="stable")]
    n_sorted = normal[np.argsort(scores[normal], kind="stable")]
    quarter = max(1, n // 4)
    picks: List[tuple[int, str]] = []
    groups = [
        (a_sorted[:quarter], "worst: anomalous with lowest score"),
        (n_sorted[::-1][:quarter], "worst: normal with highest score"),
        (a_sorted[::-1][:quarter], "best: anomalous with highest score"),
        (n_sorted[:quarter], "best: normal with lowest score"),
    ]
    seen = set()
    for idx, caption in groups:
        for i in idx:
            if int(i) not in seen and len(picks) < n:
                seen.add(int(i))
                picks.append((int(i), f"{caption} ({scores[i]:.4g})"))
    return picks
