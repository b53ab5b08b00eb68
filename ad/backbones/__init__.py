"""Frozen pretrained feature extractors (timm `features_only`), with offline weight resolution."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import timm
import torch
from torch import nn

from ad.backbones._weights import load_pretrained_weights


@dataclass
class BackboneConfig:
    """Which backbone and where its weights come from (see `ad.backbones._weights` for the search order)."""

    name: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    weights: Optional[str] = None  # explicit weight file; overrides the search
    weights_dir: Optional[str] = None  # `paths.backbone_dir`: looked up as <dir>/<name>.{pth,safetensors}


def as_backbone_config(backbone: "BackboneConfig | str | dict") -> BackboneConfig:
    if isinstance(backbone, BackboneConfig):
        return backbone
    if isinstance(backbone, str):
        return BackboneConfig(name=backbone)
    return BackboneConfig(**{k: v for k, v in dict(backbone).items() if k != "_target_"})


class FeatureExtractor(nn.Module):
    """Multi-scale features from a timm backbone. Input: images in [0,1]; the backbone's own normalisation is
    applied here. `channels` and `reductions` come from timm's `feature_info`."""

    def __init__(self, backbone: "BackboneConfig | str | dict", layers: Sequence[int] = (2, 3), frozen: bool = True):
        super().__init__()
        cfg = as_backbone_config(backbone)
        self.config = cfg
        self.layers = tuple(int(i) for i in layers)
        self.model = timm.create_model(cfg.name, pretrained=False, features_only=True, out_indices=self.layers)
        if cfg.pretrained:
            load_pretrained_weights(self.model, cfg)
        self.channels: List[int] = list(self.model.feature_info.channels())
        self.reductions: List[int] = list(self.model.feature_info.reduction())
        data_cfg = self.model.pretrained_cfg or {}
        mean = data_cfg.get("mean", (0.485, 0.456, 0.406))
        std = data_cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.frozen = frozen
        if frozen:
            self.model.eval()
            for p in self.model.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.eval()  # BN statistics of a frozen backbone never move
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        x = self.normalize(images)
        if self.frozen:
            with torch.no_grad():
                return self.model(x)
        return self.model(x)


def create_feature_extractor(backbone: "BackboneConfig | str | dict", layers: Sequence[int] = (2, 3), frozen: bool = True) -> FeatureExtractor:
    return FeatureExtractor(backbone, layers, frozen)


__all__ = ["BackboneConfig", "FeatureExtractor", "as_backbone_config", "create_feature_extractor"]
