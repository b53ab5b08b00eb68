"""Patch-descriptor networks of Uninformed Students (Bergmann, Fauser, Sattlegger, Steger, CVPR 2020) and the
offline distillation of their teacher from a pretrained backbone.

- `PatchNet(patch_size, width, out_dim)`: a small CNN mapping a p×p patch (p = 17, 33 or 65) to one
  `out_dim`-d descriptor; applied to a whole (padded) image it yields a grid of descriptors, one per patch,
  at stride 2 / 4 / 8. Layer plans follow the paper's patch networks (5×5 / 4×4 convs, 2×2 max pools, leaky
  ReLU slope 5e-3, a final 1×1 conv to the descriptor), narrower and with an early pool for p = 17 so the
  grid has a stride (the paper evaluates every pixel with Bailer et al.'s fast dense extraction, too slow here).
- `distill_teacher`: the paper trains each teacher on ImageNet patches to regress the 512-d pooled ResNet-18
  descriptor of the patch through a linear decoder (knowledge distillation), plus a compactness loss (small
  correlation between descriptor dimensions) and a triplet metric-learning loss. Offline we regress the
  pretrained backbone's (EfficientNet-Lite0's) globally pooled deepest features of the patch, on patches of the
  training images (+ a share of procedural textures standing in for generic images), with the KD and
  compactness losses; the triplet loss is left out (it needs augmented patch pairs and mostly sharpens
  descriptor matching, which anomaly scoring does not use).
"""
from __future__ import annotations

import logging
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ad.errors import ConfigError
from ad.models._maps import resize_input

log = logging.getLogger(__name__)

#: layer plans per patch size: ("c", kernel, width multiplier) or ("p",) for a 2×2 max pool;
#: each plan turns a p×p input into a 1×1 output.
PLANS = {
    17: [("c", 4, 1), ("p",), ("c", 3, 1), ("c", 5, 2)],
    33: [("c", 5, 1), ("p",), ("c", 5, 1), ("p",), ("c", 5, 2)],
    65: [("c", 5, 1), ("p",), ("c", 5, 1), ("p",), ("c", 5, 1), ("p",), ("c", 4, 2)],
}
LEAK = 5e-3


