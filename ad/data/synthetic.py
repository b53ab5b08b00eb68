"""A procedurally generated dataset in the MVTec AD layout, so the whole pipeline runs with nothing downloaded.

Three categories, each with the same four defect types (one folder each, exact masks):

- `syn_tiles` (texture): square ceramic tiles with grout lines, random grid phase, per-tile colour variation.
- `syn_weave` (texture): an over/under woven fabric with fibre streaks, random phase and a slight rotation.
- `syn_disc` (object): a machined metal disc with a centre bore, a groove and six bolt holes on a dark
  background, with small shifts, rotations and lighting changes between images.

Defects: `scratch` (thin curved line, brighter or darker), `spot` (small irregular contamination blob),
`stain` (large translucent colour blot), `cut_paste` (a rotated/rescaled patch of the same image pasted
elsewhere, which breaks the pattern continuity). Every defect is alpha-composited and the mask is exactly
the set of pixels with non-zero alpha, so no pixel outside the mask changes. Each defect image draws a
severity, so most defects are clear and a tail is faint, and normal images carry nuisance variation (pose,
exposure, grid phase, turning marks on the disc): a pretrained-feature model scores high but not trivially
perfectly.

Each image gets its own random stream keyed by (seed, category, split, defect, index), so the bytes of an
image do not depend on how many other images were asked for, and a seed always reproduces the same files.
A category is written once into a temporary folder and renamed into place with a marker file recording the
parameters: an interrupted run never leaves half a dataset, and changed parameters trigger regeneration.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
from PIL import Image

from ad.data._base import AnomalyDataModule, Sample
from ad.errors import DataError

# Bump when the rendering changes so existing generated folders are regenerated.
GENERATOR_VERSION = 5
MARKER = ".ad_synthetic.json"

CATEGORIES: Dict[str, str] = {"syn_tiles": "texture", "syn_weave": "texture", "syn_disc": "object"}
DEFECT_TYPES: Tuple[str, ...] = ("scratch", "spot", "stain", "cut_paste")

# Defect strength per category: defects on the smooth metal disc stand out far more than on busy textures, so
# they are drawn fainter there to keep the categories comparably (and not trivially) hard.
_DEFECT_GAIN = {"syn_tiles": 1.0, "syn_weave": 1.0, "syn_disc": 0.5}

_SPLIT_CODES = {"train": 1, "test_good": 2, "test_defect": 3}

Array = np.ndarray


# --------------------------------------------------------------------------------------------------------------
# Rendering helpers
# --------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _grid(s: int) -> Tuple[Array, Array]:
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _gauss(rng: np.random.Generator, shape: Tuple[int, ...], sigma: float) -> Array:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], cells: Tuple[int, int]) -> Array:
    """Band-limited noise of unit-ish std: a coarse Gaussian grid upsampled bicubically (cheap, deterministic)."""
    g = rng.standard_normal((cells[0] + 1, cells[1] + 1)).astype(np.float32)
    im = Image.fromarray(g).resize((shape[1], shape[0]), Image.BICUBIC)
    return np.asarray(im, dtype=np.float32)


def _blur(img: Array, factor: int) -> Array:
    """Local mean: downsample by `factor` (box average) and upsample bicubically."""
    s = img.shape[0]
    small = s // factor
    out = np.empty_like(img)
    for c in range(img.shape[-1]):
        ch = Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32))
        out[..., c] = np.asarray(ch.resize((small, small), Image.BOX).resize((s, s), Image.BICUBIC))
    return out


def _blob_alpha(
    rng: np.random.Generator, s: int, cy: float, cx: float, r0: float, roughness: float, harmonics: int = 4
) -> Tuple[Array, Array]:
    """Anti-aliased irregular blob: radius r(θ) = r0·(1 + Σ a_k cos(kθ+φ_k)). Returns (alpha, normalised depth
    in [0,1] = 1 at the centre, 0 at the rim)."""
    yy, xx = _grid(s)
    dy, dx = yy - cy, xx - cx
    d = np.sqrt(dy * dy + dx * dx)
    theta = np.arctan2(dy, dx)
    r = np.ones_like(d)
    for k in range(2, 2 + harmonics):
        r += rng.uniform(-roughness, roughness) / (k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r *= r0
    alpha = np.clip(r - d + 0.5, 0.0, 1.0)
    depth = np.clip(1.0 - d / np.maximum(r, 1e-3), 0.0, 1.0)
    return alpha, depth


def _polyline_distance(s: int, pts: Array, pad: float) -> Tuple[Array, Tuple[slice, slice]]:
    """Distance of every pixel of the polyline's bounding box (padded) to the polyline."""
    y0 = int(max(0, np.floor(pts[:, 0].min() - pad)))
    y1 = int(min(s, np.ceil(pts[:, 0].max() + pad) + 1))
    x0 = int(max(0, np.floor(pts[:, 1].min() - pad)))
    x1 = int(min(s, np.ceil(pts[:, 1].max() + pad) + 1))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    best = np.full(yy.shape, np.inf, dtype=np.float32)
    for a, b in zip(pts[:-1], pts[1:]):
        ab = b - a
        denom = float(ab @ ab) or 1e-6
        t = np.clip(((yy - a[0]) * ab[0] + (xx - a[1]) * ab[1]) / denom, 0.0, 1.0)
        py, px = a[0] + t * ab[0], a[1] + t * ab[1]
        np.minimum(best, np.hypot(yy - py, xx - px), out=best)
    return best, (slice(y0, y1), slice(x0, x1))


