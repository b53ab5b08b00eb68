"""Vision-transformer backbones (timm `VisionTransformer`, e.g. DINOv2 with or without registers) as feature
extractors: the chosen blocks come back as `[B, C, h, w]` patch grids, class and register tokens dropped.

Positional embeddings are resampled the way Meta's DINOv2 code does it (bicubic, `scale_factor` with the
0.1 offset, no antialiasing; the native 37×37 grid is used as is), not with timm's antialiased resize: the
DINOv2 features — and Dinomaly / AnomalyDINO, which run Meta's code — are defined with that interpolation.

Meta's original checkpoints (`dinov2_vits14_reg4_pretrain.pth`, ...) use other key names and fold the class
position into `pos_embed`; `meta_dinov2_to_timm` converts them to timm's layout on load.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ad.errors import ConfigError

_META_SIZES = {"small": "s", "base": "b", "large": "l", "giant": "g"}
_DINOV2 = re.compile(r"^vit_(small|base|large|giant)_patch14_(reg4_)?dinov2$")


def is_vit(name: str) -> bool:
    """Whether timm builds `name` as a `VisionTransformer` (module timm.models.vision_transformer)."""
    import timm

    try:
        return timm.models.model_entrypoint(name).__module__ == "timm.models.vision_transformer"
    except (RuntimeError, KeyError):
        return False


def vit_depth(name: str) -> int:
    """Number of blocks of timm ViT `name` (built on the meta device: no memory, no init)."""
    import timm

    with torch.device("meta"):
        return len(timm.create_model(name, pretrained=False).blocks)


def meta_dinov2_file(name: str) -> Optional[str]:
    """Meta's release file name for a timm DINOv2 name (`vit_small_patch14_reg4_dinov2` ->
    `dinov2_vits14_reg4_pretrain.pth`), or None for other models."""
    m = _DINOV2.match(name)
    if not m:
        return None
    return f"dinov2_vit{_META_SIZES[m.group(1)]}14{'_reg4' if m.group(2) else ''}_pretrain.pth"


def meta_dinov2_url(name: str) -> Optional[str]:
    file = meta_dinov2_file(name)
    if file is None:
        return None
    folder = "_".join(file.split("_")[:2])  # dinov2_vitb14
    return f"https://dl.fbaipublicfiles.com/dinov2/{folder}/{file}"


def is_meta_dinov2_state(state: Mapping[str, torch.Tensor]) -> bool:
    # Meta's checkpoints carry the masked-image-modelling token (timm drops it) and name registers differently
    return "mask_token" in state or "register_tokens" in state


def meta_dinov2_to_timm(state: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Meta DINOv2 key layout -> timm's. With registers, timm's model adds positions to patches only
    (`no_embed_class`): the class token's position is folded into `cls_token` and dropped from `pos_embed`.
    The giant model's SwiGLU `mlp.w12`/`mlp.w3` become `mlp.fc1`/`mlp.fc2`."""
    state = OrderedDict(state)
    state.pop("mask_token", None)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    if "register_tokens" in state:
        out["cls_token"] = state.pop("cls_token") + state["pos_embed"][:, :1]
        out["reg_token"] = state.pop("register_tokens")
        out["pos_embed"] = state.pop("pos_embed")[:, 1:]
    for k, v in state.items():
        out[re.sub(r"^(blocks\.\d+\.mlp)\.w12\.", r"\1.fc1.", re.sub(r"^(blocks\.\d+\.mlp)\.w3\.", r"\1.fc2.", k))] = v
    return out


class _FeatureInfo:
    """The part of timm's `feature_info` the models use."""

    def __init__(self, channels: Sequence[int], reductions: Sequence[int]) -> None:
        self._channels, self._reductions = list(channels), list(reductions)

    def channels(self) -> List[int]:
        return list(self._channels)

    def reduction(self) -> List[int]:
        return list(self._reductions)