class PatchNet(nn.Module):
    def __init__(self, patch_size: int, width: int = 128, out_dim: int = 128) -> None:
        super().__init__()
        if patch_size not in PLANS:
            raise ConfigError(f"model.patch_sizes: {patch_size} is not one of {sorted(PLANS)} (the paper's patch networks)")
        self.patch_size = int(patch_size)
        layers: List[nn.Module] = []
        cin, self.stride = 3, 1
        for spec in PLANS[patch_size]:
            if spec[0] == "p":
                layers.append(nn.MaxPool2d(2, 2))
                self.stride *= 2
            else:
                layers += [nn.Conv2d(cin, width * spec[2], spec[1]), nn.LeakyReLU(LEAK)]
                cin = width * spec[2]
        layers.append(nn.Conv2d(cin, out_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A p×p patch batch [B,3,p,p] → [B,d,1,1]; an image → the descriptor grid."""
        return self.net(x)

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        """Descriptors of the patches centred on a stride-`self.stride` grid of the image: [B,d,~H/s,~W/s].
        The image is padded by p//2 (reflection) so border pixels are patch centres too."""
        pad = self.patch_size // 2
        mode = "reflect" if pad < min(images.shape[-2:]) else "replicate"
        return self.net(F.pad(images, (pad, pad, pad, pad), mode=mode))


class ImageBank:
    """A uniform random subset (reservoir sample) of at most `limit` training images, kept as uint8 at the
    model's working size, for drawing distillation patches; uniform over a unified multi-category loader too.
    `add_textures(n)` adds procedural textures (a stand-in for the paper's generic ImageNet patches)."""

    def __init__(self, limit: int, rng: np.random.Generator) -> None:
        self.limit, self.rng, self.items, self.seen = int(limit), rng, [], 0
        self.textures: List[torch.Tensor] = []
        self._padded: dict = {}

    @staticmethod
    def _to_uint8(img: torch.Tensor) -> torch.Tensor:
        return (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu()

    def add(self, images: torch.Tensor) -> None:
        self._padded.clear()
        for img in self._to_uint8(images):
            self.seen += 1
            if len(self.items) < self.limit:
                self.items.append(img)
            else:
                j = int(self.rng.integers(self.seen))
                if j < self.limit:
                    self.items[j] = img

    def add_textures(self, n: int, size: Sequence[int]) -> None:
        from ad.models._anomaly_synthesis import procedural_texture

        self._padded.clear()
        self.textures += [self._to_uint8(procedural_texture(tuple(size), self.rng)) for _ in range(n)]

    def _pool(self, source: List[torch.Tensor], size: int) -> torch.Tensor:
        """The images of `source` stacked and reflect-padded by size//2 once per patch size."""
        key = (id(source), size)
        if key not in self._padded:
            x = torch.stack(source).float() / 255.0
            pad = size // 2
            mode = "reflect" if pad < min(x.shape[-2:]) else "replicate"
            self._padded[key] = F.pad(x, (pad, pad, pad, pad), mode=mode)
        return self._padded[key]

    def patches(self, n: int, size: int, texture_fraction: float = 0.0) -> torch.Tensor:
        """n random size×size crops (random horizontal flips) of the padded images, a `texture_fraction` share
        from the textures."""
        out = []
        for _ in range(n):
            use_tex = bool(self.textures) and (not self.items or self.rng.random() < texture_fraction)
            pool = self._pool(self.textures if use_tex else self.items, size)
            i = int(self.rng.integers(pool.shape[0]))
            top = int(self.rng.integers(pool.shape[2] - size + 1))
            left = int(self.rng.integers(pool.shape[3] - size + 1))
            patch = pool[i, :, top:top + size, left:left + size]
            out.append(patch.flip(-1) if self.rng.random() < 0.5 else patch)
        return torch.stack(out)


def backbone_descriptors(extractor: nn.Module, patches: torch.Tensor, input_size: int) -> torch.Tensor:
    """The pretrained descriptor of each patch: resized to `input_size`, deepest requested features globally
    average-pooled (the paper's pooled ResNet-18 output) → [B, D]."""
    x = resize_input(patches, input_size)
    return torch.cat([f.mean(dim=(2, 3)) for f in extractor(x)], dim=1)


def compactness_loss(desc: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal entry of the batch correlation matrix of descriptors [B, d] (the paper sums
    the correlations; squaring keeps the loss bounded below, so it cannot be lowered by anti-correlation)."""
    z = (desc - desc.mean(0)) / (desc.std(0) + 1e-6)
    corr = z.T @ z / max(1, desc.shape[0] - 1)
    off = corr - torch.diag(torch.diagonal(corr))
    d = corr.shape[0]
    return off.pow(2).sum() / max(1, d * (d - 1))


def distill_teacher(
    teacher: PatchNet, extractor: nn.Module, bank: ImageBank, steps: int, batch_size: int = 64, lr: float = 2e-4,
    weight_decay: float = 1e-5, compactness: float = 1.0, texture_fraction: float = 0.25, input_size: Optional[int] = None,
    stats_batches: int = 4, log_every: int = 100,
) -> List[float]:
    """Train `teacher` in place to regress standardised backbone descriptors of p×p patches through a linear
    decoder (discarded afterwards, as in the paper). Returns the loss per step."""
    p = teacher.patch_size
    size = input_size or max(32, 32 * round(p / 32))
    device = next(teacher.parameters()).device
    with torch.no_grad():  # standardise the regression targets (channels of very different scales)
        t = torch.cat([backbone_descriptors(extractor, bank.patches(batch_size, p, texture_fraction).to(device), size)
                       for _ in range(stats_batches)])
        mean, std = t.mean(0), t.std(0) + 1e-6
    out_dim = teacher.net[-1].out_channels
    decoder = nn.Linear(out_dim, t.shape[1]).to(device)
    opt = torch.optim.Adam(list(teacher.parameters()) + list(decoder.parameters()), lr=lr, weight_decay=weight_decay)
    losses = []
    teacher.train()
    for _ in range(int(steps)):
        x = bank.patches(batch_size, p, texture_fraction).to(device)
        with torch.no_grad():
            target = (backbone_descriptors(extractor, x, size) - mean) / std
        desc = teacher(x).flatten(1)
        loss = F.mse_loss(decoder(desc), target)
        if compactness:
            loss = loss + compactness * compactness_loss(desc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and len(losses) % log_every == 0:
            log.info("teacher p=%d step %d/%d: loss %.4f", p, len(losses), steps, np.mean(losses[-log_every:]))
    teacher.eval()
    return losses


def ensemble_error_variance(students: torch.Tensor, teacher: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per position: regression error e = ‖mean_m s_m − t‖² and predictive variance v = mean_m ‖s_m‖² − ‖mean_m s_m‖²
    (the sum over dimensions of the ensemble's per-dimension variance). students [M,B,d,h,w], teacher [B,d,h,w]
    → e, v [B,h,w]."""
    mu = students.mean(0)
    e = (mu - teacher).pow(2).sum(1)
    v = (students.pow(2).sum(2).mean(0) - mu.pow(2).sum(1)).clamp_min(0)
    return e, v


def iterate_images(loader: Optional[Iterable], device: torch.device) -> Iterable[torch.Tensor]:
    for batch in loader or ():
        yield batch["image"].to(device)
