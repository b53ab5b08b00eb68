"""Autoencoder on a pretrained encoder (`feature_ae`): a frozen ImageNet backbone describes every image
region, a small trained autoencoder reconstructs that description, and the reconstruction error is the
anomaly map. The feature target follows DFR (Shi, Yang, Qi, "Unsupervised anomaly segmentation via deep
feature reconstruction", Neurocomputing 2021):

- Features: backbone stages `layers` (default 1, 2, 3: strides 4 / 8 / 16 of EfficientNet-Lite0) resized to
  the finest one, concatenated, averaged over 3×3 neighbours (regional context; DFR aggregates 4×4 windows),
  and standardised per channel with their mean/std over the training images (`on_fit_start`), so channels of
  very different scale weigh alike in the loss.
- Autoencoder: DFR's 1×1-convolution CAE (C → (C+2L)/2 → 2L → L → 2L → (C+2L)/2 → C, BatchNorm + ReLU):
  a per-position non-linear projection onto an L-dimensional manifold of normal features. DFR picks L by PCA
  (90 % variance); here `latent_dim` is a fixed argument because the network's shapes must be known when the
  model is built (so `model.pt` rebuilds it).
- `target`: `features` (default), `image` or `both`. Why features by default: reconstructing the image from
  features spends the decoder's capacity on pixel detail irrelevant to defects and blurs edges (the AE
  family's weakness), while feature errors measure semantic deviation and localise at the feature stride.
  `image` decodes the latent code to the image (transposed convs up to the input resolution) and scores like
  the AE family (`score: mse|ssim`); `both` trains both heads on the same code and adds the two maps, each
  divided by its mean over the validation normals (`on_fit_end`) so neither dominates by scale.
- Map: per-position squared error (mean over channels), upsampled to the input, Gaussian-smoothed
  (`smoothing_sigma`); image score = its maximum.
- Schedule (DFR's code): Adam lr 1e-4, batch 4, 700 epochs; `trainer.max_epochs`/`max_steps` override it.
The encoder never trains (frozen, BN folded); only the autoencoder's parameters reach the optimizer.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config
from ad.errors import ConfigError
from ad.models.reconstruction._autoencoder import reconstruction_error
from ad.models._maps import gaussian_blur2d, max_score, upsample_to
from ad.models.base import AnomalyModel, Budget, OptimizerSpec, Prediction

log = logging.getLogger(__name__)
_TARGETS = ("features", "image", "both")


def _conv1x1(cin: int, cout: int, act: bool = True) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)] if act else [nn.Conv2d(cin, cout, 1)]


class FeatureCAE(nn.Module):
    """DFR's 1×1-conv autoencoder: encoder C → (C+2L)/2 → 2L → L, mirrored decoder back to C (linear output)."""

    def __init__(self, channels: int, latent_dim: int) -> None:
        super().__init__()
        mid = (channels + 2 * latent_dim) // 2
        self.encoder = nn.Sequential(*_conv1x1(channels, mid), *_conv1x1(mid, 2 * latent_dim), nn.Conv2d(2 * latent_dim, latent_dim, 1))
        self.decoder = nn.Sequential(*_conv1x1(latent_dim, 2 * latent_dim), *_conv1x1(2 * latent_dim, mid), *_conv1x1(mid, channels, act=False))


