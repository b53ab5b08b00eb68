"""AnomalyDINO (Damm et al., "AnomalyDINO: Boosting Patch-based Few-shot Anomaly Detection with DINOv2",
WACV 2025; reference code github.com/dammsi/AnomalyDINO): training-free kNN on DINOv2 patch features.

Every patch token of the last DINOv2 block (after the final LayerNorm, as `get_intermediate_layers`) of the
training normals is stored, L2-normalised; a test patch's score is its cosine distance 1 − cos to the nearest
stored patch (k = 1). Image score = mean of the top 1 % patch distances (the maximum when 1 % is less than
one patch); map = patch distances upsampled to the input, Gaussian σ = 4. Optional zero-shot masking
(`masking: true`, the reference's per-category default for objects on plain backgrounds): patches whose
projection on the test image's first principal component is ≤ 10 (sign chosen so that the central 60 % of
the image is mostly foreground) count as background and score 0; the mask is dilated and closed (3×3).

The reference runs ViT-S/14 without registers at 448 px (smaller edge) and few-shot reference sets; here the
memory bank is every training normal (`trainer.limit_train=N` for N-shot) and the input is the dataset's
(`dataset.image_size=448`, a multiple of 14). Deviations: inputs are resized to the dataset's square size
instead of cropping the aspect-preserving resize to a multiple of 14; no rotation augmentation of the
reference images (the reference's "agnostic" preprocessing rotates the references of some categories);
masking is applied to test images only (the reference's default `mask_ref_images=False`).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config
from ad.errors import ConfigError
from ad.models._maps import top_fraction_score, upsample_maps
from ad.models.memory._memory import KnnIndex
from ad.models.base import AnomalyModel, Prediction


def _morph3(mask: torch.Tensor, dilate: bool) -> torch.Tensor:
    """3×3 binary dilation (max) or erosion (min) of [B,h,w] bool masks; borders ignored like OpenCV's."""
    x = mask.float().unsqueeze(1)
    x = F.max_pool2d(x, 3, stride=1, padding=1) if dilate else -F.max_pool2d(-x, 3, stride=1, padding=1)
    return x.squeeze(1) > 0.5


def foreground_mask(patches: torch.Tensor, threshold: float = 10.0, border: float = 0.2) -> torch.Tensor:
    """AnomalyDINO's zero-shot mask of one image: [h, w, C] patch features -> [h, w] bool (True = object)."""
    h, w, c = patches.shape
    x = patches.reshape(-1, c).float()
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    pc = x @ v[0]
    mask = (pc > threshold).view(h, w)
    centre = mask[int(h * border):int(h * (1 - border)), int(w * border):int(w * (1 - border))]
    if centre.sum() <= centre.numel() * 0.35:  # the component's sign is arbitrary: the object sits in the centre
        mask = (-pc > threshold).view(h, w)
    mask = _morph3(mask[None], dilate=True)
    return _morph3(_morph3(mask, dilate=True), dilate=False)[0]  # dilate, then close (dilate + erode)


class AnomalyDINO(AnomalyModel):
    default_max_epochs = 1

    def __init__(
        self,
        backbone: "BackboneConfig | str | dict" = "vit_small_patch14_dinov2",
        layer: int = -1,
        final_norm: bool = True,
        num_neighbors: int = 1,
        masking: bool = False,
        mask_threshold: float = 10.0,
        sigma: float = 4.0,
        top_ratio: float = 0.01,
        search: str = "flat",
    ) -> None:
        super().__init__()
        if search not in KnnIndex.KINDS:
            raise ConfigError(f"model.search={search!r}: use 'flat' (brute force), 'exact' (pruned) or 'ivf'")
        if int(num_neighbors) < 1:
            raise ConfigError("model.num_neighbors must be >= 1")
        cfg = as_backbone_config(backbone)
        self.backbone_name = cfg.name
        self.feature_extractor = FeatureExtractor(cfg, layers=[int(layer)], frozen=True, final_norm=bool(final_norm))
        if not self.feature_extractor.is_vit:
            raise ConfigError(f"model=anomalydino needs a ViT backbone, got backbone.name={cfg.name}; use "
                              "backbone=vit_small_patch14_dinov2 (the paper's) or another DINOv2 option")
        self.num_neighbors, self.masking, self.mask_threshold = int(num_neighbors), bool(masking), float(mask_threshold)
        self.sigma, self.top_ratio, self.search = float(sigma), float(top_ratio), search
        self.register_buffer("memory_bank", torch.empty(0, self.feature_extractor.channels[0]))
        self._train: List[torch.Tensor] = []
        self._index = KnnIndex(kind=search)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised patch features [B, h, w, C]."""
        f = self.feature_extractor(images, channels_last=True)[0].permute(0, 2, 3, 1)
        return F.normalize(f.float(), dim=-1)

    def on_fit_start(self, train_loader=None) -> None:
        self._train = []

    def training_step(self, batch: Dict[str, Any]) -> None:
        emb = self.embed(batch["image"])
        self._train.append(emb.reshape(-1, emb.shape[-1]).cpu())
        return None

    def on_fit_end(self, val_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        if not self._train:
            raise RuntimeError("AnomalyDINO.on_fit_end: no training features were collected")
        self.memory_bank = torch.cat(self._train).to(self.memory_bank.device).contiguous()
        self._train, self._index = [], KnnIndex(kind=self.search)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        if self.memory_bank.shape[0] == 0:
            raise RuntimeError("AnomalyDINO.predict called before fitting (empty memory bank)")
        if self.masking:  # the mask is computed on the unnormalised features, as in the reference
            raw = self.feature_extractor(images, channels_last=True)[0].permute(0, 2, 3, 1)
            emb = F.normalize(raw.float(), dim=-1)
        else:
            emb = self.embed(images)
        b, h, w, d = emb.shape
        dists, _ = self._index.search(self.memory_bank, emb.reshape(-1, d), self.num_neighbors)
        # unit vectors: ‖a − b‖² / 2 = 1 − cos(a, b); with k > 1 the reference averages the squared distances
        patch = (dists.square() / 2).mean(1).view(b, h, w)
        if self.masking:
            patch = patch * torch.stack([foreground_mask(r, self.mask_threshold) for r in raw]).to(patch.dtype)
        scores = top_fraction_score(patch, self.top_ratio)
        return Prediction(scores=scores, maps=upsample_maps(patch, images.shape[-2:], self.sigma))
