"""Variational autoencoder (Kingma & Welling 2014) for anomaly detection: the encoder outputs a Gaussian
posterior, sampled with the reparameterisation trick; loss = reconstruction error + beta·KL to N(0, I) (the
negative ELBO per pixel, beta = 1). Scoring uses the posterior mean, so predictions are deterministic."""
from __future__ import annotations

from typing import Optional, Sequence

from ad.models.reconstruction._autoencoder import DenseAutoencoder, ReconstructionModel


class VAE(ReconstructionModel):
    def __init__(
        self, image_size: int = 256, widths: Sequence[int] = (32, 64, 128, 256, 256), latent_dim: int = 128,
        beta: float = 1.0, score: str = "mse", loss: Optional[str] = None, smoothing_sigma: float = 4.0,
        topk: Optional[int] = None, lr: float = 2e-4, weight_decay: float = 1e-5,
    ) -> None:
        super().__init__(image_size, score, loss, smoothing_sigma, topk, lr, weight_decay)
        self.net = DenseAutoencoder(image_size, widths, latent_dim, variational=True)
        self.beta = float(beta)
