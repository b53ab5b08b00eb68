"""Encoder-decoder with optional skip connections per level, shared by DRAEM's two subnetworks and the U-Net
autoencoder. Level 0 is full resolution; each further level halves it (max-pool); the last level is the
bottleneck. Which levels feed a skip connection to the decoder is a parameter: all of them gives a classic
U-Net (DRAEM's discriminative network), none gives a plain convolutional autoencoder (DRAEM's reconstructive
network), a few coarse ones gives the U-Net autoencoder.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + BN + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """`widths[i]` channels at level i. `skip_levels` (indices < len(widths)-1) pass encoder features to the
    decoder, optionally squeezed to `skip_channels` by a 1x1 conv (limits how much the skip can copy).
    `bottleneck_channels` squeezes the deepest level the same way. Inputs of any size: they are
    reflection-padded to a multiple of 2^(levels-1) and the output cropped back."""

    def __init__(
        self, in_channels: int, out_channels: int, widths: Sequence[int], skip_levels: Iterable[int] = (),
        skip_channels: Optional[int] = None, bottleneck_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError(f"UNet needs at least two levels, got widths={widths}")
        self.levels = len(widths)
        self.skip_levels = sorted({int(i) for i in skip_levels})
        bad = [i for i in self.skip_levels if not 0 <= i < self.levels - 1]
        if bad:
            raise ValueError(f"skip levels {bad} out of range 0..{self.levels - 2} for widths={widths}")
        self.encoder = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)
        )
        self.bottleneck = nn.Identity()
        if bottleneck_channels:
            self.bottleneck = nn.Sequential(
                nn.Conv2d(widths[-1], bottleneck_channels, 1), nn.ReLU(inplace=True),
                nn.Conv2d(bottleneck_channels, widths[-1], 1), nn.ReLU(inplace=True),
            )
        self.skips = nn.ModuleDict()
        for i in self.skip_levels:
            self.skips[str(i)] = nn.Conv2d(widths[i], skip_channels, 1) if skip_channels else nn.Identity()
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(self.levels - 2, -1, -1):
            self.up.append(nn.Sequential(
                nn.Conv2d(widths[i + 1], widths[i], 3, padding=1, bias=False), nn.BatchNorm2d(widths[i]),
                nn.ReLU(inplace=True),
            ))
            skip = (skip_channels or widths[i]) if i in self.skip_levels else 0
            self.decoder.append(ConvBlock(widths[i] + skip, widths[i]))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** (self.levels - 1)
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        feats = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        x = self.bottleneck(x)
        for j, i in enumerate(range(self.levels - 2, -1, -1)):
            x = self.up[j](F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
            if i in self.skip_levels:
                x = torch.cat([x, self.skips[str(i)](feats[i])], dim=1)
            x = self.decoder[j](x)
        return self.head(x)[..., :h, :w]
