"""Optimisers and LR schedules that models build in `configure_optimizers` (the trainer stays generic)."""
from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

import torch


class StableAdamW(torch.optim.Optimizer):
    """AdamW with StableAdamW's update clipping (Wortsman et al. 2023, as in Dinomaly's reference code) and an
    optional gradient-norm clip applied inside `step`.

    Per parameter, after the decoupled weight decay p ← p·(1 − lr·wd):
        m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  (AMSGrad: v̂ ← max(v̂, v))
        d = √v̂ / √(1−β₂ᵗ) + ε,   s = max(1, RMS(g / d) / clip_threshold)
        p ← p − lr / (1−β₁ᵗ) / s · m / d
    `max_grad_norm`: the gradients of all parameters together are first rescaled to at most this L2 norm
    (`torch.nn.utils.clip_grad_norm_`), so a model keeps its paper's clipping without trainer settings.
    Under AMP the trainer's GradScaler unscales the gradients before calling `step`, so the clip sees true
    gradients.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, clip_threshold: float = 1.0,
                 max_grad_norm: Optional[float] = None) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid StableAdamW settings lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        clip_threshold=clip_threshold)
        super().__init__(params, defaults)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.max_grad_norm:
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                p.mul_(1.0 - group["lr"] * group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                second = exp_avg_sq
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    second = state["max_exp_avg_sq"]
                denom = (second.sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
                # update clipping on the RMS of g/denom; kept as a tensor (no host sync per parameter)
                rms = (grad / denom).pow(2).mean().sqrt()
                scale = torch.clamp(rms / group["clip_threshold"], min=1.0)
                p.sub_(exp_avg / denom * (group["lr"] / (1 - beta1 ** t) / scale))
        return loss


def warm_cosine_lr(step: int, base: float, final: float, total: int, warmup: int, start: float = 0.0) -> float:
    """LR of optimisation step `step` (0-based) under Dinomaly's `WarmCosineScheduler`: `warmup` steps linear
    from `start` to `base` (both ends included, like np.linspace), then a half cosine from `base` towards
    `final` over the remaining steps, `final` from `total` on."""
    warmup = max(0, min(int(warmup), int(total)))
    if step >= total:
        return float(final)
    if step < warmup:  # np.linspace(start, base, warmup)[step]; a single warm-up step is `start`
        return float(start + (base - start) * step / (warmup - 1)) if warmup > 1 else float(start)
    n = total - warmup
    i = step - warmup
    return float(final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n)))


def warm_cosine_scheduler(optimizer: torch.optim.Optimizer, base: float, final: float, total: int, warmup: int,
                          start: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step `LambdaLR` following `warm_cosine_lr` (the optimiser's lr must be `base`); its state is the
    step count, so it checkpoints and resumes with the trainer."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warm_cosine_lr(s, base, final, total, warmup, start) / base)


__all__ = ["StableAdamW", "warm_cosine_lr", "warm_cosine_scheduler"]