# --------------------------------------------------------------------------------------------------------------
# Normal images
# --------------------------------------------------------------------------------------------------------------

def _render_tiles(rng: np.random.Generator, s: int) -> Tuple[Array, Array]:
    period = s / 6.0
    yy, xx = _grid(s)
    oy, ox = (float(v) for v in rng.uniform(0, period, 2))
    u, v = (xx + ox) / period, (yy + oy) / period
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - iu, v - iv
    # Distance (px) to the nearest grout line; grout half-width and a ~1.5 px soft edge.
    d = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv)) * period
    half = 0.045 * period
    grout = np.clip((half + 0.75 - d) / 1.5, 0.0, 1.0)[..., None]
    n = int(np.ceil(s / period)) + 2
    base = np.array([196.0, 176.0, 146.0], dtype=np.float32)
    tile_col = base + rng.normal(0, 4.0, (n, n, 3)) + rng.normal(0, 7.0, (n, n, 1))
    col = tile_col[iv, iu].astype(np.float32)
    # Raised tile: lit from the top-left, so the top/left bevel is brighter than the bottom/right one.
    bevel = np.clip(1.0 - d / (0.12 * period), 0.0, 1.0)
    side = np.sign((fu < 0.5).astype(np.float32) + (fv < 0.5).astype(np.float32) - 1.0)
    col = col + (10.0 * bevel * side)[..., None]
    col = col + 5.0 * _smooth_noise(rng, (s, s), (24, 24))[..., None]
    grout_col = np.array([118.0, 112.0, 104.0], dtype=np.float32)
    grout_col = grout_col + 6.0 * _smooth_noise(rng, (s, s), (40, 40))[..., None]
    img = col * (1 - grout) + grout_col * grout
    img += _gauss(rng, (s, s, 1), 2.5) + _gauss(rng, (s, s, 3), 1.0)
    img *= np.float32(rng.uniform(0.94, 1.06))  # exposure
    return img, np.ones((s, s), dtype=bool)