class ImageDecoder(nn.Module):
    """Latent grid at stride `stride` → image: ×2 transposed-conv + BN + ReLU steps, then a 3×3 conv + sigmoid."""

    def __init__(self, latent_dim: int, stride: int, width: int = 64) -> None:
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(latent_dim, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        s = stride
        while s > 1:
            layers += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            s //= 2
        self.net = nn.Sequential(*layers, nn.Conv2d(width, 3, 3, padding=1), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class FeatureAE(AnomalyModel):
    # DFR (authors' code): 700 epochs, batch 4, Adam lr 1e-4.
    default_max_epochs = 700
    default_batch_size = 4

    def __init__(
        self, backbone: "BackboneConfig | str | dict" = "tf_efficientnet_lite0", layers: Sequence[int] = (1, 2, 3),
        latent_dim: int = 64, target: str = "features", score: str = "mse", pool_size: int = 3,
        image_decoder_width: int = 64, smoothing_sigma: float = 4.0, lr: float = 1e-4, weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if target not in _TARGETS:
            raise ConfigError(f"model.target={target!r} is not one of {', '.join(_TARGETS)}")
        if score not in ("mse", "ssim"):
            raise ConfigError(f"model.score={score!r} is not one of mse, ssim (the image head's error)")
        cfg = as_backbone_config(backbone)
        self.backbone_name = cfg.name
        self.encoder = FeatureExtractor(cfg, layers, frozen=True)
        channels, stride = int(sum(self.encoder.channels)), int(self.encoder.reductions[0])
        self.target, self.score, self.pool_size = target, score, int(pool_size)
        self.cae = FeatureCAE(channels, int(latent_dim))
        self.image_decoder = ImageDecoder(int(latent_dim), stride, int(image_decoder_width)) if target != "features" else None
        self.smoothing_sigma, self.lr, self.weight_decay = float(smoothing_sigma), float(lr), float(weight_decay)
        self.register_buffer("feat_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("feat_std", torch.ones(1, channels, 1, 1))
        self.register_buffer("feat_stats_ready", torch.tensor(False))
        self.register_buffer("map_scale", torch.ones(2))  # mean feature / image map on validation normals

    def configure_optimizers(self, budget: Budget) -> OptimizerSpec:
        params = [p for n, p in self.named_parameters() if not n.startswith("encoder.")]
        return OptimizerSpec(torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay))

    @torch.no_grad()
    def features(self, images: torch.Tensor, standardise: bool = True) -> torch.Tensor:
        feats = self.encoder(images)
        size = feats[0].shape[-2:]
        f = torch.cat([upsample_to(x, size) for x in feats], dim=1)
        if self.pool_size > 1:
            f = F.avg_pool2d(f, self.pool_size, stride=1, padding=self.pool_size // 2, count_include_pad=False)
        return (f - self.feat_mean) / self.feat_std if standardise else f

    def on_fit_start(self, train_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        """Per-channel mean / std of the aggregated features over the training images."""
        if bool(self.feat_stats_ready):
            return
        s = sq = n = 0.0
        for batch in train_loader or ():
            f = self.features(batch["image"].to(self.feat_mean.device), standardise=False).double()
            s, sq, n = s + f.sum((0, 2, 3)), sq + f.pow(2).sum((0, 2, 3)), n + f.shape[0] * f.shape[2] * f.shape[3]
        if n == 0:
            log.warning("feature_ae: no training images in on_fit_start; features stay unstandardised")
            return
        mean = s / n
        self.feat_mean.copy_(mean.view_as(self.feat_mean))
        self.feat_std.copy_((sq / n - mean**2).clamp_min(1e-12).sqrt().view_as(self.feat_std))
        self.feat_stats_ready.fill_(True)

    def _errors(self, images: torch.Tensor) -> List[Optional[torch.Tensor]]:
        """[feature error [B,h,w] or None, image error [B,H,W] or None] of the reconstructions."""
        f = self.features(images)
        z = self.cae.encoder(f)
        feat_err = (self.cae.decoder(z) - f).pow(2).mean(1) if self.target != "image" else None
        img_err = None
        if self.image_decoder is not None:
            recon = upsample_to(self.image_decoder(z), images.shape[-2:])
            img_err = reconstruction_error(images, recon, self.score)
        return [feat_err, img_err]

    def _loss(self, images: torch.Tensor) -> torch.Tensor:
        return sum(e.mean() for e in self._errors(images) if e is not None)

    def training_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"])

    @torch.no_grad()
    def validation_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"])

    def on_fit_end(self, val_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        if self.target != "both":
            return
        sums, count = torch.zeros(2, dtype=torch.float64), 0
        for batch in val_loader or ():
            x = batch["image"].to(self.feat_mean.device)
            with torch.no_grad():
                errs = self._errors(x)
            sums += torch.tensor([float(e.mean(dim=(1, 2)).sum()) for e in errs], dtype=torch.float64)
            count += x.shape[0]
        if count:
            self.map_scale.copy_((sums / count).clamp_min(1e-12).float())

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        size = images.shape[-2:]
        maps = 0.0
        for err, scale in zip(self._errors(images), self.map_scale):
            if err is not None:
                maps = maps + upsample_to(err, size) / scale
        maps = gaussian_blur2d(maps, self.smoothing_sigma)
        return Prediction(scores=max_score(maps), maps=maps)
