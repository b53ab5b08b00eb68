"""A validation objective that uses no test image: CutPaste-style synthetic defects on validation normals.

Validation holds normal images only, so there is no real anomaly to rank. We paste a jittered patch of
another validation image (or a colour blob when there is one image) into each validation image and measure
how well the model ranks corrupted copies above the originals (image AUROC). It is what hyper-parameter
searches optimise, so test images never leak into model selection.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def corrupt(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Return a corrupted copy of a batch [N,3,H,W] in [0,1]: one pasted, colour-shifted patch per image."""
    g = torch.Generator().manual_seed(seed)
    out = images.clone()
    n, _, h, w = images.shape
    for i in range(n):
        ph = int(h * (0.08 + 0.12 * torch.rand(1, generator=g).item()))
        pw = int(w * (0.08 + 0.12 * torch.rand(1, generator=g).item()))
        ph, pw = max(ph, 2), max(pw, 2)
        sy, ty = (int(torch.randint(0, h - ph + 1, (1,), generator=g)) for _ in range(2))
        sx, tx = (int(torch.randint(0, w - pw + 1, (1,), generator=g)) for _ in range(2))
        src = images[(i + 1) % n] if n > 1 else images[i]
        patch = src[:, sy:sy + ph, sx:sx + pw].flip(-1)
        shift = (torch.rand(3, 1, 1, generator=g) - 0.5) * 0.6
        out[i, :, ty:ty + ph, tx:tx + pw] = (patch + shift).clamp(0, 1)
    return out


@torch.no_grad()
def synthetic_anomaly_auroc(predict: Callable[[torch.Tensor], np.ndarray], images: torch.Tensor, seed: int = 0,
                            batch_size: int = 16) -> float:
    """AUROC of scores on corrupted validation images vs the clean ones."""
    if len(images) == 0:
        return float("nan")
    clean = np.concatenate([predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    bad_images = corrupt(images, seed)
    bad = np.concatenate([predict(bad_images[i:i + batch_size]) for i in range(0, len(bad_images), batch_size)])
    y = np.r_[np.zeros(len(clean)), np.ones(len(bad))]
    s = np.r_[clean, bad]
    if not np.all(np.isfinite(s)):
        return float("nan")
    return float(roc_auc_score(y, s))
