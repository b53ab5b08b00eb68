"""β-VAE (Higgins et al., ICLR 2017): the VAE with the KL term weighted by beta > 1 (default 4), trading
reconstruction detail for a smoother, more disentangled latent space, which reconstructs unseen (anomalous)
structure less faithfully."""
from __future__ import annotations

from typing import Literal, Optional, Sequence

from ad.models.reconstruction.vae import VAE
from ad.values import NonNegativeFloat, PositiveFloat, PositiveInt


class BetaVAE(VAE):
    def __init__(
        self, image_size: PositiveInt = 256, widths: Sequence[PositiveInt] = (32, 64, 128, 256, 256),
        latent_dim: PositiveInt = 128,
        beta: NonNegativeFloat = 4.0, score: Literal["mse", "ssim"] = "mse",
        loss: Optional[Literal["mse", "ssim"]] = None, smoothing_sigma: NonNegativeFloat = 4.0,
        topk: Optional[PositiveInt] = None, lr: PositiveFloat = 2e-4, weight_decay: NonNegativeFloat = 1e-5,
    ) -> None:
        super().__init__(image_size, widths, latent_dim, beta, score, loss, smoothing_sigma, topk, lr, weight_decay)
