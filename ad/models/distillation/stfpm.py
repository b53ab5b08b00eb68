"""STFPM — Student-Teacher Feature Pyramid Matching (Wang, Wu, Li, Wang, BMVC 2021, arXiv:2103.04257).

A frozen ImageNet-pretrained teacher and a *randomly initialised* student of the same architecture see the same
normal images; the student learns to reproduce the teacher's L2-normalised features at several pyramid levels.
On an anomaly the student, which never saw such patterns, disagrees with the teacher. Per level the
discrepancy is ½‖t̂ − ŝ‖² = 1 − cos(t, s); the anomaly map is the product (paper) of the per-level maps
upsampled to the input, and the image score is the map's maximum.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config
from ad.errors import ConfigError
from ad.models._maps import max_score, upsample_to
from ad.models.base import AnomalyModel, Budget, OptimizerSpec, Prediction


class STFPM(AnomalyModel):
    # Paper: 100 epochs, batch 32, SGD(lr 0.4, momentum 0.9, weight decay 1e-4), 256 px.
    default_max_epochs = 100
    default_batch_size = 32

    def __init__(
        self,
        backbone: "BackboneConfig | str | dict" = "tf_efficientnet_lite0",
        layers: Sequence[int] = (1, 2, 3),
        map_reduction: str = "product",
        lr: float = 0.4,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        if map_reduction not in ("product", "sum"):
            raise ConfigError(f"model.map_reduction={map_reduction!r} is not valid; use 'product' (paper) or 'sum'")
        cfg = as_backbone_config(backbone)
        self.backbone_name = cfg.name
        self.teacher = FeatureExtractor(cfg, layers, frozen=True)
        # Same architecture, random initialisation, trainable (the paper stresses the student is NOT pretrained).
        self.student = FeatureExtractor(dataclasses.replace(cfg, pretrained=False, weights=None), layers, frozen=False)
        self.map_reduction = map_reduction
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)

    def configure_optimizers(self, budget: Budget) -> OptimizerSpec:
        opt = torch.optim.SGD(
            self.student.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        return OptimizerSpec(optimizer=opt)

    def _features(self, images: torch.Tensor) -> tuple[List[torch.Tensor], List[torch.Tensor]]:
        return self.teacher(images), self.student(images)

    @staticmethod
    def _level_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """½‖t/‖t‖ − s/‖s‖‖² over channels → [B,h,w]."""
        return 0.5 * (F.normalize(t, dim=1) - F.normalize(s, dim=1)).pow(2).sum(dim=1)

    def _loss(self, images: torch.Tensor) -> torch.Tensor:
        teacher, student = self._features(images)
        # Paper eq. (2)-(3): per level the mean over positions, levels summed with equal weights, batch mean.
        return sum(self._level_distance(t, s).mean() for t, s in zip(teacher, student))

    def training_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"])

    @torch.no_grad()
    def validation_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"])

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        size = images.shape[-2:]
        teacher, student = self._features(images)
        maps = None
        for t, s in zip(teacher, student):
            level = upsample_to(self._level_distance(t, s), size)
            if maps is None:
                maps = level
            elif self.map_reduction == "product":
                maps = maps * level
            else:
                maps = maps + level
        assert maps is not None
        return Prediction(scores=max_score(maps), maps=maps)
