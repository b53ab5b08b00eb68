"""Vanilla convolutional autoencoder (Masci et al. 2011 style; with `score: ssim`, the SSIM-AE of Bergmann et
al. 2019): five stride-2 conv levels down to a dense `latent_dim` bottleneck, mirrored decoder. The dense
bottleneck is what stops it from copying its input. Shared code: `ad.models.reconstruction._autoencoder`."""
from __future__ import annotations

from typing import Optional, Sequence

from ad.models.reconstruction._autoencoder import DenseAutoencoder, ReconstructionModel


class AE(ReconstructionModel):
    def __init__(
        self, image_size: int = 256, widths: Sequence[int] = (32, 64, 128, 256, 256), latent_dim: int = 128,
        score: str = "mse", loss: Optional[str] = None, smoothing_sigma: float = 4.0, topk: Optional[int] = None,
        lr: float = 2e-4, weight_decay: float = 1e-5,
    ) -> None:
        super().__init__(image_size, score, loss, smoothing_sigma, topk, lr, weight_decay)
        self.net = DenseAutoencoder(image_size, widths, latent_dim)
