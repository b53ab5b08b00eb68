"""The overlay `ad.predict` writes for each image: at the input's own size and aspect, the anomaly map on the
image, the pixel threshold as a white contour, a colour scale with the threshold marked, and a banner with the
decision, the score and the image threshold.

The model scores a resized (and possibly centre-cropped) square; `map_to_original` undoes that geometry, so
a 400×300 photograph comes back 400×300 with the heat where the defect is in *that* picture.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ad.visualize import contour


def map_to_original(amap: np.ndarray, original_hw: Tuple[int, int], image_size: Sequence[int],
                    center_crop: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(map, valid) at `original_hw`: `amap` (at the model's input size) put back into the resized frame at
    its crop box, then resized to the original. `valid` is False outside a centre crop (the model never saw
    those pixels)."""
    rh, rw = int(image_size[0]), int(image_size[1])
    ch, cw = (int(center_crop[0]), int(center_crop[1])) if center_crop else (rh, rw)
    h0, w0 = original_hw
    crop = np.asarray(Image.fromarray(np.asarray(amap, np.float32)).resize((cw, ch), Image.BILINEAR))
    frame = np.zeros((rh, rw), np.float32)
    seen = np.zeros((rh, rw), np.uint8)
    top, left = (rh - ch) // 2, (rw - cw) // 2  # the same box as ad.data's _center_crop
    frame[top:top + ch, left:left + cw] = crop
    seen[top:top + ch, left:left + cw] = 1
    out = np.asarray(Image.fromarray(frame).resize((w0, h0), Image.BILINEAR))
    valid = np.asarray(Image.fromarray(seen * 255).resize((w0, h0), Image.NEAREST)) > 0
    return out, valid


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _thicken(edge: np.ndarray, width: int) -> np.ndarray:
    out = edge.copy()
    for _ in range(max(0, width - 1)):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def decision_overlay(image: np.ndarray, amap: np.ndarray, valid: Optional[np.ndarray], *, score: float,
                     decision: Optional[bool], image_threshold: Optional[float],
                     level: Optional[float] = 0.5, alpha: float = 0.45) -> np.ndarray:
    """uint8 [H,W,3] at the size of `image` (uint8 [H,W,3]). `amap` [H,W] is on the display scale [0,1] (the
    run's pixel normalisation: the pixel threshold sits at `level`; None-calibrated maps use their own range);
    pixels at or above `level` are outlined in white and the colour scale marks `level` (None: the run has no
    pixel threshold, nothing is outlined)."""
    from matplotlib import colormaps

    img = np.asarray(image, np.float32) / 255.0
    h, w = img.shape[:2]
    valid = np.ones((h, w), bool) if valid is None else valid
    heat = colormaps["jet"](np.clip(amap, 0.0, 1.0))[..., :3].astype(np.float32)
    out = np.where(valid[..., None], (1 - alpha) * img + alpha * heat, img)
    line = max(1, round(min(h, w) / 250))
    if level is not None:
        out[_thicken(contour((amap >= level) & valid), line)] = (1.0, 1.0, 1.0)
    canvas = Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8))
    _colour_scale(canvas, level)
    _banner(canvas, score, decision, image_threshold)
    return np.asarray(canvas)


def _colour_scale(canvas: Image.Image, level: Optional[float]) -> None:
    """A vertical jet bar at the right edge (high at the top), a black-and-white tick at the threshold."""
    from matplotlib import colormaps

    w, h = canvas.size
    bw = max(4, w // 40)
    top, bottom = max(2, h // 6), h - max(2, h // 12)
    n = max(2, bottom - top)
    ramp = colormaps["jet"](np.linspace(1.0, 0.0, n))[:, :3]
    bar = (np.repeat(ramp[:, None, :], bw, axis=1) * 255).astype(np.uint8)
    x0 = w - bw - max(2, w // 100)
    canvas.paste(Image.fromarray(bar), (x0, top))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((x0 - 1, top - 1, x0 + bw, top + n), outline=(0, 0, 0))
    if level is None:
        return
    y = top + round((1.0 - level) * (n - 1))
    draw.line((x0 - max(3, bw // 2), y, x0 + bw + 1, y), fill=(255, 255, 255), width=max(1, h // 150))
    size = max(8, min(h, w) // 22)
    text = "thr"
    tw = draw.textlength(text, font=_font(size))
    draw.text((x0 - tw - max(3, bw // 2) - 2, y - size // 2), text, fill=(255, 255, 255), font=_font(size),
              stroke_width=1, stroke_fill=(0, 0, 0))


def _banner(canvas: Image.Image, score: float, decision: Optional[bool], image_threshold: Optional[float]) -> None:
    """`ANOMALOUS  score 2.31 ≥ threshold 1.05` (or normal / no threshold) on a dark strip at the top."""
    w, h = canvas.size
    size = max(8, min(h // 14, w // 24))
    if decision is None or image_threshold is None:
        text, colour = f"score {score:.4g} (no threshold: no decision)", (255, 255, 255)
    elif decision:
        text, colour = f"ANOMALOUS  score {score:.4g} >= threshold {image_threshold:.4g}", (255, 80, 70)
    else:
        text, colour = f"normal  score {score:.4g} < threshold {image_threshold:.4g}", (120, 230, 120)
    font = _font(size)
    draw = ImageDraw.Draw(canvas, "RGBA")
    while size > 8 and draw.textlength(text, font=font) > w - 6:  # shrink to fit narrow images
        size -= 1
        font = _font(size)
    draw.rectangle((0, 0, w, size + 6), fill=(0, 0, 0, 170))
    draw.text((3, 2), text, fill=colour, font=font)
