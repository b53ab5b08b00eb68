"""SPADE (Cohen & Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences", 2020).

Image score: mean distance of the test image's globally pooled deep feature to its K nearest training images.
Pixel map: every test feature-map position is compared with all positions of the `top_k` nearest training
images (the "gallery"), per layer of the feature pyramid; the nearest-neighbour distances of the layers are
upsampled to the input, averaged and Gaussian-smoothed.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config
from ad.errors import ConfigError
from ad.models._maps import full_precision, gaussian_blur2d, upsample_to
from ad.models.memory._memory import KnnIndex, nearest_distance, pairwise_sq_dists
from ad.models.base import AnomalyModel, Prediction


class Spade(AnomalyModel):
    default_max_epochs = 1

    def __init__(
        self,
        backbone: "BackboneConfig | str | dict" = "tf_efficientnet_lite0",
        layers: Sequence[int] = (1, 2, 3),
        global_layer: int = 4,
        image_neighbors: int = 50,
        top_k: int = 10,
        sigma: float = 4.0,
    ) -> None:
        super().__init__()
        if int(image_neighbors) < 1 or int(top_k) < 1:
            raise ConfigError("model.image_neighbors and model.top_k must be >= 1")
        cfg = as_backbone_config(backbone)
        self.backbone_name = cfg.name
        self.pixel_layers = tuple(int(i) for i in layers)
        self.global_layer = int(global_layer)
        if self.global_layer < max(self.pixel_layers):
            raise ConfigError(f"model.global_layer={global_layer} must be >= the deepest of model.layers={list(layers)}")
        all_layers = sorted(set(self.pixel_layers) | {self.global_layer})
        self.feature_extractor = FeatureExtractor(cfg, layers=all_layers, frozen=True)
        self._pos = {layer: all_layers.index(layer) for layer in all_layers}
        self.image_neighbors = int(image_neighbors)
        self.top_k = int(top_k)
        self.sigma = float(sigma)
        chans = self.feature_extractor.channels
        self.register_buffer("train_global", torch.empty(0, chans[self._pos[self.global_layer]]))
        for i, layer in enumerate(self.pixel_layers):
            self.register_buffer(f"gallery_{i}", torch.empty(0, chans[self._pos[layer]], 0, 0))
        self._collected: List[List[torch.Tensor]] = []
        self._index = KnnIndex("flat")

    def _galleries(self) -> List[torch.Tensor]:
        return [getattr(self, f"gallery_{i}") for i in range(len(self.pixel_layers))]

    def _features(self, images: torch.Tensor):
        feats = [f.float() for f in self.feature_extractor(images)]  # the kNN below runs in float32
        glob = feats[self._pos[self.global_layer]].mean(dim=(2, 3))
        return glob, [feats[self._pos[layer]] for layer in self.pixel_layers]

    def on_fit_start(self, train_loader=None) -> None:
        self._collected = []

    def training_step(self, batch: Dict[str, Any]) -> None:
        glob, maps = self._features(batch["image"])
        self._collected.append([glob.cpu()] + [m.cpu() for m in maps])
        return None

    def on_fit_end(self, val_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        if not self._collected:
            raise RuntimeError("SPADE.on_fit_end: no training features were collected")
        parts = list(zip(*self._collected))
        self._collected = []
        device = self.train_global.device
        self.train_global = torch.cat(parts[0]).to(device)
        for i, p in enumerate(parts[1:]):
            setattr(self, f"gallery_{i}", torch.cat(p).to(device))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        if self.train_global.shape[0] == 0:
            raise RuntimeError("SPADE.predict called before fitting")
        glob, maps = self._features(images)
        with full_precision(glob):  # distances in float16 would reorder near neighbours
            return self._score(images, glob, maps)

    def _score(self, images: torch.Tensor, glob: torch.Tensor, maps) -> Prediction:
        n_train = self.train_global.shape[0]
        dists, _ = self._index.search(self.train_global, glob, min(self.image_neighbors, n_train))
        scores = dists.mean(1)
        # nearest training images by global feature define each test image's pixel gallery
        order = pairwise_sq_dists(glob, self.train_global).argsort(dim=1)[:, : min(self.top_k, n_train)]
        size = images.shape[-2:]
        out = torch.zeros(images.shape[0], *size, device=images.device)
        for fmap, gallery in zip(maps, self._galleries()):
            c = fmap.shape[1]
            layer_maps = []
            for j in range(images.shape[0]):
                g = gallery[order[j]].permute(0, 2, 3, 1).reshape(-1, c)
                q = fmap[j].permute(1, 2, 0).reshape(-1, c)
                layer_maps.append(nearest_distance(g, q).view(fmap.shape[-2:]))
            out += upsample_to(torch.stack(layer_maps), size)
        maps_out = gaussian_blur2d(out / len(maps), self.sigma)
        return Prediction(scores=scores, maps=maps_out)
