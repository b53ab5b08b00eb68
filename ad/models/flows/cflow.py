"""CFlow-AD: "Real-Time Unsupervised Anomaly Detection with Localization via Conditional Normalizing Flows"
(Gudovskiy et al., WACV 2022).

Per feature level of a frozen pretrained encoder, a conditional normalizing flow models the distribution of the
pixel feature vectors ("fibers") given where they are: each fiber e ∈ R^C is conditioned on a 2-D sinusoidal
positional encoding c ∈ R^P of its (row, column) on that level's grid. Training draws random subsets of the
batch's fibers (fiber batches of N, shuffled across images and positions) and minimises
−log σ(log p(e|c)/C), with log p(e|c) = C·log(1/√(2π)) − ½‖z‖² + log|det J| (the reference code's loss).
Test time, per level, log p/C of every fiber is turned into a probability exp(log p/C − m_l), upsampled to the
input and summed over levels; the anomaly map is L − that sum (the paper: max of the sum − the sum), the image
score its maximum.

Deviations from the paper, and why:
- Backbone: our backbone group (default EfficientNet-Lite0, offline) instead of WideResNet-50; layers 2, 3, 4
  (strides 8, 16, 32) as the paper's three pooling layers.
- m_l: the paper subtracts each level's maximum log-likelihood over the *test set* (transductive); we subtract
  the maximum over the held-out validation normals, fitted in `on_fit_end` and kept in a buffer, so one image
  is scored the same whatever else is in the test set.
- Fiber batches: the reference makes one decoder update per fiber batch of N = 256, E/N updates per image
  batch of E fibers. Our trainer makes one optimisation step per image batch, so each step draws one fiber
  batch of `fiber_batch_size` per level (all levels updated together; their parameters are disjoint, so this
  equals the reference's separate updates). An epoch therefore makes far fewer flow updates than the paper's
  (1 instead of E/N per image batch): raise `fiber_batch_size` or the step budget for long runs.
- Coupling blocks: our `VectorFlow` (FrEIA AllInOneBlock-like: one half transformed from the other half and
  the condition by a 1-hidden-layer MLP of width 2·input, soft-clamped log-scales α = 1.9, a learned global
  affine, a fixed random orthogonal mixing); zero-initialised subnet outputs instead of the ×0.1 scaling.
- LR: the reference warms up over 2 of 25 meta-epochs from lr/10, then cosine-anneals per meta-epoch to
  lr·1e-3; we lay the same shape out per step over the trainer's budget.
Schedule (paper/reference): 25 meta-epochs × 8 sub-epochs = 200 epochs, batch 32, Adam lr 2e-4, N = 256,
8 coupling blocks, P = 128.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config
from ad.errors import ConfigError
from ad.models.flows._flows import VectorFlow
from ad.models._maps import max_score, upsample_to
from ad.models.base import AnomalyModel, Budget, OptimizerSpec, Prediction

log = logging.getLogger(__name__)

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def positional_encoding_2d(dims: int, height: int, width: int) -> torch.Tensor:
    """[dims, H, W] sinusoidal encoding of each position: the first half of the channels encodes the column,
    the second half the row, as interleaved (sin, cos) pairs at geometrically spaced frequencies
    10000^(−2k/(dims/2)) (the Transformer's encoding per axis)."""
    if dims <= 0 or dims % 4:
        raise ConfigError(f"model.condition_dims={dims} must be a positive multiple of 4 (sin/cos per axis)")
    half = dims // 2
    freq = torch.exp(torch.arange(0.0, half, 2) * (-math.log(1e4) / half))  # [half/2]
    col = torch.arange(float(width)).unsqueeze(1) * freq  # [W, half/2]
    row = torch.arange(float(height)).unsqueeze(1) * freq  # [H, half/2]
    pe = torch.zeros(dims, height, width)
    pe[0:half:2] = torch.sin(col).T.unsqueeze(1).expand(-1, height, -1)
    pe[1:half:2] = torch.cos(col).T.unsqueeze(1).expand(-1, height, -1)
    pe[half::2] = torch.sin(row).T.unsqueeze(2).expand(-1, -1, width)
    pe[half + 1 :: 2] = torch.cos(row).T.unsqueeze(2).expand(-1, -1, width)
    return pe


def warmup_cosine(step: int, total: int, warmup_fraction: float, start_ratio: float, min_ratio: float) -> float:
    """LR multiplier: linear warm-up from `start_ratio` to the cosine curve's value at the end of the warm-up,
    then cosine annealing from 1 towards `min_ratio` at `total` steps (the reference's shape, per step)."""
    total = max(1, int(total))

    def cosine(p: float) -> float:
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))

    warm = int(round(warmup_fraction * total))
    if step < warm:
        return start_ratio + (cosine(warm / total) - start_ratio) * step / warm
    return cosine(step / total)


