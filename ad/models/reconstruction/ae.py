"""Vanilla convolutional autoencoder (Masci et al. 2011 style; with `score: ssim`, the SSIM-AE of Bergmann et
al. 2019): five stride-2 conv levels down to a dense `latent_dim` bottleneck, mirrored decoder. The dense
bottleneck is what stops it from copying its input. Shared code: `ad.models.reconstruction._autoencoder`."""
from __future__ import annotations

from typing import Literal, Optional, Sequence

from ad.models.reconstruction._autoencoder import DenseAutoencoder, ReconstructionModel
from ad.values import NonNegativeFloat, PositiveFloat, PositiveInt


class AE(ReconstructionModel):
    def __init__(
        self, image_size: PositiveInt = 256, widths: Sequence[PositiveInt] = (32, 64, 128, 256, 256),
        latent_dim: PositiveInt = 128,
        score: Literal["mse", "ssim"] = "mse", loss: Optional[Literal["mse", "ssim"]] = None,
        smoothing_sigma: NonNegativeFloat = 4.0, topk: Optional[PositiveInt] = None,
        lr: PositiveFloat = 2e-4, weight_decay: NonNegativeFloat = 1e-5,
    ) -> None:
        super().__init__(image_size, score, loss, smoothing_sigma, topk, lr, weight_decay)
        self.net = DenseAutoencoder(image_size, widths, latent_dim)
