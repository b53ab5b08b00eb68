"""A validation objective that uses no test image: CutPaste-style synthetic defects on validation normals.

Validation holds normal images only, so there is no real anomaly to rank. We paste a jittered patch of
another validation image into each validation image and measure how well the model ranks corrupted copies
above the originals (image AUROC). One strength saturates (every model ranks obvious pastes perfectly), so
the objective averages over levels from faint and small to obvious. It is what hyper-parameter searches
optimise, so test images never leak into model selection.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

# (patch side as a fraction of the image side, colour shift amplitude): faint/small -> obvious
LEVELS: Tuple[Tuple[float, float], ...] = ((0.03, 0.04), (0.06, 0.1), (0.12, 0.2), (0.2, 0.3))


def corrupt(images: torch.Tensor, size: float = 0.12, shift: float = 0.2, seed: int = 0) -> torch.Tensor:
    """Corrupted copy of a batch [N,3,H,W] in [0,1]: one pasted, flipped, colour-shifted patch per image, its
    side drawn in [size, 1.5*size] of the image side."""
    g = torch.Generator().manual_seed(seed)
    out = images.clone()
    n, _, h, w = images.shape
    for i in range(n):
        ph = max(2, int(h * size * (1 + 0.5 * torch.rand(1, generator=g).item())))
        pw = max(2, int(w * size * (1 + 0.5 * torch.rand(1, generator=g).item())))
        ph, pw = min(ph, h), min(pw, w)
        sy, ty = (int(torch.randint(0, h - ph + 1, (1,), generator=g)) for _ in range(2))
        sx, tx = (int(torch.randint(0, w - pw + 1, (1,), generator=g)) for _ in range(2))
        src = images[(i + 1) % n] if n > 1 else images[i]
        patch = src[:, sy:sy + ph, sx:sx + pw].flip(-1)
        delta = (torch.rand(3, 1, 1, generator=g) * 2 - 1) * shift
        out[i, :, ty:ty + ph, tx:tx + pw] = (patch + delta).clamp(0, 1)
    return out


@torch.no_grad()
def synthetic_anomaly_auroc(predict: Callable[[torch.Tensor], np.ndarray], images: torch.Tensor, seed: int = 0,
                            batch_size: int = 16, levels: Sequence[Tuple[float, float]] = LEVELS) -> Dict[str, float]:
    """AUROC of corrupted vs clean validation images per level, and their mean ("objective")."""
    def score(x):
        return np.concatenate([predict(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    if len(images) == 0:
        return {"objective": float("nan")}
    clean = score(images)
    out: Dict[str, float] = {}
    for j, (size, shift) in enumerate(levels):
        bad = score(corrupt(images, size, shift, seed + j))
        s = np.r_[clean, bad]
        y = np.r_[np.zeros(len(clean)), np.ones(len(bad))]
        out[f"auroc_level{j}"] = float(roc_auc_score(y, s)) if np.all(np.isfinite(s)) else float("nan")
    out["objective"] = float(np.mean([out[f"auroc_level{j}"] for j in range(len(levels))]))
    return out
