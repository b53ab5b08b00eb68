"""PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2020 workshops).

Every patch position of the finest requested layer gets a multivariate Gaussian of the concatenated multi-layer
features (a fixed random subset of channels); the anomaly map is the Mahalanobis distance to it.

Memory: instead of keeping all N training embeddings ([N, d, h·w]), fitting accumulates per-position sums of
x and x·xᵀ (in float64, around a per-position shift for numerical stability), so memory is independent of
the number of training images. The covariance inverse is kept as the inverse Cholesky factor, computed in
chunks of positions.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence

import torch

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config
from ad.errors import ConfigError
from ad.models.memory._memory import seeded_channel_subset
from ad.models._maps import aligned_features, full_precision, upsample_maps
from ad.models.base import AnomalyModel, Prediction


class Padim(AnomalyModel):
    default_max_epochs = 1

    def __init__(
        self,
        backbone: "BackboneConfig | str | dict" = "tf_efficientnet_lite0",
        layers: Sequence[int] = (1, 2, 3),
        n_features: Optional[int] = 100,
        epsilon: float = 0.01,
        sigma: float = 4.0,
        seed: int = 0,
        chunk_positions: int = 512,
    ) -> None:
        super().__init__()
        cfg = as_backbone_config(backbone)
        self.backbone_name = cfg.name
        self.feature_extractor = FeatureExtractor(cfg, layers=layers, frozen=True)
        total = sum(self.feature_extractor.channels)
        if n_features is not None and not 0 < int(n_features) <= total:
            raise ConfigError(f"model.n_features={n_features} must be in [1, {total}] (channels of layers {list(layers)})")
        self.epsilon = float(epsilon)
        self.sigma = float(sigma)
        self.chunk_positions = int(chunk_positions)
        # The subset is part of the fitted state: saved, so a reloaded model uses the same channels.
        self.register_buffer("channel_idx", seeded_channel_subset(total, n_features or total, seed))
        d = self.channel_idx.numel()
        self.register_buffer("mean", torch.empty(0, d))
        self.register_buffer("inv_chol", torch.empty(0, d, d))  # L⁻¹ with Σ = L·Lᵀ, per position
        self.register_buffer("grid", torch.zeros(2, dtype=torch.long))  # (h, w) of the fitted positions
        self._reset_sums()

    def _reset_sums(self) -> None:
        self._n = 0
        self._shift = self._sum = self._sum_outer = None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[B, d, h, w]: layers resized (nearest, as the paper's patch-wise concatenation) to the finest grid."""
        feats = aligned_features(self.feature_extractor(images), mode="nearest")
        return torch.cat(feats, dim=1).index_select(1, self.channel_idx)

    def on_fit_start(self, train_loader=None) -> None:
        self._reset_sums()

    def training_step(self, batch: Dict[str, Any]) -> None:
        emb = self.embed(batch["image"])
        b, d, h, w = emb.shape
        # contiguous matters: torch's CPU bmm on permuted strides falls off a cliff with >1 thread (~500x)
        x = emb.reshape(b, d, h * w).permute(2, 0, 1).float().contiguous()  # [P, B, d]
        with full_precision(x):  # sums of outer products in float16 would be useless
            self._accumulate(x, b, d, h, w)
        return None

    def _accumulate(self, x: torch.Tensor, b: int, d: int, h: int, w: int) -> None:
        if self._shift is None:
            self._shift = x.mean(1, keepdim=True)
            self._sum = torch.zeros(h * w, d, dtype=torch.float64, device=x.device)
            self._sum_outer = torch.zeros(h * w, d, d, dtype=torch.float64, device=x.device)
            self.grid = torch.tensor([h, w], device=self.grid.device)
        elif (h, w) != tuple(self.grid.tolist()):
            raise ConfigError(f"PaDiM needs one image size for all training images (got grids {tuple(self.grid.tolist())} and {(h, w)})")
        xc = x - self._shift
        self._sum += xc.sum(1).double()
        self._sum_outer += torch.bmm(xc.transpose(1, 2), xc).double()
        self._n += b

    def on_fit_end(self, val_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        if self._n < 1:
            raise RuntimeError("PaDiM.on_fit_end: no training features were collected")
        n = self._n
        mean_c = self._sum / n  # mean of the shifted data
        d = mean_c.shape[1]
        eye = torch.eye(d, dtype=torch.float64, device=mean_c.device)
        inv_chol = torch.empty(mean_c.shape[0], d, d, dtype=torch.float32, device=mean_c.device)
        for s in range(0, mean_c.shape[0], self.chunk_positions):
            e = slice(s, s + self.chunk_positions)
            m = mean_c[e]
            # One training image (few-shot) has no sample covariance: ε·I alone, i.e. a scaled Euclidean distance.
            scatter = (self._sum_outer[e] - n * m.unsqueeze(2) * m.unsqueeze(1)) / (n - 1) if n > 1 else 0.0
            cov = scatter + self.epsilon * eye
            chol = torch.linalg.cholesky(cov)
            inv_chol[e] = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False).float()
        self.mean = (mean_c + self._shift.squeeze(1).double()).float()
        self.inv_chol = inv_chol
        self._reset_sums()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        if self.mean.shape[0] == 0:
            raise RuntimeError("PaDiM.predict called before fitting")
        emb = self.embed(images)
        b, d, h, w = emb.shape
        if (h, w) != tuple(self.grid.tolist()):
            raise ConfigError(f"PaDiM was fitted on a {tuple(self.grid.tolist())} feature grid but got {(h, w)}: use the training image size")
        with full_precision(emb):  # Mahalanobis distances in float16 lose most of their digits
            diff = (emb.float().reshape(b, d, h * w).permute(2, 0, 1) - self.mean.unsqueeze(1)).contiguous()  # [P, B, d]
            dist = torch.empty(h * w, b, device=emb.device)
            for s in range(0, h * w, self.chunk_positions):
                e = slice(s, s + self.chunk_positions)
                z = torch.bmm(diff[e], self.inv_chol[e].transpose(1, 2))  # L⁻¹(x-μ) per position
                dist[e] = (z * z).sum(-1)
            maps = upsample_maps(dist.sqrt().T.reshape(b, h, w), images.shape[-2:], self.sigma)
        return Prediction(scores=maps.flatten(1).amax(1), maps=maps)
