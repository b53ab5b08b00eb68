"""Map and feature helpers shared by every model family: resizing feature-level maps to the input, Gaussian
smoothing (the one blur of the package), aligning feature pyramids, and the image score of a map."""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

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


def resize_input(images: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    """The one input resize of the models that work at a resolution of their own (EfficientAD, DRAEM, the
    autoencoders, Uninformed Students): [B,C,H,W] images to size×size, bilinear with antialiasing so that
    shrinking does not alias fine texture. A no-op when `size` is falsy or already matches."""
    if not size or tuple(images.shape[-2:]) == (int(size), int(size)):
        return images
    return F.interpolate(images, size=(int(size), int(size)), mode="bilinear", align_corners=False, antialias=True)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, dtype=torch.float32, device=None,
                      radius: Optional[int] = None) -> torch.Tensor:
    """Normalised 1-D Gaussian, truncated at `truncate`·σ like scipy.ndimage.gaussian_filter (or at an explicit
    `radius`: SSIM's fixed 11-tap window)."""
    radius = int(truncate * float(sigma) + 0.5) if radius is None else int(radius)
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    return k / k.sum()


def gaussian_blur2d(x: torch.Tensor, sigma: float, truncate: float = 4.0, radius: Optional[int] = None) -> torch.Tensor:
    """Separable Gaussian smoothing of [B,H,W] or [B,C,H,W] maps — the one blur of the package. Borders are
    mirrored (scipy.ndimage's mode='mirror') so that a map's border is not pulled towards zero. σ <= 0 returns
    `x` unchanged."""
    if sigma is None or sigma <= 0:
        return x
    x4, squeezed = _as_4d(x)
    b, c, h, w = x4.shape
    k = gaussian_kernel1d(sigma, truncate, dtype=x4.dtype, device=x4.device, radius=radius)
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


@functools.lru_cache(maxsize=32)
def _resize_blur_operator(n_in: int, n_out: int, sigma: float) -> torch.Tensor:
    """[n_out, n_in] matrix of 1-D bilinear upsampling followed by Gaussian smoothing along one axis.

    Built by pushing the identity basis through the very helpers it replaces (`upsample_to`,
    `gaussian_blur2d`): both are linear and separable per axis, so applying this matrix on each axis gives
    the same map as upsampling then blurring, at a fraction of the cost (two small matmuls instead of a
    33-tap convolution over the full-resolution map).
    """
    basis = torch.eye(n_in, dtype=torch.float64).unsqueeze(-1)  # n_in maps of shape [n_in, 1]
    cols = gaussian_blur2d(upsample_to(basis, (n_out, 1)), sigma)  # blur along the single column is identity
    return cols.squeeze(-1).T.contiguous()


def upsample_maps(maps: torch.Tensor, size: Tuple[int, int], sigma: float = 0.0) -> torch.Tensor:
    """[B,h,w] patch-grid scores -> [B,H,W] at input resolution (bilinear), optionally Gaussian-smoothed
    (exactly `gaussian_blur2d(upsample_to(maps, size), sigma)`, computed as A_h · map · A_wᵀ)."""
    h, w = (int(v) for v in maps.shape[-2:])  # ints: traced sizes (ONNX export) would miss the cache
    a_h = _resize_blur_operator(h, int(size[0]), float(sigma)).to(maps.device, maps.dtype)
    a_w = _resize_blur_operator(w, int(size[1]), float(sigma)).to(maps.device, maps.dtype)
    return a_h @ maps @ a_w.T


def aligned_features(
    features: Sequence[torch.Tensor], pool: int = 0, size: Optional[Tuple[int, int]] = None, mode: str = "bilinear"
) -> List[torch.Tensor]:
    """Optionally neighbourhood-average each layer (PatchCore's locally aware patches: mean over a pool×pool
    window, stride 1, zero padding counted as in the paper's implementation) and resize every layer to `size`
    (default: the first, finest layer's grid) with `mode` ("bilinear" or "nearest")."""
    size = tuple(size) if size is not None else tuple(features[0].shape[-2:])
    out = []
    for f in features:
        if pool and pool > 1:
            f = F.avg_pool2d(f, kernel_size=pool, stride=1, padding=pool // 2)
        if tuple(f.shape[-2:]) != size:
            f = F.interpolate(f, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
        out.append(f)
    return out


def full_precision(x: torch.Tensor):
    """Autocast off on `x`'s device. Memory models run only their backbone in mixed precision: distances,
    covariances and PCA residuals lose too much in float16, and mixed dtypes break in-place index updates."""
    return torch.autocast(x.device.type, enabled=False)