def _render_weave(rng: np.random.Generator, s: int) -> Tuple[Array, Array]:
    period = s / 14.0
    yy, xx = _grid(s)
    a = float(np.deg2rad(rng.uniform(-3.0, 3.0)))
    c = s / 2.0
    xr = (xx - c) * np.cos(a) - (yy - c) * np.sin(a)
    yr = (xx - c) * np.sin(a) + (yy - c) * np.cos(a)
    oy, ox = (float(v) for v in rng.uniform(0, 2, 2))  # phase in cells (two cells = one full over/under repeat)
    u, v = xr / period + ox, yr / period + oy
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - iu, v - iv
    warp_on_top = ((iu + iv) % 2) == 0
    across_warp = np.sin(np.pi * fu) ** 0.5  # round thread cross-section
    across_weft = np.sin(np.pi * fv) ** 0.5
    along_warp = 0.72 + 0.28 * np.sin(np.pi * fv)  # thread dips where it passes under
    along_weft = 0.72 + 0.28 * np.sin(np.pi * fu)
    shade = np.where(warp_on_top, across_warp * along_warp, across_weft * along_weft)
    # Fibre streaks run along each thread: noise fast across, slow along the thread direction.
    fib_warp = _smooth_noise(rng, (s, s), (6, s // 3))
    fib_weft = _smooth_noise(rng, (s, s), (s // 3, 6))
    fib = np.where(warp_on_top, fib_warp, fib_weft)
    warp_col = np.array([92.0, 112.0, 158.0], dtype=np.float32)
    weft_col = np.array([78.0, 96.0, 140.0], dtype=np.float32)
    col = np.where(warp_on_top[..., None], warp_col, weft_col)
    img = col * (0.35 + 0.65 * shade)[..., None] + (6.0 * fib)[..., None]
    img += 4.0 * _smooth_noise(rng, (s, s), (8, 8))[..., None]
    img += _gauss(rng, (s, s, 3), 2.0)
    img *= np.float32(rng.uniform(0.93, 1.07))
    return img, np.ones((s, s), dtype=bool)


def _render_disc(rng: np.random.Generator, s: int) -> Tuple[Array, Array]:
    yy, xx = _grid(s)
    cy, cx = (float(v) for v in s / 2.0 + rng.normal(0, 0.012 * s, 2))
    rot = float(np.deg2rad(rng.uniform(-12.0, 12.0)))
    light = float(rng.uniform(-0.4, 0.4) + np.pi / 4)  # light direction (radians), varies a little
    dy, dx = yy - cy, xx - cx
    r = np.sqrt(dy * dy + dx * dx)
    ang = np.arctan2(dy, dx)
    R, r_bore, r_groove = 0.34 * s, 0.085 * s, 0.2 * s

    gy, gx = float(np.cos(light)), float(np.sin(light))
    bg = np.array([52.0, 56.0, 64.0], dtype=np.float32) + (
        10.0 * ((yy / s - 0.5) * gy + (xx / s - 0.5) * gx) + 3.0 * _smooth_noise(rng, (s, s), (6, 6))
    )[..., None]
    bg = bg + _gauss(rng, (s, s, 3), 1.5)

    # Brushed metal: an anisotropic highlight across the disc (cos 2θ) plus a radial falloff.
    metal = 168.0 + 16.0 * np.cos(2.0 * (ang - light)) - 18.0 * (r / R) ** 2
    metal = metal + 3.0 * _smooth_noise(rng, (s, s), (12, 12)) + _gauss(rng, (s, s), 2.0)
    groove = np.exp(-(((r - r_groove) / (0.008 * s)) ** 2))
    metal = metal - 55.0 * groove
    # Turning marks: short faint concentric arcs, normal on a lathe-machined part. They make faint scratches
    # (which cross the turning direction) harder to tell from normal surface variation.
    for _ in range(int(rng.integers(0, 4))):
        ra = rng.uniform(0.12, 0.32) * s
        start, span = rng.uniform(-np.pi, np.pi), rng.uniform(0.3, 1.1)
        within = np.mod(ang - start, 2 * np.pi) < span
        arc = np.clip(max(0.6, 0.004 * s) - np.abs(r - ra) + 0.5, 0.0, 1.0) * within
        metal = metal + rng.uniform(-14.0, 14.0) * arc
    rim = np.clip((r - (R - 0.025 * s)) / (0.025 * s), 0.0, 1.0)  # chamfer darkens the outer edge
    metal = metal - 35.0 * rim
    disc_rgb = np.stack([metal * 0.97, metal * 0.99, metal * 1.03], axis=-1)

    inside = np.clip(R - r + 0.5, 0.0, 1.0) * np.clip(r - r_bore + 0.5, 0.0, 1.0)
    holes = np.zeros_like(r)
    r_holes, hole_r = 0.275 * s, 0.026 * s
    for k in range(6):
        t = rot + k * np.pi / 3
        hy, hx = cy + r_holes * np.sin(t), cx + r_holes * np.cos(t)
        holes = np.maximum(holes, np.clip(hole_r - np.hypot(yy - hy, xx - hx) + 0.5, 0.0, 1.0))
    # A key notch on the rim makes the rotation visible (a part that is only symmetric up to its pose).
    ky, kx = cy + R * np.sin(rot), cx + R * np.cos(rot)
    notch = np.clip(0.03 * s - np.hypot(yy - ky, xx - kx) + 0.5, 0.0, 1.0)
    cover = (inside * (1 - holes) * (1 - notch))[..., None]
    img = disc_rgb * cover + bg * (1 - cover)
    img *= np.float32(rng.uniform(0.92, 1.08))
    # Defects go on the metal, away from the bore and the rim.
    region = (r > r_bore + 0.03 * s) & (r < R - 0.03 * s)
    return img.astype(np.float32), region


_RENDERERS: Dict[str, Callable[[np.random.Generator, int], Tuple[Array, Array]]] = {
    "syn_tiles": _render_tiles,
    "syn_weave": _render_weave,
    "syn_disc": _render_disc,
}


# --------------------------------------------------------------------------------------------------------------
# Defects: each returns (alpha [s,s] in [0,1], target image [s,s,3]); image = img·(1-α) + target·α
# --------------------------------------------------------------------------------------------------------------

def _place(rng: np.random.Generator, region: Array, s: int) -> Tuple[float, float]:
    """A defect centre inside the allowed region, away from the border (so a centre crop keeps it)."""
    lo, hi = int(0.16 * s), int(0.84 * s)
    ys, xs = np.nonzero(region[lo:hi, lo:hi])
    i = int(rng.integers(len(ys)))
    return float(ys[i] + lo + rng.uniform(-0.5, 0.5)), float(xs[i] + lo + rng.uniform(-0.5, 0.5))


def _defect_scratch(rng, img, region, s, gain):
    cy, cx = _place(rng, region, s)
    length = rng.uniform(0.18, 0.36) * s
    phi = rng.uniform(0, np.pi)
    d = np.array([np.sin(phi), np.cos(phi)]) * length / 2
    a, b = np.array([cy, cx]) - d, np.array([cy, cx]) + d
    bend = np.array([-d[1], d[0]]) / (length / 2) * rng.uniform(-0.25, 0.25) * length
    ctrl = (a + b) / 2 + bend
    t = np.linspace(0, 1, 24)[:, None]
    pts = ((1 - t) ** 2 * a + 2 * (1 - t) * t * ctrl + t ** 2 * b).astype(np.float32)
    width = max(1.4, rng.uniform(0.007, 0.014) * s)
    dist, box = _polyline_distance(s, pts, width + 2)
    alpha = np.zeros((s, s), dtype=np.float32)
    alpha[box] = np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)
    contrast = gain * rng.uniform(35.0, 85.0) * (1 if rng.random() < 0.5 else -1)
    return alpha * rng.uniform(0.7, 1.0), img + contrast


def _defect_spot(rng, img, region, s, gain):
    cy, cx = _place(rng, region, s)
    r0 = max(1.6, rng.uniform(0.016, 0.034) * s)
    alpha, depth = _blob_alpha(rng, s, cy, cx, r0, roughness=0.3)
    palettes = np.array([[40.0, 32.0, 24.0], [28.0, 28.0, 30.0], [120.0, 70.0, 30.0], [225.0, 222.0, 205.0]])
    colour = palettes[int(rng.integers(len(palettes)))].astype(np.float32)
    target = np.broadcast_to(colour, img.shape) + (8.0 * depth)[..., None]
    return alpha * gain * rng.uniform(0.65, 0.95), target


def _defect_stain(rng, img, region, s, gain):
    cy, cx = _place(rng, region, s)
    r0 = max(3.0, rng.uniform(0.055, 0.1) * s)
    alpha, depth = _blob_alpha(rng, s, cy, cx, r0, roughness=0.35, harmonics=5)
    tints = np.array([[1.18, 0.92, 0.62], [0.7, 0.95, 1.2], [1.15, 0.75, 0.8], [0.8, 1.1, 0.72]])
    tint = tints[int(rng.integers(len(tints)))].astype(np.float32)
    # Dried stains are darker at the rim ("coffee ring"); strength never drops below ~half inside the mask.
    ring = 0.55 + 0.45 * np.exp(-((depth / 0.25) ** 2))
    strength = gain * rng.uniform(0.55, 0.95)
    # A soaked area is tinted, darker and flatter (the liquid fills the surface relief): a pure hue shift
    # barely registers on dark, saturated fabric.
    flat = _blur(img, max(2, s // 16))
    target = (flat + (img - flat) * rng.uniform(0.15, 0.45)) * tint * rng.uniform(0.6, 0.85)
    return alpha * ring * strength, target


def _defect_cut_paste(rng, img, region, s, gain):
    cy, cx = _place(rng, region, s)
    ps = max(4, int(round(rng.uniform(0.09, 0.16) * s)))
    scale = rng.uniform(0.65, 1.5)
    src = int(min(s - 2, max(4, round(ps * scale))))
    sy, sx = (int(v) for v in rng.integers(0, s - src, 2))
    patch = img[sy:sy + src, sx:sx + src]
    channels = [Image.fromarray(np.ascontiguousarray(patch[..., c], dtype=np.float32)) for c in range(3)]
    patch = np.stack([np.asarray(ch.resize((ps, ps), Image.BILINEAR)) for ch in channels], axis=-1)
    patch = np.rot90(patch, k=int(rng.integers(1, 4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    patch = patch * rng.uniform(0.85, 1.15)
    y0 = int(np.clip(round(cy - ps / 2), 0, s - ps))
    x0 = int(np.clip(round(cx - ps / 2), 0, s - ps))
    target = img.copy()
    target[y0:y0 + ps, x0:x0 + ps] = patch
    alpha, _ = _blob_alpha(rng, s, y0 + ps / 2 - 0.5, x0 + ps / 2 - 0.5, ps * 0.45, roughness=0.15)
    return alpha, target


_DEFECTS = {
    "scratch": _defect_scratch,
    "spot": _defect_spot,
    "stain": _defect_stain,
    "cut_paste": _defect_cut_paste,
}


def _to_uint8(img: Array) -> Array:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _rng(seed: int, category: str, split: str, defect: str, index: int) -> np.random.Generator:
    key = [int(seed), zlib.crc32(category.encode()), _SPLIT_CODES[split], zlib.crc32(defect.encode()), int(index)]
    return np.random.default_rng(key)


def render_normal(category: str, size: int, seed: int, split: str, index: int) -> Array:
    """One defect-free uint8 image [size,size,3]."""
    img, _ = _RENDERERS[category](_rng(seed, category, split, "good", index), size)
    return _to_uint8(img)


def render_defect(category: str, defect: str, size: int, seed: int, index: int) -> Tuple[Array, Array]:
    """One defective uint8 image [size,size,3] and its boolean mask: the pixels the defect touched."""
    image, mask, _ = render_defect_with_clean(category, defect, size, seed, index)
    return image, mask


def render_defect_with_clean(
    category: str, defect: str, size: int, seed: int, index: int
) -> Tuple[Array, Array, Array]:
    """(defective image, mask, the same image before the defect was applied): lets tests check that exactly
    the masked pixels changed."""
    rng = _rng(seed, category, "test_defect", defect, index)
    img, region = _RENDERERS[category](rng, size)
    min_area = max(3, int(2e-4 * size * size))
    # Per-image severity: most defects are clear, a tail is faint (as in real inspection data), so a good
    # model scores high but not trivially perfect. Cut-paste is structural and ignores it.
    severity = rng.uniform(0.35, 1.0) ** 0.7
    for _ in range(20):  # redraw the rare defect that falls almost entirely outside the allowed region
        alpha, target = _DEFECTS[defect](rng, img, region, size, _DEFECT_GAIN[category] * severity)
        alpha = alpha * region
        # Quantise alpha first so the mask is exactly the set of pixels the composite can change.
        alpha = np.where(alpha >= 1.0 / 64, alpha, 0.0).astype(np.float32)
        if np.count_nonzero(alpha) >= min_area:
            break
    out = img * (1 - alpha[..., None]) + np.asarray(target, dtype=np.float32) * alpha[..., None]
    return _to_uint8(out), alpha > 0, _to_uint8(img)


# --------------------------------------------------------------------------------------------------------------
# Writing the MVTec layout
# --------------------------------------------------------------------------------------------------------------

def _save_png(arr: Array, path: Path) -> None:
    # Fixed PNG settings: identical pixels give identical bytes (same Pillow/zlib).
    Image.fromarray(arr).save(path, format="PNG", compress_level=1, optimize=False)
    os.chmod(path, 0o644)


def _write_category(dest: Path, category: str, p: dict) -> None:
    size, seed = p["size"], p["seed"]
    (dest / "train" / "good").mkdir(parents=True)
    (dest / "test" / "good").mkdir(parents=True)
    for i in range(p["num_train"]):
        _save_png(render_normal(category, size, seed, "train", i), dest / "train" / "good" / f"{i:03d}.png")
    for i in range(p["num_test_good"]):
        _save_png(render_normal(category, size, seed, "test_good", i), dest / "test" / "good" / f"{i:03d}.png")
    for defect in p["defect_types"]:
        (dest / "test" / defect).mkdir(parents=True)
        (dest / "ground_truth" / defect).mkdir(parents=True)
        for i in range(p["num_test_defect"]):
            img, mask = render_defect(category, defect, size, seed, i)
            _save_png(img, dest / "test" / defect / f"{i:03d}.png")
            _save_png(mask.astype(np.uint8) * 255, dest / "ground_truth" / defect / f"{i:03d}_mask.png")
    # Marker last: its presence means the folder is complete.
    (dest / MARKER).write_text(json.dumps(p, sort_keys=True, indent=1) + "\n")
    os.chmod(dest / MARKER, 0o644)


def _read_marker(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def generate_synthetic(
    root: str | Path,
    categories: Optional[Iterable[str]] = None,
    num_train: int = 60,
    num_test_good: int = 20,
    num_test_defect: int = 10,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Write (or reuse) the synthetic dataset under `root` in the MVTec AD layout; returns `root`.

    `num_test_defect` is per defect type. Categories already generated with the same parameters are left
    untouched; others are rendered into a temporary folder and renamed into place.
    """
    root = Path(root).expanduser()
    cats: List[str] = list(categories) if categories is not None else list(CATEGORIES)
    for c in cats:
        if c not in CATEGORIES:
            raise DataError(f"unknown synthetic category '{c}'; valid: {', '.join(CATEGORIES)} (set category=<name>)")
    for key, val, low in (("num_train", num_train, 1), ("num_test_good", num_test_good, 1),
                          ("num_test_defect", num_test_defect, 1), ("generated_size", size, 32)):
        if int(val) < low:
            raise DataError(f"synthetic dataset: {key}={val} must be >= {low}")
    root.mkdir(parents=True, exist_ok=True)
    for cat in cats:
        params = {
            "generator_version": GENERATOR_VERSION, "category": cat, "num_train": int(num_train),
            "num_test_good": int(num_test_good), "num_test_defect": int(num_test_defect), "size": int(size),
            "seed": int(seed), "defect_types": list(DEFECT_TYPES),
        }
        dest = root / cat
        if dest.exists():
            old = _read_marker(dest)
            if old == params:
                continue
            if old is None:
                raise DataError(
                    f"{dest} exists but was not generated by ad (no {MARKER}); move it away or set dataset.root "
                    "to another folder"
                )
        tmp = Path(tempfile.mkdtemp(prefix=f".{cat}.tmp-", dir=root))
        try:
            # mkdtemp makes the folder 0700; the dataset is shared data like any other (0755, files 0644)
            os.chmod(tmp, 0o755)
            _write_category(tmp, cat, params)
            _swap_into_place(tmp, dest, params)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def _swap_into_place(tmp: Path, dest: Path, params: dict) -> None:
    """Rename a finished folder into place. Parallel jobs of a sweep may race: whoever finishes second keeps the
    first one's identical copy (never pulling files away from under a job that is already reading them)."""
    if _read_marker(dest) == params:
        return
    if dest.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        try:
            os.replace(dest, trash / dest.name)
        except FileNotFoundError:
            pass  # someone else moved it first
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, dest)
    except OSError:
        if _read_marker(dest) != params:
            raise


class Synthetic(AnomalyDataModule):
    """The generated dataset (MVTec layout under `root`); the category is generated on first use."""

    name = "synthetic"

    def __init__(
        self,
        root: str,
        category: str = "syn_disc",
        num_train: int = 60,
        num_test_good: int = 20,
        num_test_defect: int = 10,
        generated_size: int = 256,
        generation_seed: int = 0,
        **common: Any,  # splitting and loading options: AnomalyDataModule's keyword arguments
    ) -> None:
        super().__init__(root, category, **common)
        self.num_train = int(num_train)
        self.num_test_good = int(num_test_good)
        self.num_test_defect = int(num_test_defect)
        self.generated_size = int(generated_size)
        self.generation_seed = int(generation_seed)

    def list_samples(self) -> List[Sample]:
        from ad.data.mvtec import list_mvtec

        if self.category not in CATEGORIES:
            raise DataError(
                f"unknown synthetic category '{self.category}'; valid: {', '.join(CATEGORIES)} (set category=<name>)"
            )
        generate_synthetic(
            self.root, [self.category], num_train=self.num_train, num_test_good=self.num_test_good,
            num_test_defect=self.num_test_defect, size=self.generated_size, seed=self.generation_seed,
        )
        return list_mvtec(self.root, self.category)
