"""Synthetic anomalies for DRAEM (Zavrtanik et al., ICCV 2021): Perlin-noise masks filled with augmented
texture from an anomaly source.

The source is a folder of images (the paper uses DTD) when configured, otherwise textures generated here
(fractal Perlin noise, gratings, tiles, blobs, cells, coloured noise) so DRAEM trains fully offline. All
randomness comes from a `numpy.random.Generator`, so a seed reproduces the exact anomalies (validation uses a
fixed one).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from scipy import ndimage

from ad.errors import ConfigError
from ad.io import IMAGE_EXTENSIONS, find_images, load_image



# --- Perlin noise ----------------------------------------------------------------------------------------------
def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)  # Perlin's quintic: C2-continuous across cell borders


def perlin_noise(shape: Tuple[int, int], res: Tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient noise with `res` = (rows, cols) lattice periods over `shape`; values in about [-1, 1]."""
    h, w = shape
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    cy, cx = -(-h // ry), -(-w // rx)  # pixels per cell (ceil), the extra rows/cols are cropped below
    angles = 2 * math.pi * rng.random((ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    ys = np.arange(ry * cy) / cy
    xs = np.arange(rx * cx) / cx
    y0, x0 = ys.astype(int)[:, None], xs.astype(int)[None, :]
    fy, fx = (ys - np.floor(ys))[:, None], (xs - np.floor(xs))[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gy[y0 + dy, x0 + dx] * (fy - dy) + gx[y0 + dy, x0 + dx] * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1 - tx) + corner(0, 1) * tx
    bottom = corner(1, 0) * (1 - tx) + corner(1, 1) * tx
    return (math.sqrt(2) * (top * (1 - ty) + bottom * ty))[:h, :w].astype(np.float32)


def fractal_perlin(shape: Tuple[int, int], rng: np.random.Generator, base_res: int = 2, octaves: int = 4) -> np.ndarray:
    """Sum of Perlin octaves (each twice the frequency, half the amplitude) normalised to [0, 1]."""
    total = np.zeros(shape, dtype=np.float32)
    amp, res = 1.0, base_res
    for _ in range(octaves):
        r = min(res, max(1, min(shape) // 2))
        total += amp * perlin_noise(shape, (r, r), rng)
        amp, res = amp * 0.5, res * 2
    return _stretch(total)


def perlin_mask(
    shape: Tuple[int, int], rng: np.random.Generator, min_scale_exp: int = 0, max_scale_exp: int = 6,
    threshold: float = 0.5, max_tries: int = 50,
) -> np.ndarray:
    """DRAEM's anomaly mask: Perlin noise with 2^k periods per axis (k drawn in [min, max) independently for
    rows and columns), rotated by a random angle in [-90, 90] deg and thresholded. Redrawn until non-empty."""
    h, w = shape
    cap = max(0, int(math.log2(max(1, min(h, w) // 2))))  # at least 2 pixels per lattice cell
    hi = max(min_scale_exp + 1, min(max_scale_exp, cap + 1))
    for _ in range(max_tries):
        ry, rx = 2 ** int(rng.integers(min_scale_exp, hi)), 2 ** int(rng.integers(min_scale_exp, hi))
        noise = perlin_noise(shape, (ry, rx), rng)
        noise = ndimage.rotate(noise, float(rng.uniform(-90, 90)), reshape=False, order=1, mode="constant", cval=0.0)
        mask = (noise > threshold).astype(np.float32)
        if mask.any():
            return mask
    # vanishingly rare (the noise never crossed the threshold): fall back to the top decile of the last noise
    return (noise >= np.quantile(noise, 0.9)).astype(np.float32)


# --- procedural textures ---------------------------------------------------------------------------------------
def _stretch(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo + 1e-8)).astype(np.float32)


def _palette(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map a [0,1] field to colours through a random ramp of 2-4 colours -> [H,W,3]."""
    n = int(rng.integers(2, 5))
    stops = np.sort(rng.random(n))
    stops[0], stops[-1] = 0.0, 1.0
    colors = rng.random((n, 3))
    return np.stack([np.interp(t, stops, colors[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def _coords(shape: Tuple[int, int], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in a randomly rotated frame."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, math.pi)
    return xx * math.cos(a) + yy * math.sin(a), -xx * math.sin(a) + yy * math.cos(a)


def _tex_fractal(shape, rng):
    return _palette(fractal_perlin(shape, rng, base_res=int(rng.integers(1, 5)), octaves=int(rng.integers(2, 6))), rng)


def _tex_grating(shape, rng):
    u, _ = _coords(shape, rng)
    period = rng.uniform(3, max(4.0, min(shape) / 4))
    warp = rng.uniform(0, 3) * perlin_noise(shape, (2, 2), rng)
    t = 0.5 + 0.5 * np.sin(2 * math.pi * u / period + warp)
    if rng.random() < 0.5:
        t = (t > 0.5).astype(np.float32)  # hard stripes
    return _palette(t, rng)


def _tex_tiles(shape, rng):
    u, v = _coords(shape, rng)
    cell = rng.uniform(3, max(4.0, min(shape) / 3))
    t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    t = np.clip(t + 0.15 * perlin_noise(shape, (4, 4), rng), 0, 1)
    return _palette(t, rng)


def _tex_blobs(shape, rng):
    h, w = shape
    img = np.broadcast_to(rng.random(3), (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(8, 48))):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, max(2.0, min(h, w) / 6))
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.random(3)
    return img.astype(np.float32)


def _tex_cells(shape, rng):
    h, w = shape
    pts = rng.random((int(rng.integers(6, 40)), 2)) * (h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    colors = rng.random((len(pts), 3)).astype(np.float32)
    img = colors[d.argmin(-1)]
    if rng.random() < 0.5:  # darken cell borders (distance to nearest minus second nearest)
        part = np.sort(d, axis=-1)
        img = img * _stretch(np.sqrt(part[..., 1]) - np.sqrt(part[..., 0]))[..., None] ** 0.3
    return img


def _tex_noise(shape, rng):
    noise = rng.random((*shape, 3)).astype(np.float32)
    sigma = rng.uniform(0.5, 4)
    return np.stack([_stretch(ndimage.gaussian_filter(noise[..., c], sigma)) for c in range(3)], -1)


_TEXTURES: List[Callable] = [_tex_fractal, _tex_grating, _tex_tiles, _tex_blobs, _tex_cells, _tex_noise]


def procedural_texture(shape: Tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """A random texture [3,H,W] in [0,1]; sometimes the product of two kinds for richer patterns."""
    tex = _TEXTURES[int(rng.integers(len(_TEXTURES)))](shape, rng)
    if rng.random() < 0.3:
        tex = tex * _TEXTURES[int(rng.integers(len(_TEXTURES)))](shape, rng)
        tex = _stretch(tex)
    return torch.from_numpy(np.ascontiguousarray(tex)).permute(2, 0, 1).float()


# --- DRAEM's anomaly-source augmentations (three of ten, in random order) ------------------------------------
def _u8(img: torch.Tensor) -> torch.Tensor:
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _f(img: torch.Tensor) -> torch.Tensor:
    return img.float() / 255.0


_AUGMENTERS: List[Callable[[torch.Tensor, np.random.Generator], torch.Tensor]] = [
    lambda x, r: TF.adjust_gamma(x, float(r.uniform(0.5, 2.0))),
    lambda x, r: x * float(r.uniform(0.8, 1.2)) + float(r.uniform(-30, 30)) / 255.0,
    lambda x, r: TF.adjust_sharpness(x, float(r.uniform(0.0, 2.0))),
    lambda x, r: TF.adjust_saturation(TF.adjust_hue(x, float(r.uniform(-0.14, 0.14))), float(r.uniform(0.5, 1.5))),
    lambda x, r: TF.solarize(x, float(r.uniform(32, 128)) / 255.0) if r.random() < 0.5 else x,
    lambda x, r: _f(TF.posterize(_u8(x), int(r.integers(1, 9)))),
    lambda x, r: TF.invert(x),
    lambda x, r: TF.autocontrast(x),
    lambda x, r: _f(TF.equalize(_u8(x))),
    lambda x, r: TF.rotate(x, float(r.uniform(-45, 45))),
]


def augment_source(img: torch.Tensor, rng: np.random.Generator, n: int = 3) -> torch.Tensor:
    for i in rng.permutation(len(_AUGMENTERS))[:n]:
        img = _AUGMENTERS[int(i)](img, rng).clamp(0, 1)
    return img


# --- the synthesiser -------------------------------------------------------------------------------------------
def list_source_images(source_dir: str | Path) -> List[Path]:
    """Images under an anomaly-source folder (recursive: DTD keeps one sub-folder per texture class)."""
    root = Path(source_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"anomaly_source_dir={source_dir} is not a folder; point it at a texture image folder (e.g. DTD's "
            "images/) or set model.anomaly_source_dir=null to use procedural textures"
        )
    files = find_images(root)
    if not files:
        raise ConfigError(
            f"anomaly_source_dir={source_dir} contains no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "add texture images or set model.anomaly_source_dir=null"
        )
    return files


class AnomalySynthesizer:
    """Turns a batch of normal images into DRAEM training triples.

    For each image: with `rotate_normal_prob` rotate it by [-90, 90] deg (the paper's augmentation of normals);
    with `anomaly_prob` paste an anomaly: `a = x(1-m) + (1-b)·s·m + b·x·m` with `m` a Perlin mask, `s` an
    augmented source texture and opacity `b` ~ U(0, beta_max). Returns (clean targets, inputs, masks [B,1,H,W]).
    """

    def __init__(
        self, source_dir: Optional[str] = None, anomaly_prob: float = 0.5, beta_max: float = 0.8,
        rotate_normal_prob: float = 0.3, perlin_min_scale_exp: int = 0, perlin_max_scale_exp: int = 6,
        perlin_threshold: float = 0.5,
    ) -> None:
        self.source_files: Optional[List[Path]] = list_source_images(source_dir) if source_dir else None
        self.anomaly_prob = float(anomaly_prob)
        self.beta_max = float(beta_max)
        self.rotate_normal_prob = float(rotate_normal_prob)
        self.perlin = dict(min_scale_exp=int(perlin_min_scale_exp), max_scale_exp=int(perlin_max_scale_exp),
                           threshold=float(perlin_threshold))

    def source(self, shape: Tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
        if self.source_files is None:
            return procedural_texture(shape, rng)

        im = load_image(self.source_files[int(rng.integers(len(self.source_files)))])
        im = im.resize((shape[1], shape[0]))
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = images.device
        images = images.detach().float().cpu()
        shape = tuple(images.shape[-2:])
        clean, augmented, masks = [], [], []
        for x in images:
            if rng.random() < self.rotate_normal_prob:
                x = TF.rotate(x, float(rng.uniform(-90, 90)))
            m = torch.zeros(1, *shape)
            a = x
            if rng.random() < self.anomaly_prob:
                m = torch.from_numpy(perlin_mask(shape, rng, **self.perlin))[None]
                s = augment_source(self.source(shape, rng), rng)
                beta = float(rng.uniform(0, self.beta_max))
                a = x * (1 - m) + (1 - beta) * s * m + beta * x * m
            clean.append(x)
            augmented.append(a)
            masks.append(m)
        to = lambda t: torch.stack(t).to(device)  # noqa: E731
        return to(clean), to(augmented), to(masks)
