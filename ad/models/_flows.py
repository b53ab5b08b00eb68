"""Our own 2-D normalizing flow (no FrEIA): a stack of affine coupling steps acting on [B,C,H,W] feature maps.

Each step maps x → y invertibly and reports log|det ∂y/∂x| per sample:
  1. affine coupling: x = (x₁, x₂); a subnet g(x₁) → (s, t); y₂ = x₂·exp(s̃) + t with the soft clamp
     s̃ = c·tanh(s / c), which bounds the scales so a few outlying features cannot blow up the training;
  2. a learned per-channel global affine (ActNorm-like) y = y·exp(γ) + β;
  3. a fixed random channel permutation (volume-preserving), so every channel is transformed in turn.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


def coupling_subnet(cin: int, cout: int, hidden: int, kernel: int) -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(cin, hidden, kernel, padding=kernel // 2),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, cout, kernel, padding=kernel // 2),
    )
    # Zero-initialised output: every step starts as the identity, the flow's usual stable initialisation.
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class AffineCouplingStep(nn.Module):
    def __init__(self, channels: int, hidden: int, kernel: int, clamp: float, seed: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError("a coupling step needs at least 2 channels")
        self.c_cond = channels - channels // 2
        self.c_trans = channels // 2
        self.clamp = float(clamp)
        self.subnet = coupling_subnet(self.c_cond, 2 * self.c_trans, hidden, kernel)
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))
        # A buffer (not regenerated) so a saved flow reloads with the very same permutation.
        perm = torch.randperm(channels, generator=torch.Generator().manual_seed(int(seed)))
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, : self.c_cond], x[:, self.c_cond :]
        s, t = self.subnet(x1).chunk(2, dim=1)
        s = self.clamp * torch.tanh(s / self.clamp)
        y = torch.cat([x1, x2 * torch.exp(s) + t], dim=1)
        y = y * torch.exp(self.log_scale) + self.shift
        log_det = s.flatten(1).sum(1) + self.log_scale.sum() * (x.shape[-2] * x.shape[-1])
        return y[:, self.perm], log_det

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = y[:, self.inv_perm]
        y = (y - self.shift) * torch.exp(-self.log_scale)
        y1, y2 = y[:, : self.c_cond], y[:, self.c_cond :]
        s, t = self.subnet(y1).chunk(2, dim=1)
        s = self.clamp * torch.tanh(s / self.clamp)
        return torch.cat([y1, (y2 - t) * torch.exp(-s)], dim=1)


class Flow2d(nn.Module):
    """`steps` coupling steps; subnet kernels alternate 3×3 and 1×1 (FastFlow) unless `conv3x3_only`."""

    def __init__(self, channels: int, steps: int = 8, hidden_ratio: float = 1.0, clamp: float = 2.0,
                 conv3x3_only: bool = False, seed: int = 0) -> None:
        super().__init__()
        hidden = max(1, int(round(channels * hidden_ratio)))
        self.steps = nn.ModuleList(
            AffineCouplingStep(channels, hidden, 3 if (i % 2 == 0 or conv3x3_only) else 1, clamp, seed * 1000 + i)
            for i in range(steps)
        )

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for step in self.steps:
            x, ld = step(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for step in reversed(self.steps):
            z = step.inverse(z)
        return z
