"""β-VAE (Higgins et al., ICLR 2017): the VAE with the KL term weighted by beta > 1 (default 4), trading
reconstruction detail for a smoother, more disentangled latent space, which reconstructs unseen (anomalous)
structure less faithfully."""
from __future__ import annotations

from typing import Optional, Sequence

from ad.models.reconstruction.vae import VAE


class BetaVAE(VAE):
    def __init__(
        self, image_size: int = 256, widths: Sequence[int] = (32, 64, 128, 256, 256), latent_dim: int = 128,
        beta: float = 4.0, score: str = "mse", loss: Optional[str] = None, smoothing_sigma: float = 4.0,
        topk: Optional[int] = None, lr: float = 2e-4, weight_decay: float = 1e-5,
    ) -> None:
        super().__init__(image_size, widths, latent_dim, beta, score, loss, smoothing_sigma, topk, lr, weight_decay)
