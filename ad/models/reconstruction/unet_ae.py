"""U-Net autoencoder: the encoder-decoder of `ad.models.reconstruction._unet` with skip connections.

A U-Net with skips at every level learns the identity: the finest skip alone carries the whole image, so
anomalies are reconstructed too and the error map goes blank. So skips are kept only at coarse levels
(`skip_levels`, default [3] = 1/8 resolution), each squeezed to `skip_channels` (16) by a 1x1 conv, and the
bottleneck is squeezed too (`bottleneck_channels`): at 256 px the skip carries 32x32x16 values, 1/12 of the
image, so fine detail must be re-synthesised from what normal images look like. Optional denoising training
(`noise_std` > 0) makes copying suboptimal as well; it is off by default because BatchNorm statistics gathered
on noisy inputs then mismatch the clean test images. Its deep BatchNorm decoder converges several times slower
than the dense autoencoder at lr 2e-4 (measured on bottle), hence the default lr 1e-3.
Fully convolutional: any input size (padded to a multiple of 2^(levels-1)); `image_size` optional.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ad.models.reconstruction._autoencoder import ReconstructionModel, UNetReconstructor
from ad.models.reconstruction._unet import UNet


class UNetAE(ReconstructionModel):
    def __init__(
        self, image_size: Optional[int] = 256, widths: Sequence[int] = (32, 64, 128, 256, 256),
        skip_levels: Sequence[int] = (3,), skip_channels: Optional[int] = 16, bottleneck_channels: Optional[int] = 32,
        noise_std: float = 0.0, score: str = "mse", loss: Optional[str] = None, smoothing_sigma: float = 4.0,
        topk: Optional[int] = None, lr: float = 1e-3, weight_decay: float = 1e-5,
    ) -> None:
        super().__init__(image_size, score, loss, smoothing_sigma, topk, lr, weight_decay, noise_std)
        self.net = UNetReconstructor(UNet(3, 3, widths, skip_levels, skip_channels, bottleneck_channels))
