"""Structural similarity (Wang et al. 2004) as a per-pixel map, shared by the autoencoders and DRAEM.

SSIM compares local luminance, contrast and structure in a Gaussian window (11x11, sigma 1.5, the paper's
choice). The map keeps the input resolution (reflection padding) so `1 - ssim_map` is directly a pixel anomaly
map, and its mean is the usual SSIM training loss.
"""
from __future__ import annotations

import torch

from ad.models._maps import gaussian_blur2d


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
    stats = gaussian_blur2d(torch.cat([x, y, x * x, y * y, x * y], dim=1), sigma, radius=window_size // 2)
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