class CFlow(AnomalyModel):
    default_max_epochs = 200  # 25 meta-epochs × 8 sub-epochs
    default_batch_size = 32

    def __init__(
        self,
        backbone: "BackboneConfig | str | dict" = "tf_efficientnet_lite0",
        layers: Sequence[int] = (2, 3, 4),
        condition_dims: int = 128,
        coupling_blocks: int = 8,
        clamp: float = 1.9,
        hidden_ratio: float = 2.0,
        fiber_batch_size: Optional[int] = 256,
        lr: float = 2e-4,
        warmup_fraction: float = 2 / 25,
        warmup_start_ratio: float = 0.1,
        lr_min_ratio: float = 1e-3,
    ) -> None:
        super().__init__()
        if fiber_batch_size is not None and int(fiber_batch_size) < 1:
            raise ConfigError(f"model.fiber_batch_size={fiber_batch_size} must be >= 1 (or null: every fiber)")
        positional_encoding_2d(int(condition_dims), 1, 1)  # validates condition_dims before building anything
        cfg = as_backbone_config(backbone)
        self.backbone_name = cfg.name
        self.encoder = FeatureExtractor(cfg, layers, frozen=True)
        self.condition_dims = int(condition_dims)
        self.flows = nn.ModuleList(
            VectorFlow(c, int(coupling_blocks), cond_dims=self.condition_dims,
                       hidden=max(1, int(round(hidden_ratio * (c - c // 2 + self.condition_dims)))),
                       hidden_layers=1, clamp=clamp, permutation="soft", seed=i)
            for i, c in enumerate(self.encoder.channels)
        )
        self.fiber_batch_size = None if fiber_batch_size is None else int(fiber_batch_size)
        self.lr = float(lr)
        self.warmup_fraction, self.warmup_start_ratio, self.lr_min_ratio = float(warmup_fraction), float(warmup_start_ratio), float(lr_min_ratio)
        # per-level maximum log-likelihood per dimension of the validation normals (0 until fitted)
        self.register_buffer("level_max", torch.zeros(len(self.flows)))

    def configure_optimizers(self, budget: Budget) -> OptimizerSpec:
        opt = torch.optim.Adam(self.flows.parameters(), lr=self.lr)
        total = budget.total_steps or 1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(
            step, total, self.warmup_fraction, self.warmup_start_ratio, self.lr_min_ratio))
        return OptimizerSpec(optimizer=opt, scheduler=sched, scheduler_interval="step")

    # --- likelihoods ------------------------------------------------------------------------------------------
    def _fibers(self, feat: torch.Tensor):
        """[B,C,h,w] -> fibers [B·h·w, C] and their positional conditions [B·h·w, P] (image-major)."""
        b, c, h, w = feat.shape
        pe = positional_encoding_2d(self.condition_dims, h, w).to(feat.device, feat.dtype)
        cond = pe.reshape(self.condition_dims, h * w).T.repeat(b, 1)
        return feat.permute(0, 2, 3, 1).reshape(b * h * w, c), cond

    @staticmethod
    def _log_prob(flow: VectorFlow, fibers: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """log p(e|c) / C per fiber (log-likelihood per dimension)."""
        z, log_det = flow(fibers, cond)
        c = fibers.shape[1]
        return (-c * LOG_SQRT_2PI - 0.5 * z.pow(2).sum(1) + log_det) / c

    def _loss(self, images: torch.Tensor, sample: bool) -> torch.Tensor:
        loss = images.new_zeros(())
        for feat, flow in zip(self.encoder(images), self.flows):
            fibers, cond = self._fibers(feat)
            if sample and self.fiber_batch_size is not None and self.fiber_batch_size < len(fibers):
                # a random fiber batch across images and positions (the paper's shuffled fiber batches)
                idx = torch.randperm(len(fibers), device=fibers.device)[: self.fiber_batch_size]
                fibers, cond = fibers[idx], cond[idx]
            loss = loss + (-F.logsigmoid(self._log_prob(flow, fibers, cond))).mean()
        return loss

    def training_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"], sample=True)

    @torch.no_grad()
    def validation_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"], sample=False)

    @torch.no_grad()
    def level_log_probs(self, images: torch.Tensor) -> List[torch.Tensor]:
        """Per level, log p/C of every position: [B, h_l, w_l]."""
        out = []
        for feat, flow in zip(self.encoder(images), self.flows):
            fibers, cond = self._fibers(feat)
            out.append(self._log_prob(flow, fibers, cond).view(feat.shape[0], *feat.shape[-2:]))
        return out

    # --- fitting and inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def on_fit_end(self, val_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        best = None
        for batch in val_loader or []:
            images = batch["image"].to(self.level_max.device)
            m = torch.stack([lp.amax() for lp in self.level_log_probs(images)])
            best = m if best is None else torch.maximum(best, m)
        if best is None:
            log.warning("CFlow: no validation normals; per-level likelihoods are not normalised (level_max = 0)")
            best = torch.zeros_like(self.level_max)
        self.level_max.copy_(best)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        size = images.shape[-2:]
        probs = [torch.exp(lp - m) for lp, m in zip(self.level_log_probs(images), self.level_max)]
        maps = sum(upsample_to(1.0 - p, size) for p in probs)
        return Prediction(scores=max_score(maps), maps=maps)
