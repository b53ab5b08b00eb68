"""The reconstruction family (`ae`, `unet_ae`, `vae`, `beta_vae`): trained on normal images to reproduce them,
they reconstruct anomalous regions poorly, so the per-pixel reconstruction error is the anomaly map.

- `score: mse` -> squared error averaged over channels; `score: ssim` -> 1 - SSIM (Bergmann et al., "Improving
  unsupervised defect segmentation by applying structural similarity to autoencoders", VISAPP 2019), which
  ignores the blurry-edge error of an L2 autoencoder and reacts to structural change.
- The map is Gaussian-smoothed (`smoothing_sigma`, pixels at model resolution); the image score is its max,
  or the mean of its `topk` largest values (robust to single hot pixels).
- Thresholds come from the runner (validation normals), never from the model.

Architectures: a convolutional encoder (stride-2 conv + BN + LeakyReLU per level) to a dense latent vector and
a mirrored decoder (`DenseAutoencoder`, optionally variational), or the `UNet` of `ad.models.reconstruction._unet` with a
restricted set of skips. Dense latents need a fixed input size: `image_size` resizes inputs internally and
maps are returned at the input resolution.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ad.errors import ConfigError
from ad.models._maps import gaussian_blur2d, resize_input, upsample_to
from ad.models.reconstruction._ssim import ssim_map
from ad.models.base import AnomalyModel, Budget, OptimizerSpec, Prediction

_SCORES = ("mse", "ssim")


def reconstruction_error(x: torch.Tensor, recon: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-pixel error [B,H,W] of a reconstruction: 'mse' or 'ssim' (1 - SSIM)."""
    if kind == "mse":
        return (x - recon).pow(2).mean(dim=1)
    return 1.0 - ssim_map(x, recon)


class DenseAutoencoder(nn.Module):
    """Conv encoder -> dense latent (`latent_dim`) -> conv decoder; `variational` makes the encoder output a
    diagonal Gaussian (mean, log-variance) sampled with the reparameterisation trick during training."""

    def __init__(self, image_size: int, widths: Sequence[int], latent_dim: int, variational: bool = False) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        self.side = image_size // 2 ** len(widths)
        if self.side < 1 or image_size % 2 ** len(widths):
            raise ConfigError(
                f"model.image_size={image_size} must be divisible by 2^{len(widths)} (one halving per entry of "
                f"model.widths={widths}); change image_size or use fewer widths"
            )
        self.variational = variational
        layers, cin = [], 3
        for w in widths:
            layers += [nn.Conv2d(cin, w, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2, inplace=True)]
            cin = w
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        flat = widths[-1] * self.side**2
        self.to_latent = nn.Linear(flat, latent_dim * (2 if variational else 1))
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, flat), nn.LeakyReLU(0.2, inplace=True))
        layers = []
        rev = widths[::-1]
        for i, w in enumerate(rev):
            out = rev[i + 1] if i + 1 < len(rev) else widths[0]
            layers += [nn.ConvTranspose2d(w, out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, inplace=True)]
        self.decoder = nn.Sequential(*layers, nn.Conv2d(widths[0], 3, 3, padding=1), nn.Sigmoid())
        self.widths = widths

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        h = self.to_latent(self.encoder(x))
        if self.variational:
            mu, logvar = h.chunk(2, dim=1)
            return mu, logvar.clamp(-30.0, 20.0)
        return h, None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(z).view(-1, self.widths[-1], self.side, self.side))

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        z = mu
        if logvar is not None and self.training:
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode(z), mu, logvar


class ReconstructionModel(AnomalyModel):
    """Shared training / scoring of the reconstruction family. Subclasses set `self.net` (returns
    `(recon, mu, logvar)`) and `self.beta` (KL weight; 0 for deterministic autoencoders)."""

    default_max_epochs = 100

    def __init__(
        self, image_size: Optional[int] = 256, score: str = "mse", loss: Optional[str] = None,
        smoothing_sigma: float = 4.0, topk: Optional[int] = None, lr: float = 2e-4, weight_decay: float = 1e-5,
        noise_std: float = 0.0,
    ) -> None:
        super().__init__()
        loss = loss or score
        for key, value in (("score", score), ("loss", loss)):
            if value not in _SCORES:
                raise ConfigError(f"model.{key}={value!r} is not one of {', '.join(_SCORES)}")
        self.image_size = int(image_size) if image_size else None
        self.score, self.loss = score, loss
        self.smoothing_sigma = float(smoothing_sigma)
        self.topk = int(topk) if topk else None
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.noise_std = float(noise_std)
        self.beta = 0.0
        self.net: nn.Module

    def configure_optimizers(self, budget: Budget) -> OptimizerSpec:
        return OptimizerSpec(torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay))

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        return resize_input(images, self.image_size)

    def _loss(self, images: torch.Tensor) -> torch.Tensor:
        x = self._resize(images)
        inp = x + self.noise_std * torch.randn_like(x) if self.noise_std > 0 and self.training else x
        recon, mu, logvar = self.net(inp)
        err = reconstruction_error(x, recon, self.loss).mean()
        if logvar is None:
            return err
        # negative ELBO per pixel: mean error + beta * KL(q(z|x) || N(0, I)) spread over the H*W pixels
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()
        return err + self.beta * kl / (x.shape[-2] * x.shape[-1])

    def training_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"])

    def validation_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return self._loss(batch["image"])

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction at model resolution (posterior mean for the VAEs: deterministic scores)."""
        return self.net(self._resize(images))[0]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        x = self._resize(images)
        err = reconstruction_error(x, self.net(x)[0], self.score)[:, None]
        err = gaussian_blur2d(err, self.smoothing_sigma)
        maps = upsample_to(err, images.shape[-2:])[:, 0]
        flat = err.flatten(1)
        scores = flat.max(dim=1).values if not self.topk else flat.topk(min(self.topk, flat.shape[1]), dim=1).values.mean(1)
        return Prediction(scores=scores, maps=maps)


class UNetReconstructor(nn.Module):
    """Adapter giving the `UNet` the `(recon, mu, logvar)` interface (sigmoid output: images are in [0,1])."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor):
        return torch.sigmoid(self.unet(x)), None, None