class ViTFeatures(nn.Module):
    """Blocks `layers` (0-based block indices; negative counts from the end) of timm ViT `name`.

    Parameters keep timm's names (`cls_token`, `reg_token`, `pos_embed`, `patch_embed.*`, `blocks.<i>.*`,
    `norm.*`) so timm checkpoints load by name; blocks after the deepest requested one are dropped.
    `final_norm`: pass every returned block through the final LayerNorm (DINOv2's
    `get_intermediate_layers(norm=True)`, what AnomalyDINO uses); Dinomaly uses the raw block outputs.
    """

    def __init__(self, name: str, layers: Sequence[int], final_norm: bool = False) -> None:
        super().__init__()
        import timm

        vit = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
        depth = len(vit.blocks)
        bad = [i for i in layers if not -depth <= int(i) < depth]
        if bad or not layers:
            raise ConfigError(f"model.layers={list(layers)}: backbone {name} has blocks 0..{depth - 1} "
                              f"(negative indices count from the end); pick block indices in that range")
        self.layers = [int(i) % depth for i in layers]
        self.depth = depth
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.no_embed_class = bool(vit.no_embed_class)
        self.final_norm = bool(final_norm)
        self.patch_embed = vit.patch_embed
        self.cls_token, self.reg_token, self.pos_embed = vit.cls_token, vit.reg_token, vit.pos_embed
        self.norm_pre = vit.norm_pre
        self.blocks = vit.blocks[: max(self.layers) + 1]
        self.norm = vit.norm
        self.embed_dim = int(vit.embed_dim)
        self.num_heads = int(vit.blocks[0].attn.num_heads)
        self.pretrained_cfg = dict(vit.pretrained_cfg)
        self.feature_info = _FeatureInfo([self.embed_dim] * len(self.layers), [self.patch_size] * len(self.layers))

    def check_size(self, h: int, w: int) -> None:
        p = self.patch_size
        if h % p or w % p:
            def near(n: int) -> str:
                lo = max(p, n // p * p)
                return f"{lo} or {lo + p}" if lo != n else str(n)

            raise ConfigError(
                f"the ViT backbone needs image sides that are multiples of its patch size {p}, got {h}x{w}: set "
                f"dataset.image_size to a multiple of {p} (nearest: {near(h)}), or dataset.center_crop to one "
                f"when cropping (e.g. dataset.image_size=448 dataset.center_crop=392)"
            )

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """Positions of an h×w patch grid ([1, h·w (+1 with an embedded class position), C]), resampled like
        Meta's `interpolate_pos_encoding` (bicubic, scale factor from the grid + 0.1, no antialias)."""
        pos = self.pos_embed
        n_cls = 0 if self.no_embed_class else self.num_prefix_tokens
        cls_pos, patch_pos = pos[:, :n_cls], pos[:, n_cls:]
        n = patch_pos.shape[1]
        side = int(math.sqrt(n))
        if n == h * w and h == w:
            return pos
        dtype = patch_pos.dtype
        grid = patch_pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        h, w = int(h), int(w)  # traced sizes are tensors under ONNX export, which interpolate's scale_factor refuses
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic",
                             antialias=False)
        if tuple(grid.shape[-2:]) != (h, w):  # cannot happen for a square native grid; guards against others
            raise RuntimeError(f"position embedding resampled to {tuple(grid.shape[-2:])}, expected {(h, w)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(dtype)
        return torch.cat([cls_pos, grid], dim=1)

    def forward_tokens(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], Tuple[int, int]]:
        """Token sequences [B, prefix + h·w, C] after each requested block (prefix = class, then registers),
        and the patch grid (h, w). `final_norm` applies here."""
        self.check_size(x.shape[-2], x.shape[-1])
        t = self.patch_embed(x)  # [B, h, w, C] (timm's dynamic-size patch embedding is NHWC)
        b, h, w, c = t.shape
        t = t.reshape(b, h * w, c)
        pos = self.position_embedding(h, w)
        prefix = [tok.expand(b, -1, -1) for tok in (self.cls_token, self.reg_token) if tok is not None]
        if self.no_embed_class:
            t = torch.cat(prefix + [t + pos], dim=1)
        else:
            t = torch.cat(prefix + [t], dim=1) + pos
        t = self.norm_pre(t)
        wanted, by_layer = set(self.layers), {}
        for i, block in enumerate(self.blocks):
            t = block(t)
            if i in wanted:
                by_layer[i] = self.norm(t) if self.final_norm else t
        return [by_layer[i] for i in self.layers], (h, w)

    def to_grid(self, tokens: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """[B, prefix + h·w, C] -> [B, C, h, w] (a channels_last view of the patch tokens)."""
        b, _, c = tokens.shape
        return tokens[:, self.num_prefix_tokens:].reshape(b, grid[0], grid[1], c).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        tokens, grid = self.forward_tokens(x)
        return [self.to_grid(t, grid) for t in tokens]


__all__ = ["ViTFeatures", "is_vit", "vit_depth", "meta_dinov2_file", "meta_dinov2_url", "meta_dinov2_to_timm", "is_meta_dinov2_state"]
