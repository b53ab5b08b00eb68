"""SimpleNet: "A Simple Network for Image Anomaly Detection and Localization" (Liu et al., CVPR 2023).

1. Feature extractor: frozen pretrained backbone, mid-level layers with 3×3 local aggregation on the finest
   layer's grid (PatchCore's locally aware patch features), optionally pooled to fixed widths, standardised per
   channel with the mean and standard deviation over the training normals (fitted in `on_fit_start`).
2. Feature adaptor: one trained linear layer q = W·f + b (the paper's best adaptor).
3. Anomalous feature generator (training only): q̃ = q + ε, ε ~ N(0, σ²I).
4. Discriminator: MLP Linear → BatchNorm → LeakyReLU(0.2) → Linear(→1), trained with the truncated L1 loss
   l = max(0, th⁺ − D(q)) + max(0, −th⁻ + D(q̃)), th⁺ = 0.5, th⁻ = −0.5 (means over patches).
Test time: patch score −D(q), bilinearly upsampled and Gaussian-smoothed (σ = 4) to the input size; image score
= maximum of that smoothed map (the reference code takes the maximum of the unsmoothed patch scores; the
smoothing keeps one noisy patch from deciding an image).

Deviations from the paper, and why:
- Backbone: our backbone group (default EfficientNet-Lite0, offline) instead of WideResNet-50; layers 2 and 3
  (strides 8 and 16, as WRN's layer2/layer3). The reference pools each layer to 1536 channels (WRN: 512 + 1024
  channels); with `pretrain_embed_dim` / `target_embed_dim` null we keep the backbone's own widths (lite0:
  40 + 112 = 152), as our PatchCore does: pooling 152 channels up to 1536 would only repeat them.
- Noise scale. The paper's σ = 0.015 is in the units of its WRN-50 features; the discriminator can only learn
  where the noise stands out of the normal features' spread, so σ depends on the backbone's feature scale
  (EfficientNet-Lite0's stage outputs have a per-channel std ≈ 4 on MVTec bottle). We standardise the features
  (per channel, training statistics) so σ is in units of the normal spread, and take σ = 0.5: measured, at
  σ = 0.015 on raw Lite0 features the loss stays at its plateau of 1 (D(q) ≈ D(q̃)) through 100 steps on
  bottle and the toy textures alike.
- One optimizer (AdamW) with two parameter groups: adaptor lr 1e-4, weight decay 1e-2 (the reference's AdamW
  defaults), discriminator lr 2e-4, weight decay 1e-5 (the reference uses Adam's coupled L2 decay there;
  at 1e-5 the difference is negligible). Constant LR (the reference's run script leaves its cosine option off).
- The reference keeps the meta-epoch with the best *test* AUROC; we never look at the test set.
Schedule (paper/reference run script): 40 meta-epochs × 4 epochs = 160 epochs, batch 8.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config
from ad.errors import ConfigError
from ad.models._maps import aligned_features, max_score, upsample_maps
from ad.models.base import AnomalyModel, Budget, OptimizerSpec, Prediction


def truncated_l1_loss(true_scores: torch.Tensor, fake_scores: torch.Tensor, th_pos: float = 0.5,
                      th_neg: float = -0.5) -> torch.Tensor:
    """mean max(0, th⁺ − D(q)) + mean max(0, D(q̃) − th⁻): normal features are pushed above th⁺, noisy ones
    below th⁻, and neither is pushed further once past its threshold."""
    return (th_pos - true_scores).clamp_min(0).mean() + (fake_scores - th_neg).clamp_min(0).mean()


def anomalous_features(features: torch.Tensor, noise_std: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """features + ε, ε ~ N(0, noise_std²·I) drawn independently per feature and channel (from `generator`, a
    CPU generator, when given: a reproducible draw on any device)."""
    if generator is None:
        noise = torch.randn(features.shape, device=features.device, dtype=features.dtype)
    else:
        noise = torch.randn(features.shape, generator=generator, dtype=features.dtype).to(features.device)
    return features + noise_std * noise


def _xavier(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)  # the reference's initialisation


class Discriminator(nn.Sequential):
    """`layers` − 1 blocks Linear → BatchNorm1d → LeakyReLU(0.2), then Linear(→1) without bias: [N,D] → [N]."""

    def __init__(self, dims: int, hidden: int = 1024, layers: int = 2) -> None:
        blocks, width = [], dims
        for _ in range(max(0, int(layers) - 1)):
            blocks += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2)]
            width = hidden
        super().__init__(*blocks, nn.Linear(width, 1, bias=False))
        self.apply(_xavier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(1)


class SimpleNet(AnomalyModel):
    default_max_epochs = 160  # 40 meta-epochs × 4 discriminator epochs
    default_batch_size = 8

    def __init__(
        self,
        backbone: "BackboneConfig | str | dict" = "tf_efficientnet_lite0",
        layers: Sequence[int] = (2, 3),
        patch_size: int = 3,
        pretrain_embed_dim: Optional[int] = None,
        target_embed_dim: Optional[int] = None,
        noise_std: float = 0.5,
        th_pos: float = 0.5,
        th_neg: float = -0.5,
        disc_hidden: int = 1024,
        disc_layers: int = 2,
        adaptor_lr: float = 1e-4,
        adaptor_weight_decay: float = 1e-2,
        disc_lr: float = 2e-4,
        disc_weight_decay: float = 1e-5,
        sigma: float = 4.0,
    ) -> None:
        super().__init__()
        if float(noise_std) <= 0:
            raise ConfigError(f"model.noise_std={noise_std} must be > 0 (the anomalous features are normal + noise)")
        if not float(th_neg) < float(th_pos):
            raise ConfigError(f"model.th_neg={th_neg} must be below model.th_pos={th_pos}")
        if int(disc_layers) < 1:
            raise ConfigError(f"model.disc_layers={disc_layers} must be >= 1")
        cfg = as_backbone_config(backbone)
        self.backbone_name = cfg.name
        self.feature_extractor = FeatureExtractor(cfg, layers=layers, frozen=True)
        self.patch_size = int(patch_size)
        self.pretrain_embed_dim, self.target_embed_dim = pretrain_embed_dim, target_embed_dim
        channels = self.feature_extractor.channels
        dims = int(pretrain_embed_dim) * len(channels) if pretrain_embed_dim else sum(channels)
        self.dims = min(dims, int(target_embed_dim)) if target_embed_dim else dims
        self.adaptor = nn.Linear(self.dims, self.dims)
        _xavier(self.adaptor)
        self.discriminator = Discriminator(self.dims, int(disc_hidden), int(disc_layers))
        self.noise_std, self.th_pos, self.th_neg = float(noise_std), float(th_pos), float(th_neg)
        self.adaptor_lr, self.adaptor_weight_decay = float(adaptor_lr), float(adaptor_weight_decay)
        self.disc_lr, self.disc_weight_decay = float(disc_lr), float(disc_weight_decay)
        self.sigma = float(sigma)
        # per-channel standardisation of the features, fitted on the training normals (identity until fitted)
        self.register_buffer("feature_mean", torch.zeros(self.dims))
        self.register_buffer("feature_std", torch.ones(self.dims))

    def configure_optimizers(self, budget: Budget) -> OptimizerSpec:
        opt = torch.optim.AdamW([
            {"params": self.adaptor.parameters(), "lr": self.adaptor_lr, "weight_decay": self.adaptor_weight_decay},
            {"params": self.discriminator.parameters(), "lr": self.disc_lr, "weight_decay": self.disc_weight_decay},
        ])
        return OptimizerSpec(optimizer=opt)  # constant LR (reference run script)

    # --- features -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised, locally aggregated backbone features [B, h, w, D] on the finest layer's grid."""
        return (self._raw_embed(images) - self.feature_mean) / self.feature_std

    @torch.no_grad()
    def _raw_embed(self, images: torch.Tensor) -> torch.Tensor:
        feats = aligned_features(self.feature_extractor(images, channels_last=True), pool=self.patch_size)
        b, _, h, w = feats[0].shape
        per_layer = [f.permute(0, 2, 3, 1).reshape(b * h * w, -1) for f in feats]
        if self.pretrain_embed_dim:
            per_layer = [F.adaptive_avg_pool1d(f.unsqueeze(1), int(self.pretrain_embed_dim)).squeeze(1) for f in per_layer]
        emb = torch.cat(per_layer, dim=1)
        if emb.shape[1] > self.dims:
            emb = F.adaptive_avg_pool1d(emb.unsqueeze(1), self.dims).squeeze(1)
        return emb.view(b, h, w, -1)

    # --- training -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def on_fit_start(self, train_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        """Channel mean and standard deviation of the training normals' features (one pass; float64 sums)."""
        if train_loader is None:
            return
        total = square = None
        count = 0
        for batch in train_loader:
            e = self._raw_embed(batch["image"].to(self.feature_mean.device)).reshape(-1, self.dims).double()
            total = e.sum(0) if total is None else total + e.sum(0)
            square = (e * e).sum(0) if square is None else square + (e * e).sum(0)
            count += len(e)
        if count:
            mean = total / count
            self.feature_mean.copy_(mean.float())
            self.feature_std.copy_((square / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6).float())

    def _loss(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        emb = self.embed(images)
        q = self.adaptor(emb.reshape(-1, emb.shape[-1]))
        scores = self.discriminator(torch.cat([q, anomalous_features(q, self.noise_std, generator)]))
        return truncated_l1_loss(scores[: len(q)], scores[len(q):], self.th_pos, self.th_neg)

    def training_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"])

    @torch.no_grad()
    def validation_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        # the same noise every epoch: the validation loss tracks the model, not the draw (and leaves the RNG alone)
        return self._loss(batch["image"], torch.Generator().manual_seed(0))

    # --- inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        emb = self.embed(images)
        b, h, w, d = emb.shape
        patch_scores = -self.discriminator(self.adaptor(emb.reshape(-1, d))).view(b, h, w)
        maps = upsample_maps(patch_scores, images.shape[-2:], self.sigma)
        return Prediction(scores=max_score(maps), maps=maps)
