"""DFM: deep feature modeling (Ahuja et al., "Probabilistic Modeling of Deep Features for Out-of-Distribution
and Adversarial Detection", 2019; the anomaly-detection variant popularised by anomalib).

Features of one backbone layer are average-pooled to a coarse grid and flattened per image; PCA fitted on the
training images keeps the components explaining `n_components` of the variance (or that many components).
`score_type="fre"` scores the feature reconstruction error ‖x − x̂‖² after projecting onto the principal
subspace; `score_type="nll"` scores the negative log-likelihood of a Gaussian in PCA space
(½ Σ zᵢ²/λᵢ + ½ Σ log λᵢ). The map is the reconstruction error per pooled position in both cases (the
likelihood has no spatial decomposition), upsampled and Gaussian-smoothed.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config
from ad.errors import ConfigError
from ad.models._maps import full_precision, upsample_maps
from ad.models.base import AnomalyModel, Prediction


class DFM(AnomalyModel):
    default_max_epochs = 1

    def __init__(
        self,
        backbone: "BackboneConfig | str | dict" = "tf_efficientnet_lite0",
        layer: int = 3,
        pooling_kernel_size: int = 4,
        n_components: float = 0.97,
        score_type: str = "fre",
        sigma: float = 4.0,
    ) -> None:
        super().__init__()
        if score_type not in ("fre", "nll"):
            raise ConfigError(f"model.score_type={score_type!r}: use 'fre' (reconstruction error) or 'nll' (Gaussian likelihood)")
        if not (0 < float(n_components) < 1 or (float(n_components) >= 1 and float(n_components).is_integer())):
            raise ConfigError(f"model.n_components={n_components}: a variance fraction in (0, 1) or a component count >= 1")
        cfg = as_backbone_config(backbone)
        self.backbone_name = cfg.name
        self.feature_extractor = FeatureExtractor(cfg, layers=(int(layer),), frozen=True)
        self.pooling_kernel_size = int(pooling_kernel_size)
        self.n_components = float(n_components)
        self.score_type = score_type
        self.sigma = float(sigma)
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("components", torch.empty(0, 0))  # [k, D] principal axes (rows)
        self.register_buffer("variances", torch.empty(0))  # [k] PCA eigenvalues
        self.register_buffer("grid", torch.zeros(3, dtype=torch.long))  # (C, h, w) of the pooled features
        self._collected: List[torch.Tensor] = []

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        f = self.feature_extractor(images)[0]
        # Small inputs give feature maps smaller than the kernel: pool what there is (same rule at fit and test).
        k = min(self.pooling_kernel_size, f.shape[-2], f.shape[-1])
        if k > 1:
            f = F.avg_pool2d(f, k)
        return f.float()  # PCA residuals are small differences of large numbers: float32 from here on

    def on_fit_start(self, train_loader=None) -> None:
        self._collected = []

    def training_step(self, batch: Dict[str, Any]) -> None:
        f = self.embed(batch["image"])
        self.grid = torch.tensor(f.shape[1:], device=self.grid.device)
        self._collected.append(f.flatten(1).cpu())
        return None

    def on_fit_end(self, val_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        if not self._collected:
            raise RuntimeError("DFM.on_fit_end: no training features were collected")
        x = torch.cat(self._collected).double()
        self._collected = []
        mean = x.mean(0)
        device = self.mean.device
        if x.shape[0] < 2:
            # One training image (few-shot): no variance to find axes in. The reconstruction error becomes the
            # squared distance to that image's features; a likelihood needs a variance, so nll cannot work.
            if self.score_type == "nll":
                raise ConfigError("model.score_type=nll needs at least 2 training images (a variance); use "
                                  "model.score_type=fre for a single image")
            self.mean = mean.float().to(device)
            self.components = torch.zeros(0, x.shape[1], device=device)
            self.variances = torch.zeros(0, device=device)
            return
        # SVD of the centred data (N x D): never forms the D x D covariance when N < D
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        var = s**2 / (x.shape[0] - 1)
        if self.n_components < 1:
            ratio = torch.cumsum(var, 0) / var.sum().clamp_min(1e-300)
            k = int(torch.searchsorted(ratio, torch.tensor(self.n_components, dtype=ratio.dtype)).item()) + 1
        else:
            k = int(self.n_components)
        k = max(1, min(k, int((var > var[0] * 1e-12).sum())))
        self.mean = mean.float().to(device)
        self.components = vh[:k].float().to(device)
        self.variances = var[:k].float().to(device)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        if self.mean.numel() == 0:
            raise RuntimeError("DFM.predict called before fitting")
        f = self.embed(images)
        if tuple(f.shape[1:]) != tuple(self.grid.tolist()):
            raise ConfigError(f"DFM was fitted on pooled features of shape {tuple(self.grid.tolist())} but got "
                              f"{tuple(f.shape[1:])}: use the training image size")
        with full_precision(f):
            x = f.flatten(1) - self.mean
            z = x @ self.components.T
            residual = (x - z @ self.components).view_as(f)
            err_map = (residual**2).sum(1)  # [B, h, w]
            if self.score_type == "fre":
                scores = err_map.flatten(1).sum(1)
            else:
                scores = 0.5 * (z**2 / self.variances).sum(1) + 0.5 * torch.log(self.variances).sum()
            maps = upsample_maps(err_map, images.shape[-2:], self.sigma)
        return Prediction(scores=scores, maps=maps)
