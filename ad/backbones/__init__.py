"""Frozen pretrained feature extractors (timm `features_only` CNNs and timm ViTs such as DINOv2), with offline
weight resolution."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import timm
import torch
from torch import nn

from ad.errors import ConfigError

from ad.backbones._fold import fold_batchnorms
from ad.backbones._specs import BackboneSpec, normalisation
from ad.backbones._vit import ViTFeatures, is_vit, vit_depth
from ad.backbones._weights import load_pretrained_weights, resolve_weights


@dataclass
class BackboneConfig:
    """Which backbone and where its weights come from (see `ad.backbones._weights` for the search order)."""

    name: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    weights: Optional[str] = None  # explicit weight file; overrides the search
    weights_dir: Optional[str] = None  # `paths.backbone_dir`: looked up as <dir>/<name>.{pth,pt,safetensors}
    fold_batchnorm: bool = True  # frozen backbones: fold BN into the convs (same outputs, ~1/3 faster on CPU)


def as_backbone_config(backbone: "BackboneConfig | str | dict") -> BackboneConfig:
    if isinstance(backbone, BackboneConfig):
        return backbone
    if isinstance(backbone, str):
        return BackboneConfig(name=backbone)
    return BackboneConfig(**{k: v for k, v in dict(backbone).items() if k != "_target_"})


class FeatureExtractor(nn.Module):
    """Multi-scale features from a timm backbone. Input: images in [0,1]; the backbone's own normalisation is
    applied here. `channels` and `reductions` come from timm's `feature_info`.

    CNNs: `layers` are timm `features_only` stage indices. Vision transformers (`is_vit`, e.g. the DINOv2
    options): `layers` are block indices, each returned as a `[B, C, h, w]` patch grid (stride = patch size,
    class/register tokens dropped; `tokens()` gives the full sequences), inputs must be multiples of the patch
    size, and `final_norm=True` applies the ViT's last LayerNorm to every returned block."""

    def __init__(self, backbone: "BackboneConfig | str | dict", layers: Sequence[int] = (2, 3), frozen: bool = True,
                 final_norm: bool = False):
        super().__init__()
        cfg = as_backbone_config(backbone)
        self.config = cfg
        self.layers = tuple(int(i) for i in layers)
        self.is_vit = is_vit(cfg.name)
        if self.is_vit:
            self.model = ViTFeatures(cfg.name, self.layers, final_norm=final_norm)
        elif final_norm:
            raise ConfigError(f"final_norm applies to ViT backbones only; backbone.name={cfg.name} is a CNN")
        else:
            try:
                self.model = timm.create_model(cfg.name, pretrained=False, features_only=True, out_indices=self.layers)
            except (RuntimeError, ValueError, IndexError, AssertionError) as exc:
                raise ConfigError(
                    f"backbone.name={cfg.name} with layers={list(self.layers)} is not a timm features_only model "
                    f"({str(exc).splitlines()[0][:100]}); pick a timm model name and valid layer indices"
                ) from None
            _drop_unused_blocks(self.model)
        #: where the weights came from ("random init" when backbone.pretrained=false)
        self.weights_source = load_pretrained_weights(self.model, cfg) if cfg.pretrained else "random init"
        self.channels: List[int] = list(self.model.feature_info.channels())
        self.reductions: List[int] = list(self.model.feature_info.reduction())
        mean, std = normalisation(cfg.name, self.model.pretrained_cfg)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.frozen = frozen
        #: conv→BN pairs folded (frozen backbones with backbone.fold_batchnorm); changes the state_dict keys
        self.folded_batchnorms = 0
        if frozen and cfg.fold_batchnorm:
            # a ViT has no BatchNorm (the pass finds nothing); its example must still tile into patches
            side = 70 if self.is_vit else 64
            example = self.normalize(torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0)))
            self.model, self.folded_batchnorms = fold_batchnorms(self.model, example)
        self.model.to(memory_format=torch.channels_last)
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

    def forward(self, images: torch.Tensor, channels_last: bool = False) -> List[torch.Tensor]:
        """Feature maps [B,C,h,w] of the requested layers. The backbone runs in channels_last (oneDNN's native
        layout: the depthwise convolutions ~1.8x faster on CPU); outputs come back in the default layout so
        callers may `.view` them, unless `channels_last=True` (saves a copy for callers that go to [B,h,w,C])."""
        x = self.normalize(images).contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            feats = self.model(x)
        if channels_last:
            return [f.contiguous(memory_format=torch.channels_last) for f in feats]
        return [f.contiguous() for f in feats]

    def tokens(self, images: torch.Tensor):
        """ViT backbones only: ([B, prefix + h·w, C] token sequences after each requested block, (h, w))."""
        if not self.is_vit:
            raise ConfigError(f"backbone {self.config.name} is a CNN; this model needs a ViT backbone "
                              "(e.g. backbone=vit_base_patch14_reg4_dinov2)")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.model.forward_tokens(self.normalize(images))


def _drop_unused_blocks(model: nn.Module) -> None:
    """timm's EfficientNet `features_only` runs every block even when the deepest requested feature comes
    earlier (ResNet's FeatureListNet already stops at the last requested layer). Dropping the trailing blocks
    changes no output and saves their compute (for lite0 at layers 2+3, about a third of the forward)."""
    stage_idx = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if stage_idx and isinstance(blocks, nn.Sequential) and getattr(model, "feature_hooks", None) is None:
        last = max(stage_idx)  # forward emits stage s after block s-1
        if last < len(blocks):
            model.blocks = blocks[:last]


def create_feature_extractor(backbone: "BackboneConfig | str | dict", layers: Sequence[int] = (2, 3), frozen: bool = True,
                             final_norm: bool = False) -> FeatureExtractor:
    return FeatureExtractor(backbone, layers, frozen, final_norm)


__all__ = ["BackboneConfig", "BackboneSpec", "resolve_weights", "FeatureExtractor", "ViTFeatures", "is_vit", "vit_depth",
           "as_backbone_config", "create_feature_extractor"]
