"""Uninformed Students (Bergmann, Fauser, Sattlegger, Steger, "Uninformed Students: Student-Teacher Anomaly
Detection with Discriminative Latent Embeddings", CVPR 2020).

Per receptive field p (`patch_sizes`, paper 17 / 33 / 65 px): a descriptor teacher T_p (see
`ad.models.distillation._patch_descriptors`) and an ensemble of M (`num_students`, paper 3) randomly initialised students
of the same architecture, each regressing the teacher's descriptors standardised with their per-dimension
mean/std over the training images. For a test patch with ensemble mean μ = mean_m S_m:

    e = ‖μ − (T − t_mean)/t_std‖²        (regression error: students were never taught this patch)
    v = mean_m ‖S_m‖² − ‖μ‖²            (predictive variance: the students disagree off the training data)

Both are normalised with their mean and standard deviation over anomaly-free images, the per-scale score is
ẽ + ṽ, and the multi-scale map is the average over the receptive fields (upsampled to the input). Image
score = the map's maximum.

The teacher. The paper distils each T_p on ImageNet patches from a pretrained ResNet-18 (linear decoder from
the 128-d descriptor to the 512-d pooled output) for 50 000 iterations. Offline, `on_fit_start` distils it
from the `backbone` group's network (default EfficientNet-Lite0, pip-shipped weights): each step draws
`teacher_batch` p×p patches from up to `teacher_images` training images (a uniform reservoir sample, so a
unified multi-category loader is covered evenly) plus a `teacher_texture_fraction` share of procedural textures,
and regresses the backbone's globally pooled stage-`descriptor_layer` features of the patch (resized to
≥ 32 px) with Adam (lr 2e-4, wd 1e-5, paper) and the KD + compactness losses, for `teacher_steps` steps or
`teacher_steps_per_step` × the students' step budget if that is fewer (so short runs stay short). Nothing
is read from `backbones/`; the distilled teachers are part of the state dict, so `model.pt` rebuilds the
model without distilling again, and a resumed run continues with the teachers it checkpointed.

Deviations, and why:
- Teachers distil on the category's own images, `teacher_steps` = 1000 of 32 patches instead of 50 000
  ImageNet steps of 64: the CPU budget. The triplet metric-learning loss is left out (see `_patch_descriptors`).
- Working size `image_size` = 128 (paper 256) and `width` 32 / `out_dim` 64 (paper 128-256 channels,
  d = 128): patches then cover 2× the relative area of the paper's; 4× fewer pixels, ~16× fewer
  multiply-adds per pixel.
- Descriptors on a stride 2 / 4 / 8 grid (one per patch-net output), bilinearly upsampled, instead of the
  paper's dense per-pixel evaluation.
- e / v statistics over the *validation normals* (a held-out part of the anomaly-free training set, the
  images the trainer hands to `on_fit_end`): statistics on the very images the students fitted understate
  the error and variance on unseen normal images.
- Students: Adam lr 1e-4, weight decay 1e-5, 100 epochs (paper); batch 8 (the paper trains on full images
  without stating a batch size).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config
from ad.errors import ConfigError
from ad.models._maps import max_score, resize_input, upsample_to
from ad.models.distillation._patch_descriptors import (ImageBank, PatchNet, distill_teacher, ensemble_error_variance,
                                          iterate_images)
from ad.models.base import AnomalyModel, Budget, OptimizerSpec, Prediction

log = logging.getLogger(__name__)


class UninformedStudents(AnomalyModel):
    default_max_epochs = 100
    default_batch_size = 8

    def __init__(
        self, backbone: "BackboneConfig | str | dict" = "tf_efficientnet_lite0", patch_sizes: Sequence[int] = (17, 33, 65),
        num_students: int = 3, image_size: int = 128, width: int = 32, out_dim: int = 64, descriptor_layer: int = 4,
        teacher_steps: int = 1000, teacher_batch: int = 32, teacher_images: int = 512, teacher_lr: float = 2e-4,
        teacher_compactness: float = 1.0, teacher_texture_fraction: float = 0.25,
        teacher_steps_per_step: Optional[float] = 5.0, lr: float = 1e-4,
        weight_decay: float = 1e-5, seed: int = 0,
    ) -> None:
        super().__init__()
        if num_students < 2:
            raise ConfigError(f"model.num_students={num_students}: the predictive variance needs an ensemble of >= 2 students")
        if not patch_sizes:
            raise ConfigError("model.patch_sizes is empty; use e.g. [17, 33, 65]")
        self.backbone_config = as_backbone_config(backbone)
        self.backbone_name = self.backbone_config.name
        self.patch_sizes = tuple(int(p) for p in patch_sizes)
        self.image_size, self.descriptor_layer = int(image_size), int(descriptor_layer)
        self.teacher_steps, self.teacher_batch, self.teacher_images = int(teacher_steps), int(teacher_batch), int(teacher_images)
        self.teacher_lr, self.teacher_compactness = float(teacher_lr), float(teacher_compactness)
        self.teacher_texture_fraction = float(teacher_texture_fraction)
        self.teacher_steps_per_step = float(teacher_steps_per_step) if teacher_steps_per_step else None
        self._teacher_steps_run = self.teacher_steps  # set from the budget in configure_optimizers
        self.lr, self.weight_decay, self.seed = float(lr), float(weight_decay), int(seed)
        with torch.random.fork_rng(devices=[]):  # seeded init of the teachers without touching the global RNG
            torch.manual_seed(self.seed)
            self.teachers = nn.ModuleList(PatchNet(p, width, out_dim) for p in self.patch_sizes)
        self.teachers.requires_grad_(False)
        self.students = nn.ModuleList(
            nn.ModuleList(PatchNet(p, width, out_dim) for _ in range(int(num_students))) for p in self.patch_sizes)
        k = len(self.patch_sizes)
        self.register_buffer("teacher_ready", torch.tensor(False))
        self.register_buffer("t_mean", torch.zeros(k, out_dim, 1, 1))
        self.register_buffer("t_std", torch.ones(k, out_dim, 1, 1))
        # [scale, (e_mean, e_std, v_mean, v_std)]; identity until fitted
        self.register_buffer("score_stats", torch.tensor([[0.0, 1.0, 0.0, 1.0]] * k))

    def train(self, mode: bool = True):
        super().train(mode)
        self.teachers.eval()
        return self

    def configure_optimizers(self, budget: Budget) -> OptimizerSpec:
        # The teachers' distillation follows the run's size: a smoke run of 2 steps distils 10 steps, not 1000.
        total = budget.total_steps
        if self.teacher_steps_per_step and total:
            self._teacher_steps_run = min(self.teacher_steps, max(1, math.ceil(self.teacher_steps_per_step * total)))
        return OptimizerSpec(torch.optim.Adam(self.students.parameters(), lr=self.lr, weight_decay=self.weight_decay))

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        return resize_input(images, self.image_size)

    # --- teacher --------------------------------------------------------------------------------------------
    def on_fit_start(self, train_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        """Distil the teachers, then their descriptor statistics. Iterates `train_loader` twice (the trainer's
        loader is re-iterable); only the reservoir sample of images is held in memory."""
        if bool(self.teacher_ready):
            return  # a loaded, already fitted model
        device = self.t_mean.device
        bank = ImageBank(self.teacher_images, np.random.default_rng(int(torch.randint(0, 2**62, (1,)))))
        for x in iterate_images(train_loader, device):
            bank.add(self._prep(x))
        if not bank.items:
            raise ConfigError("uninformed_students needs the training images in on_fit_start to distil its teachers")
        if self.teacher_texture_fraction > 0:  # textures as large as the images: patches of every size fit
            bank.add_textures(max(8, len(bank.items) // 4), (self.image_size, self.image_size))
        extractor = FeatureExtractor(self.backbone_config, (self.descriptor_layer,), frozen=True).to(device)
        log.info("uninformed_students: distilling %d teachers from %s (%s), %d steps each", len(self.teachers),
                 self.backbone_name, extractor.weights_source, self._teacher_steps_run)
        for p, teacher in zip(self.patch_sizes, self.teachers):
            with torch.enable_grad():
                teacher.requires_grad_(True)
                losses = distill_teacher(teacher, extractor, bank, self._teacher_steps_run, self.teacher_batch, self.teacher_lr,
                                         compactness=self.teacher_compactness, texture_fraction=self.teacher_texture_fraction)
                teacher.requires_grad_(False)
            if losses:
                log.info("teacher p=%d: distillation loss %.4f -> %.4f", p, np.mean(losses[:20]), np.mean(losses[-20:]))
        self._teacher_statistics(iterate_images(train_loader, device))
        self.teacher_ready.fill_(True)

    @torch.no_grad()
    def _teacher_statistics(self, images: Iterable[torch.Tensor]) -> None:
        """Per-dimension mean / std of each teacher's descriptors over all training images (paper)."""
        k = len(self.teachers)
        s, sq, n = [0.0] * k, [0.0] * k, [0] * k
        for x in images:
            x = self._prep(x)
            for i, teacher in enumerate(self.teachers):
                t = teacher.dense(x).double()
                s[i], sq[i] = s[i] + t.sum((0, 2, 3)), sq[i] + t.pow(2).sum((0, 2, 3))
                n[i] += t.shape[0] * t.shape[2] * t.shape[3]
        for i in range(k):
            mean = s[i] / n[i]
            self.t_mean[i] = mean.view(-1, 1, 1).float()
            self.t_std[i] = (sq[i] / n[i] - mean**2).clamp_min(1e-12).sqrt().view(-1, 1, 1).float()

    # --- students ----------------------------------------------------------------------------------------------
    def _outputs(self, images: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Per scale: (students [M,B,d,h,w], standardised teacher [B,d,h,w])."""
        x = self._prep(images)
        out = []
        for k, (teacher, students) in enumerate(zip(self.teachers, self.students)):
            with torch.no_grad():
                t = (teacher.dense(x) - self.t_mean[k]) / self.t_std[k]
            out.append((torch.stack([s.dense(x) for s in students]), t))
        return out

    def _loss(self, images: torch.Tensor) -> torch.Tensor:
        # each student regresses the teacher: squared error per dimension, mean over positions, summed over
        # students and scales (independent students: the sum's gradient is each student's own loss)
        return sum((s - t.unsqueeze(0)).pow(2).mean(dim=(1, 2, 3, 4)).sum() for s, t in self._outputs(images))

    def training_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"])

    @torch.no_grad()
    def validation_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self._loss(batch["image"])

    @torch.no_grad()
    def raw_maps(self, images: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Per scale the un-normalised (e, v) maps [B,h,w] on that scale's grid."""
        return [ensemble_error_variance(s, t) for s, t in self._outputs(images)]

    def on_fit_end(self, val_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        """e / v mean and std per scale over all positions of the validation normals."""
        sums = torch.zeros(len(self.patch_sizes), 5, dtype=torch.float64)  # n, Σe, Σe², Σv, Σv²
        for x in iterate_images(val_loader, self.t_mean.device):
            for k, (e, v) in enumerate(self.raw_maps(x)):
                e, v = e.double().cpu(), v.double().cpu()
                sums[k] += torch.stack([torch.tensor(float(e.numel()), dtype=torch.float64), e.sum(), e.pow(2).sum(), v.sum(), v.pow(2).sum()])
        if sums[0, 0] == 0:
            log.warning("uninformed_students: no validation normals; e/v maps stay un-normalised")
            return
        n = sums[:, 0]
        e_mean, v_mean = sums[:, 1] / n, sums[:, 3] / n
        e_std = (sums[:, 2] / n - e_mean**2).clamp_min(1e-12).sqrt()
        v_std = (sums[:, 4] / n - v_mean**2).clamp_min(1e-12).sqrt()
        self.score_stats.copy_(torch.stack([e_mean, e_std, v_mean, v_std], dim=1).float())

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        size = images.shape[-2:]
        maps = 0.0
        for (e, v), (em, es, vm, vs) in zip(self.raw_maps(images), self.score_stats):
            maps = maps + upsample_to((e - em) / es + (v - vm) / vs, size)
        maps = maps / len(self.patch_sizes)
        return Prediction(scores=max_score(maps), maps=maps)
