"""FastFlow: unsupervised anomaly detection and localization via 2D normalizing flows (Yu et al., 2021,
arXiv:2111.07677).

Frozen pretrained backbone features are, per scale, layer-normalised and mapped by a fully convolutional 2-D
normalizing flow to a standard normal. Training maximises the likelihood of normal features:
loss = Σ_scales mean_batch(½‖z‖² − log|det J|). At test time the per-position likelihood is
p = exp(−½·mean_c z²); each scale's map −p is upsampled to the input and the maps are averaged, so an
unlikely (anomalous) position is close to 0 and a normal one close to −1. Image score = max of the map.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config
from ad.models.flows._flows import Flow2d
from ad.models._maps import max_score, upsample_to
from ad.models.base import AnomalyModel, Budget, OptimizerSpec, Prediction


class FastFlow(AnomalyModel):
    # Paper: 500 epochs, batch 32, Adam(lr 1e-3, weight decay 1e-5); ResNet-18 setting: 8 flow steps,
    # hidden ratio 1.0, alternating 3×3/1×1 subnets, clamp 2.
    default_max_epochs = 500
    default_batch_size = 32

    def __init__(
        self,
        backbone: "BackboneConfig | str | dict" = "tf_efficientnet_lite0",
        layers: Sequence[int] = (1, 2, 3),
        flow_steps: int = 8,
        hidden_ratio: float = 1.0,
        clamp: float = 2.0,
        conv3x3_only: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
    ) -> None:
        super().__init__()
        cfg = as_backbone_config(backbone)
        self.backbone_name = cfg.name
        self.encoder = FeatureExtractor(cfg, layers, frozen=True)
        self.flows = nn.ModuleList(
            Flow2d(c, flow_steps, hidden_ratio, clamp, conv3x3_only, seed=i) for i, c in enumerate(self.encoder.channels)
        )
        self.lr, self.weight_decay = float(lr), float(weight_decay)

    def configure_optimizers(self, budget: Budget) -> OptimizerSpec:
        opt = torch.optim.Adam(self.flows.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return OptimizerSpec(optimizer=opt)

    def _latents(self, images: torch.Tensor) -> List[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for feat, flow in zip(self.encoder(images), self.flows):
            # LayerNorm over (C,H,W) as the paper does for CNN features, without a learnable affine: an affine
            # outside the flow's Jacobian could lower the NLL just by shrinking all features towards zero.
            feat = F.layer_norm(feat, [int(s) for s in feat.shape[1:]])  # ints: traced sizes can't be an ONNX shape
            out.append(flow(feat))
        return out

    def _loss(self, images: torch.Tensor) -> torch.Tensor:
        return sum((0.5 * z.pow(2).flatten(1).sum(1) - log_det).mean() for z, log_det in self._latents(images))

    def training_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"])

    @torch.no_grad()
    def validation_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"])

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        size = images.shape[-2:]
        latents = self._latents(images)
        maps = sum(upsample_to(-torch.exp(-0.5 * z.pow(2).mean(dim=1)), size) for z, _ in latents) / len(latents)
        return Prediction(scores=max_score(maps), maps=maps)
