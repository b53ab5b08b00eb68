"""Building blocks of Reverse Distillation built from any encoder's `feature_info` (channels, reductions), so the
one-class bottleneck and the mirrored student decoder fit EfficientNet-Lite as well as (Wide-)ResNets."""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import nn

from ad.errors import ConfigError
from ad.models._maps import upsample_to


def halvings(r_from: int, r_to: int) -> int:
    """How many ×2 resolution changes separate two feature reductions (must be a power of two apart)."""
    ratio = r_to / r_from
    n = int(round(math.log2(ratio))) if ratio > 0 else -1
    if n < 1 or 2**n != ratio:
        raise ConfigError(
            f"model.layers: feature reductions {r_from} -> {r_to} are not a power of two apart; "
            "choose increasing backbone layers whose strides differ by 2x, 4x..."
        )
    return n


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ResidualBottleneck(nn.Module):
    """ResNet bottleneck block (1×1 → 3×3 → 1×1 + shortcut). `mode`: 'same', 'down' (stride-2 3×3 conv, as the
    encoder) or 'up' (2×2 transposed conv in place of the 3×3, as the paper's mirrored decoder)."""

    def __init__(self, cin: int, cout: int, width: int, mode: str = "same") -> None:
        super().__init__()
        if mode == "up":
            mid: nn.Module = nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)
        else:
            mid = nn.Conv2d(width, width, 3, stride=2 if mode == "down" else 1, padding=1, bias=False)
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            mid, nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        if mode == "up":
            self.shortcut: nn.Module = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False), nn.BatchNorm2d(cout))
        elif mode == "down" or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=2 if mode == "down" else 1, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()
        self.act: nn.Module = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def bottleneck_width(cout: int) -> int:
    # Wide-ResNet-50's blocks are half as wide inside as their output; keep at least 16 for thin encoders.
    return max(16, cout // 2)


class OneClassBottleneck(nn.Module):
    """OCBE: multi-scale feature fusion (MFF) — each encoder scale is brought to the deepest scale's resolution
    by stride-2 3×3 conv+BN+ReLU steps through the next scales' widths and concatenated — followed by one-class
    embedding (OCE): residual block(s), the first with stride 2, giving the compact code the decoder restores."""

    def __init__(self, channels: Sequence[int], reductions: Sequence[int], embedding_channels: int, oce_blocks: int = 1) -> None:
        super().__init__()
        self.fuse = nn.ModuleList()
        for k in range(len(channels)):
            steps: List[nn.Module] = []
            cin = channels[k]
            for j in range(k, len(channels) - 1):
                for _ in range(halvings(reductions[j], reductions[j + 1])):
                    steps.append(conv_bn_relu(cin, channels[j + 1], stride=2))
                    cin = channels[j + 1]
            self.fuse.append(nn.Sequential(*steps) if steps else nn.Identity())
        cin = channels[-1] * len(channels)
        blocks: List[nn.Module] = []
        for i in range(max(1, oce_blocks)):
            blocks.append(ResidualBottleneck(cin, embedding_channels, bottleneck_width(embedding_channels), "down" if i == 0 else "same"))
            cin = embedding_channels
        self.oce = nn.Sequential(*blocks)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        fused = [f(x) for f, x in zip(self.fuse, feats)]
        # Odd input sizes round differently in the stride-2 chains: align on the deepest scale.
        size = fused[-1].shape[-2:]
        fused = [upsample_to(x, size) for x in fused]
        return self.oce(torch.cat(fused, dim=1))


class MirroredDecoder(nn.Module):
    """Student decoder: the encoder reversed. Stage k upsamples (2×2 transposed-conv residual blocks) to encoder
    scale k's resolution and width, then refines with `blocks[k]-1` residual blocks; each stage's output is the
    student's feature for that scale and the next stage's input.

    `out_relu` mirrors the encoder's stage outputs: ResNet stages end in a ReLU, EfficientNet stages in a linear
    projection (signed features a ReLU-ended student could never match in direction)."""

    def __init__(self, channels: Sequence[int], reductions: Sequence[int], embedding_channels: int,
                 blocks: Sequence[int], out_relu: bool = True) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        cin, r_in = embedding_channels, reductions[-1] * 2
        for k in reversed(range(len(channels))):
            layers: List[nn.Module] = []
            cout = channels[k]
            for _ in range(halvings(reductions[k], r_in)):
                layers.append(ResidualBottleneck(cin, cout, bottleneck_width(cout), "up"))
                cin = cout
            for _ in range(max(1, int(blocks[len(channels) - 1 - k])) - 1):
                layers.append(ResidualBottleneck(cout, cout, bottleneck_width(cout), "same"))
            layers[-1].act = nn.ReLU(inplace=True) if out_relu else nn.Identity()
            self.stages.append(nn.Sequential(*layers))
            r_in = reductions[k]

    def forward(self, code: torch.Tensor) -> List[torch.Tensor]:
        """Returns features ordered like the encoder's (shallowest first)."""
        outs = []
        x = code
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[::-1]
