"""Structural similarity (Wang et al. 2004) as a per-pixel map, shared by the autoencoders and DRAEM.

SSIM compares local luminance, contrast and structure in a Gaussian window (11x11, sigma 1.5, the paper's
choice). The map keeps the input resolution (reflection padding) so `1 - ssim_map` is directly a pixel anomaly
map, and its mean is the usual SSIM training loss.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=16)
def _gaussian_1d(window_size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(window_size, dtype=torch.float64) - (window_size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (g / g.sum()).float()


def gaussian_blur(x: torch.Tensor, sigma: float, window_size: int | None = None) -> torch.Tensor:
    """Separable Gaussian filter of a [B,C,H,W] tensor, reflection-padded so the size is kept."""
    if sigma <= 0:
        return x
    if window_size is None:
        window_size = 2 * int(round(4.0 * sigma)) + 1  # +-4 sigma covers the kernel's mass
    c = x.shape[1]
    h, w = x.shape[-2:]
    # reflection needs pad < size; shrink the window for tiny maps instead of failing
    window_size = min(window_size, 2 * (min(h, w) - 1) + 1)
    g = _gaussian_1d(window_size, float(sigma)).to(device=x.device, dtype=x.dtype)
    pad = window_size // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, window_size), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, window_size, 1), groups=c)


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0,
    k1: float = 0.01, k2: float = 0.03,
) -> torch.Tensor:
    """Per-pixel SSIM of two [B,C,H,W] images, averaged over channels -> [B,H,W] (1 = identical)."""
    if x.shape != y.shape:
        raise ValueError(f"ssim_map needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    with torch.autocast(x.device.type, enabled=False):  # variances are differences of squares: fp16 cancels
        return _ssim(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x,
                     y.float() if y.dtype in (torch.float16, torch.bfloat16) else y, window_size, sigma, c1, c2)


def _ssim(x, y, window_size, sigma, c1, c2):
    # one filtering pass over the five local moments
    stats = gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), sigma, window_size)
    mu_x, mu_y, xx, yy, xy = stats.chunk(5, dim=1)
    var_x = xx - mu_x**2
    var_y = yy - mu_y**2
    cov = xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).mean(dim=1)


def ssim_loss(x: torch.Tensor, y: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """1 - mean SSIM: the structural reconstruction loss of Bergmann et al. (2019) and DRAEM."""
    return 1.0 - ssim_map(x, y, window_size=window_size).mean()
