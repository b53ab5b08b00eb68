"""Our own normalizing flows (no FrEIA): affine coupling steps on [B,C,H,W] feature maps (`Flow2d`, FastFlow) and
on [N,D] feature vectors, optionally conditioned on a vector per sample (`VectorFlow`: DifferNet, CFlow-AD).

Each step maps x → y invertibly and reports log|det ∂y/∂x| per sample:
  1. affine coupling: x = (x₁, x₂); a subnet g(x₁) → (s, t); y₂ = x₂·exp(s̃) + t with the soft clamp
     s̃ = c·tanh(s / c), which bounds the scales so a few outlying features cannot blow up the training;
  2. a learned per-channel global affine (ActNorm-like) y = y·exp(γ) + β;
  3. a fixed random channel permutation (volume-preserving), so every channel is transformed in turn.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn


def soft_clamp(s: torch.Tensor, clamp: float) -> torch.Tensor:
    """c·tanh(s/c): bounds coupling log-scales to (−c, c) with slope 1 at 0."""
    return clamp * torch.tanh(s / clamp)


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
        s = soft_clamp(s, self.clamp)
        y = torch.cat([x1, x2 * torch.exp(s) + t], dim=1)
        y = y * torch.exp(self.log_scale) + self.shift
        log_det = s.flatten(1).sum(1) + self.log_scale.sum() * (x.shape[-2] * x.shape[-1])
        return y[:, self.perm], log_det

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = y[:, self.inv_perm]
        y = (y - self.shift) * torch.exp(-self.log_scale)
        y1, y2 = y[:, : self.c_cond], y[:, self.c_cond :]
        s, t = self.subnet(y1).chunk(2, dim=1)
        s = soft_clamp(s, self.clamp)
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


# --- flows on feature vectors ----------------------------------------------------------------------------------
def mlp_subnet(cin: int, cout: int, hidden: int, hidden_layers: int) -> nn.Sequential:
    """`hidden_layers` ReLU layers of width `hidden`, then a zero-initialised output (the step starts as the
    identity coupling)."""
    layers, width = [], cin
    for _ in range(max(1, int(hidden_layers))):
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, cout))
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


class VectorCouplingStep(nn.Module):
    """One invertible step on [N,D] vectors, optionally conditioned on c [N,P] (which is not transformed):

    1. coupling: x = (x₁, x₂); (s, t) = g([x₁, c]); x₂ ← x₂·exp(soft_clamp(s)) + t. With `both_halves` a second
       subnet then transforms x₁ from the new x₂ (DifferNet's GLOW-style block); otherwise only x₂ changes
       (CFlow-AD's FrEIA AllInOneBlock);
    2. a learned global affine per dimension, y·exp(γ) + β;
    3. a fixed mixing of the dimensions: a random permutation ("hard") or a random orthogonal matrix ("soft",
       AllInOneBlock's permute_soft). Both have |det| = 1, so they add nothing to the log-determinant.
    """

    PERMUTATIONS = ("hard", "soft")

    def __init__(self, dims: int, cond_dims: int = 0, hidden: int = 64, hidden_layers: int = 1, clamp: float = 2.0,
                 both_halves: bool = False, permutation: str = "hard", seed: int = 0) -> None:
        super().__init__()
        if dims < 2:
            raise ValueError("a coupling step needs at least 2 dimensions")
        if permutation not in self.PERMUTATIONS:
            raise ValueError(f"permutation={permutation!r}: use 'hard' or 'soft'")
        self.d1, self.d2 = dims - dims // 2, dims // 2
        self.clamp = float(clamp)
        self.cond_dims = int(cond_dims)
        self.subnet2 = mlp_subnet(self.d1 + self.cond_dims, 2 * self.d2, hidden, hidden_layers)  # x₂ from x₁
        self.subnet1 = mlp_subnet(self.d2 + self.cond_dims, 2 * self.d1, hidden, hidden_layers) if both_halves else None
        self.log_scale = nn.Parameter(torch.zeros(dims))
        self.shift = nn.Parameter(torch.zeros(dims))
        g = torch.Generator().manual_seed(int(seed))
        self.soft = permutation == "soft"
        if self.soft:
            q, r = torch.linalg.qr(torch.randn(dims, dims, generator=g, dtype=torch.float64))
            q = q * torch.sign(torch.diagonal(r))  # Haar-distributed orthogonal matrix
            self.register_buffer("mixing", q.float())
        else:
            perm = torch.randperm(dims, generator=g)
            self.register_buffer("perm", perm)
            self.register_buffer("inv_perm", torch.argsort(perm))

    def _coefficients(self, subnet: nn.Module, x: torch.Tensor, cond: Optional[torch.Tensor]):
        s, t = subnet(x if cond is None else torch.cat([x, cond], dim=1)).chunk(2, dim=1)
        return soft_clamp(s, self.clamp), t

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, : self.d1], x[:, self.d1 :]
        s, t = self._coefficients(self.subnet2, x1, cond)
        x2 = x2 * torch.exp(s) + t
        log_det = s.sum(1)
        if self.subnet1 is not None:
            s, t = self._coefficients(self.subnet1, x2, cond)
            x1 = x1 * torch.exp(s) + t
            log_det = log_det + s.sum(1)
        y = torch.cat([x1, x2], dim=1) * torch.exp(self.log_scale) + self.shift
        log_det = log_det + self.log_scale.sum()
        return (y @ self.mixing.T if self.soft else y[:, self.perm]), log_det

    def inverse(self, y: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = y @ self.mixing if self.soft else y[:, self.inv_perm]
        y = (y - self.shift) * torch.exp(-self.log_scale)
        x1, x2 = y[:, : self.d1], y[:, self.d1 :]
        if self.subnet1 is not None:
            s, t = self._coefficients(self.subnet1, x2, cond)
            x1 = (x1 - t) * torch.exp(-s)
        s, t = self._coefficients(self.subnet2, x1, cond)
        return torch.cat([x1, (x2 - t) * torch.exp(-s)], dim=1)


class VectorFlow(nn.Module):
    """`steps` `VectorCouplingStep`s on [N,D] vectors (optionally conditioned on [N,P]); z, log|det ∂z/∂x| [N]."""

    def __init__(self, dims: int, steps: int = 8, cond_dims: int = 0, hidden: int = 64, hidden_layers: int = 1,
                 clamp: float = 2.0, both_halves: bool = False, permutation: str = "hard", seed: int = 0) -> None:
        super().__init__()
        self.steps = nn.ModuleList(
            VectorCouplingStep(dims, cond_dims, hidden, hidden_layers, clamp, both_halves, permutation, seed * 1000 + i)
            for i in range(steps)
        )

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for step in self.steps:
            x, ld = step(x, cond)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        for step in reversed(self.steps):
            z = step.inverse(z, cond)
        return z
