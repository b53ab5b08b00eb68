"""Anomaly-map helpers shared by the models: resizing feature-level maps to the input and Gaussian smoothing."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _as_4d(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.dim() == 3:
        return x.unsqueeze(1), True
    if x.dim() == 4:
        return x, False
    raise ValueError(f"expected a map of shape [B,H,W] or [B,C,H,W], got {tuple(x.shape)}")


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize [B,H,W] or [B,C,H,W] maps to `size` (h, w); a no-op when the size already matches."""
    x4, squeezed = _as_4d(x)
    size = (int(size[0]), int(size[1]))
    if tuple(x4.shape[-2:]) != size:
        x4 = F.interpolate(x4, size=size, mode="bilinear", align_corners=False)
    return x4.squeeze(1) if squeezed else x4


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian, truncated at `truncate`·σ like scipy.ndimage.gaussian_filter."""
    radius = int(truncate * float(sigma) + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    return k / k.sum()


def gaussian_blur2d(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian smoothing of [B,H,W] or [B,C,H,W] maps. Borders are mirrored (scipy.ndimage's
    mode='mirror') so that a map's border is not pulled towards zero. σ <= 0 returns `x` unchanged."""
    if sigma is None or sigma <= 0:
        return x
    x4, squeezed = _as_4d(x)
    b, c, h, w = x4.shape
    k = gaussian_kernel1d(sigma, truncate, dtype=x4.dtype, device=x4.device)
    r = (k.numel() - 1) // 2
    y = x4.reshape(b * c, 1, h, w)
    # 'reflect' padding needs pad < size; fall back to replicate for tiny maps
    mode_h = "reflect" if r < h else "replicate"
    mode_w = "reflect" if r < w else "replicate"
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode_h), k.view(1, 1, -1, 1))
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode_w), k.view(1, 1, 1, -1))
    y = y.reshape(b, c, h, w)
    return y.squeeze(1) if squeezed else y


def cosine_distance_map(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 - cosine similarity along channels: [B,C,H,W] x2 -> [B,H,W] in [0, 2]."""
    return 1.0 - F.cosine_similarity(a, b, dim=1, eps=eps)


def max_score(maps: torch.Tensor) -> torch.Tensor:
    """Image score = maximum of each [B,H,W] map."""
    return maps.flatten(1).amax(dim=1)


def top_fraction_score(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Image score = mean of the largest `fraction` of each map's values (at least one value), e.g. 0.01:
    the top 1 % of pixels (Dinomaly) or of patch distances (AnomalyDINO)."""
    flat = maps.flatten(1)
    k = max(1, int(flat.shape[1] * float(fraction)))
    return flat.topk(k, dim=1).values.mean(dim=1)


__all__ = ["upsample_to", "gaussian_blur2d", "gaussian_kernel1d", "cosine_distance_map", "max_score", "top_fraction_score"]
