"""Offline weight resolution (to be completed: explicit file, backbones/ dir, pip weight packages)."""
from __future__ import annotations

from torch import nn

from ad.errors import WeightsError


def load_pretrained_weights(model: nn.Module, cfg) -> None:
    raise WeightsError(
        f"no pretrained weights found for backbone '{cfg.name}'; place them at "
        f"{cfg.weights_dir or 'backbones'}/{cfg.name}.pth or set backbone.pretrained=false"
    )
