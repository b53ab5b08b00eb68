"""Reverse Distillation from a one-class embedding (Deng & Li, CVPR 2022, arXiv:2201.10703).

A frozen pretrained encoder (teacher) gives multi-scale features; a trainable one-class bottleneck (OCBE:
multi-scale fusion + a residual one-class embedding block) compresses them into a low-resolution code, and a
student *decoder* mirroring the encoder restores the teacher's features from that code. Distilling "in reverse"
(abstract code → detailed features) keeps the student from reproducing anomalous patterns the code does not
carry. Loss and map are the per-pixel cosine distance 1 − cos(t, s): loss = Σ_scales mean over positions,
map = Σ_scales upsampled distance, smoothed with a Gaussian (σ = 4); image score = max of the map.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config
from ad.errors import ConfigError
from ad.models.distillation._distillation import MirroredDecoder, OneClassBottleneck
from ad.models._maps import cosine_distance_map, gaussian_blur2d, max_score, upsample_to
from ad.models.base import AnomalyModel, Budget, OptimizerSpec, Prediction


class ReverseDistillation(AnomalyModel):
    # Paper: 200 epochs, batch 16, Adam(lr 0.005, betas (0.5, 0.999)), 256 px, Gaussian σ = 4 on the map.
    default_max_epochs = 200
    default_batch_size = 16

    def __init__(
        self,
        backbone: "BackboneConfig | str | dict" = "tf_efficientnet_lite0",
        layers: Sequence[int] = (1, 2, 3),
        embedding_channels: int | None = None,
        oce_blocks: int = 1,
        decoder_blocks: "int | Sequence[int]" = (3, 4, 6),
        sigma: float = 4.0,
        lr: float = 0.005,
        betas: Sequence[float] = (0.5, 0.999),
    ) -> None:
        super().__init__()
        cfg = as_backbone_config(backbone)
        self.backbone_name = cfg.name
        self.teacher = FeatureExtractor(cfg, layers, frozen=True)
        channels, reductions = self.teacher.channels, self.teacher.reductions
        n = len(channels)
        if isinstance(decoder_blocks, int):
            decoder_blocks = [decoder_blocks] * n
        decoder_blocks = [int(b) for b in decoder_blocks]
        if len(decoder_blocks) != n:
            raise ConfigError(
                f"model.decoder_blocks has {len(decoder_blocks)} entries but model.layers has {n}; "
                "give one block count per layer (deepest first) or a single int"
            )
        # The paper's code is one stage deeper than the deepest used scale (WRN-50: 1024 -> 2048 channels).
        emb = int(embedding_channels or 2 * channels[-1])
        self.bottleneck = OneClassBottleneck(channels, reductions, emb, oce_blocks)
        self.decoder = MirroredDecoder(channels, reductions, emb, decoder_blocks, out_relu=self._teacher_is_nonnegative())
        self.sigma = float(sigma)
        self.lr, self.betas = float(lr), (float(betas[0]), float(betas[1]))

    @torch.no_grad()
    def _teacher_is_nonnegative(self) -> bool:
        """Whether the encoder's features are post-ReLU (ResNet) or signed (EfficientNet's linear stage ends):
        probed on a fixed random image, since a signed map is negative somewhere on any input."""
        probe = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        return all(bool((f >= 0).all()) for f in self.teacher(probe))

    def configure_optimizers(self, budget: Budget) -> OptimizerSpec:
        params = list(self.bottleneck.parameters()) + list(self.decoder.parameters())
        return OptimizerSpec(optimizer=torch.optim.Adam(params, lr=self.lr, betas=self.betas))

    def _distances(self, images: torch.Tensor) -> List[torch.Tensor]:
        teacher = self.teacher(images)
        student = self.decoder(self.bottleneck(teacher))
        # Decoder resolutions are exact powers of two; odd input sizes are aligned on the teacher's grid.
        return [cosine_distance_map(t, upsample_to(s, t.shape[-2:])) for t, s in zip(teacher, student)]

    def _loss(self, images: torch.Tensor) -> torch.Tensor:
        return sum(d.mean() for d in self._distances(images))

    def training_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"])

    @torch.no_grad()
    def validation_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"])

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        size = images.shape[-2:]
        maps = sum(upsample_to(d, size) for d in self._distances(images))
        maps = gaussian_blur2d(maps, self.sigma)
        return Prediction(scores=max_score(maps), maps=maps)
