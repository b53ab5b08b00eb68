"""DRAEM (Zavrtanik, Kristan, Skočaj, "DRAEM – A discriminatively trained reconstruction embedding for surface
anomaly detection", ICCV 2021).

A reconstructive subnetwork (encoder-decoder without skips) learns to restore normal appearance from images
with synthetic anomalies; a discriminative U-Net sees the input concatenated with its reconstruction and
segments the anomaly. Training needs only normal images: anomalies are Perlin-noise masks filled with
augmented texture (`ad.models._anomaly_synthesis`), from `anomaly_source_dir` (e.g. DTD images) or, by default
offline, procedurally generated textures.

Loss = L2 + SSIM (reconstruction) + focal loss (segmentation). Adam lr 1e-4, x0.2 at 80% and 90% of the
epochs, 700 epochs of batch 8 (paper). Pixel map = softmax anomaly channel; image score = max of the map
mean-filtered with a 21x21 window (paper).
"""
from __future__ import annotations

import zlib
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ad.models._anomaly_synthesis import AnomalySynthesizer
from ad.models._maps import resize_input, upsample_to
from ad.models.reconstruction._ssim import ssim_loss
from ad.models.reconstruction._unet import UNet
from ad.models.base import AnomalyModel, Budget, OptimizerSpec, Prediction


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) of 2-class logits [B,2,H,W] against a {0,1} mask [B,1,H,W]: down-weights
    the easy, overwhelmingly normal pixels so the small anomalous regions drive the gradient."""
    logp = F.log_softmax(logits, dim=1)
    logpt = torch.where(target > 0.5, logp[:, 1:2], logp[:, 0:1])
    pt = logpt.exp().clamp(eps, 1.0)
    return (-((1 - pt) ** gamma) * logpt).mean()


class DRAEM(AnomalyModel):
    default_max_epochs = 700
    default_batch_size = 8

    def __init__(
        self, recon_base_width: int = 128, disc_base_width: int = 64, anomaly_source_dir: Optional[str] = None,
        anomaly_prob: float = 0.5, beta_max: float = 0.8, rotate_normal_prob: float = 0.3,
        perlin_min_scale_exp: int = 0, perlin_max_scale_exp: int = 6, lr: float = 1e-4,
        lr_milestones: Sequence[float] = (0.8, 0.9), lr_gamma: float = 0.2, score_window: int = 21,
        focal_gamma: float = 2.0, seed: int = 0, image_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        b = int(recon_base_width)
        # paper: 4 poolings with widths b,2b,4b,8b,8b and no skips (the bottleneck forces reconstruction)
        self.reconstructive = UNet(3, 3, [b, 2 * b, 4 * b, 8 * b, 8 * b], skip_levels=())
        d = int(disc_base_width)
        self.discriminative = UNet(6, 2, [d, 2 * d, 4 * d, 8 * d, 8 * d, 8 * d], skip_levels=range(5))
        self.synthesizer = AnomalySynthesizer(
            anomaly_source_dir, anomaly_prob=anomaly_prob, beta_max=beta_max, rotate_normal_prob=rotate_normal_prob,
            perlin_min_scale_exp=perlin_min_scale_exp, perlin_max_scale_exp=perlin_max_scale_exp,
        )
        self.lr, self.lr_milestones, self.lr_gamma = float(lr), tuple(float(m) for m in lr_milestones), float(lr_gamma)
        self.score_window = int(score_window)
        self.focal_gamma = float(focal_gamma)
        self.seed = int(seed)
        self.image_size = int(image_size) if image_size else None

    def configure_optimizers(self, budget: Budget) -> OptimizerSpec:
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        # Milestones are fractions of the budget the trainer will run: in epochs when an epoch budget decides
        # (paper), in steps when only a step budget does.
        interval = "epoch" if budget.max_epochs is not None and (budget.max_steps is None
                                                                 or budget.total_steps == budget.max_epochs * budget.steps_per_epoch) else "step"
        total = budget.max_epochs if interval == "epoch" else budget.total_steps
        milestones = sorted({max(1, int(round(m * total))) for m in self.lr_milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=self.lr_gamma)
        return OptimizerSpec(opt, sched, interval)

    def forward(self, images: torch.Tensor):
        recon = self.reconstructive(images)
        return recon, self.discriminative(torch.cat([images, recon], dim=1))

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        return resize_input(images, self.image_size)

    def _loss(self, batch: Dict[str, Any], rng: np.random.Generator) -> torch.Tensor:
        clean, augmented, masks = self.synthesizer(self._prep(batch["image"]), rng)
        recon, logits = self(augmented)
        return F.mse_loss(recon, clean) + ssim_loss(recon, clean) + focal_loss(logits, masks, self.focal_gamma)

    def training_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        # drawn from torch's global RNG, which the trainer seeds and checkpoints: a resumed run synthesises
        # exactly the anomalies an uninterrupted one would
        return self._loss(batch, np.random.default_rng(int(torch.randint(0, 2**62, (1,)))))

    def validation_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        # the same synthetic anomalies every epoch (seeded by the image paths), so the loss is comparable
        key = "|".join(batch.get("path", [])) or str(tuple(batch["image"].shape))
        with torch.no_grad():
            return self._loss(batch, np.random.default_rng([self.seed, zlib.crc32(key.encode())]))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        _, logits = self(self._prep(images))
        maps = logits.softmax(dim=1)[:, 1:]
        k = self.score_window
        smoothed = F.avg_pool2d(maps, k, stride=1, padding=k // 2, count_include_pad=False)
        return Prediction(scores=smoothed.flatten(1).max(dim=1).values, maps=upsample_to(maps, images.shape[-2:])[:, 0])
