"""EfficientAD (Batzner, Heckler, König, WACV 2024): a frozen PDN teacher, a student PDN with twice the output
channels and an autoencoder.

- Student half 1 regresses the (channel-normalised) teacher with the hard-feature loss: only the squared
  differences above their 0.999-quantile count, so it cannot spend capacity on easy normal patches.
- The autoencoder reconstructs the teacher on augmented images (logical constraints, global context); student
  half 2 learns the autoencoder's output, so it inherits its systematic errors on normals but not on anomalies.
- Maps: `(T - S1)^2` (structural) and `(A - S2)^2` (logical), each mapped with its 0.9 / 0.995 quantiles on the
  *validation normals* (`on_fit_end`) so both sit at 0 / 0.1, averaged. Image score = max of the map.
- Adam lr 1e-4, weight decay 1e-5, batch 1, 70000 steps (`default_max_steps`; `trainer.max_steps` overrides),
  LR x0.1 at 95% of the steps the trainer will run (`budget.total_steps`).
- Teacher: `teacher_weights=auto` (the config default) uses the cached teacher of the `teacher_distill` recipe under
  `teacher_dir` (`paths.backbone_dir`), distilling it first from the pip-shipped EfficientNet-Lite0 when absent
  (`ad.models.distillation._pdn.TeacherRecipe`, a few CPU minutes once); or a PDN file (`scripts/distill_pdn_teacher.py`);
  or `random` (weak, for tests/smoke runs only). `notes` says which teacher a run used.
- The ImageNet penalty (student output kept small on unrelated images) is used when `imagenet_dir` names a
  folder of images; off by default offline.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from ad.errors import ConfigError
from ad.models._maps import resize_input
from ad.models.distillation._pdn import (IMAGENET_MEAN, IMAGENET_STD, MAP_PAD, SIZES, EfficientADAutoencoder, TeacherRecipe,
                            cached_teacher, load_teacher, pdn, pdn_output_size)
from ad.models.base import AnomalyModel, Budget, OptimizerSpec, Prediction

log = logging.getLogger(__name__)


class EfficientAD(AnomalyModel):
    default_max_steps = 70000  # the trainer then runs as many epochs as these steps need
    default_batch_size = 1

    def __init__(
        self, model_size: str = "s", teacher_weights: Optional[str] = None, image_size: int = 256,
        out_channels: int = 384, lr: float = 1e-4, weight_decay: float = 1e-5, lr_drop_at: float = 0.95,
        hard_quantile: float = 0.999, map_quantiles: tuple = (0.9, 0.995), imagenet_dir: Optional[str] = None,
        teacher_stats_images: int = 256, seed: int = 0, teacher_dir: Optional[str] = "backbones",
        teacher_distill: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        if model_size not in SIZES:
            raise ConfigError(f"model.model_size={model_size!r} must be one of {', '.join(SIZES)}")
        #: lines for the run's results.json `notes` (which teacher this run used, whether it was distilled now)
        self.notes: List[str] = []
        self.teacher, self.teacher_meta = self._build_teacher(
            teacher_weights, model_size, image_size, out_channels, seed, teacher_dir, teacher_distill)
        distilled_at = self.teacher_meta.get("image_size")
        if self.teacher_meta.get("source") != "random" and distilled_at and int(distilled_at) != int(image_size):
            log.warning("EfficientAD: teacher %s was distilled at %s px but model.image_size=%s: patches are "
                        "seen at another scale than the teacher learned", teacher_weights, distilled_at, image_size)
        self.teacher.eval().requires_grad_(False)
        c = self.teacher_meta.get("out_channels", out_channels)
        self.channels, self.image_size, self.model_size = int(c), int(image_size), model_size
        self.student = pdn(model_size, 2 * self.channels)
        self.autoencoder = EfficientADAutoencoder(self.channels, self.image_size)
        self.lr, self.weight_decay, self.lr_drop_at = float(lr), float(weight_decay), float(lr_drop_at)
        self.hard_quantile = float(hard_quantile)
        self.map_quantiles = tuple(float(q) for q in map_quantiles)
        self.teacher_stats_images = int(teacher_stats_images)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("teacher_mean", torch.zeros(1, c, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, c, 1, 1))
        self.register_buffer("teacher_stats_ready", torch.tensor(False))
        # identity mapping until fitted: 0.1 * (m - 0) / (0.1 - 0) = m
        self.register_buffer("map_st_q", torch.tensor([0.0, 0.1]))
        self.register_buffer("map_ae_q", torch.tensor([0.0, 0.1]))
        # running sums for the lazy teacher statistics, checkpointed so a resumed run continues them
        self.register_buffer("teacher_sum", torch.zeros(c, dtype=torch.float64))
        self.register_buffer("teacher_sqsum", torch.zeros(c, dtype=torch.float64))
        self.register_buffer("teacher_count", torch.zeros((), dtype=torch.float64))
        self._penalty_files = self._list_penalty(imagenet_dir) if imagenet_dir else None

    def _build_teacher(self, weights, model_size, image_size, out_channels, seed, teacher_dir, distill):
        if weights is None or str(weights) == "":
            raise ConfigError("model.teacher_weights is not set; use auto (distilled once from the pip-shipped "
                              "EfficientNet-Lite0 and cached in teacher_dir), a PDN file from "
                              "scripts/distill_pdn_teacher.py, or random (weak smoke-test teacher)")
        if str(weights) == "random":
            with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
                torch.manual_seed(seed)
                self.notes.append("EfficientAD teacher: random init (teacher_weights=random; smoke tests only)")
                return pdn(model_size, out_channels), {"source": "random"}
        if str(weights) == "auto":
            if not teacher_dir:
                raise ConfigError("model.teacher_dir is not set; teacher_weights=auto caches its teacher there "
                                  "(default: paths.backbone_dir)")
            recipe = TeacherRecipe.from_config(model_size, image_size, distill)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            weights, seconds = cached_teacher(recipe, teacher_dir, weights_dir=teacher_dir, device=device)
            when = f"distilled by this run in {seconds:.0f} s" if seconds is not None else "cached"
            self.notes.append(f"EfficientAD teacher: {recipe.describe()} ({when}: {weights})")
        teacher, meta = load_teacher(weights, model_size)
        if not self.notes:
            self.notes.append(f"EfficientAD teacher: {weights} ({meta.get('source', 'bare state dict')})")
        return teacher, meta

    @staticmethod
    def _list_penalty(folder: str) -> List[Path]:
        from ad.models._anomaly_synthesis import list_source_images

        try:
            return list_source_images(folder)
        except ConfigError:
            raise ConfigError(f"model.imagenet_dir={folder} is not a folder with images; point it at ImageNet-like "
                              "images for the penalty term or set model.imagenet_dir=null") from None

    @staticmethod
    def config_for_state_dict(cfg: Dict[str, Any], state_dict: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """Model config to rebuild a fitted EfficientAD from its state dict alone: the teacher's weights are in
        the state dict, so the teacher file need not exist on the predicting machine."""
        last = [k for k in state_dict if k.startswith("teacher.") and k.endswith(".weight")][-1]
        return {**cfg, "teacher_weights": "random", "out_channels": int(state_dict[last].shape[0])}

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def configure_optimizers(self, budget: Budget) -> OptimizerSpec:
        params = list(self.student.parameters()) + list(self.autoencoder.parameters())
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        steps = budget.total_steps or self.default_max_steps
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, int(self.lr_drop_at * steps)), gamma=0.1)
        return OptimizerSpec(opt, sched, "step")

    # --- teacher channel statistics --------------------------------------------------------------------------
    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        return resize_input(images, self.image_size)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @torch.no_grad()
    def _accumulate(self, images: torch.Tensor) -> None:
        t = self.teacher(self._norm(self._prep(images))).double()
        self.teacher_sum += t.sum(dim=(0, 2, 3))
        self.teacher_sqsum += t.pow(2).sum(dim=(0, 2, 3))
        self.teacher_count += t.shape[0] * t.shape[2] * t.shape[3]
        s, ss, n = self.teacher_sum, self.teacher_sqsum, self.teacher_count
        mean = s / n
        self.teacher_mean.copy_(mean.view_as(self.teacher_mean))
        self.teacher_std.copy_((ss / n - mean**2).clamp_min(1e-12).sqrt().view_as(self.teacher_std))

    def on_fit_start(self, train_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        """Teacher channel mean/std over the training images (paper). With a loader (the trainer passes one):
        one pass now. Without: accumulated over the first `teacher_stats_images` training images as they
        arrive, the running estimate normalising meanwhile."""
        if bool(self.teacher_stats_ready):
            return  # already fitted (a loaded model)
        for buf in (self.teacher_sum, self.teacher_sqsum, self.teacher_count):
            buf.zero_()
        if train_loader is not None:
            for batch in train_loader:
                self._accumulate(batch["image"].to(self.teacher_mean.device))
            self.teacher_stats_ready.fill_(True)

    # --- losses ----------------------------------------------------------------------------------------------
    def _teacher(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (self.teacher(x) - self.teacher_mean) / self.teacher_std

    def _hard_loss(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        d = (t - s).pow(2).flatten()
        k = max(1, int(np.ceil(self.hard_quantile * d.numel())))
        q = d.detach().kthvalue(k).values
        return d[d >= q].mean()

    @staticmethod
    def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """One of brightness / contrast / saturation, factor in [0.8, 1.2] (the paper's AE augmentation)."""
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
        return torch.stack([ops[int(rng.integers(3))](im, float(rng.uniform(0.8, 1.2))) for im in x]).clamp(0, 1)

    def _penalty_batch(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        from ad.io import load_image

        out = []
        for _ in range(n):
            im = load_image(self._penalty_files[int(rng.integers(len(self._penalty_files)))])
            s = self.image_size
            x = torch.from_numpy(np.asarray(im.resize((2 * s, 2 * s)), dtype=np.float32) / 255.0).permute(2, 0, 1)
            if rng.random() < 0.3:
                x = TF.rgb_to_grayscale(x, num_output_channels=3)
            out.append(TF.center_crop(x, [s, s]))
        return torch.stack(out).to(self.teacher_mean.device)

    def _loss(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        x = self._prep(images)
        c = self.channels
        # torch's global RNG is seeded and checkpointed by the trainer: resumed runs augment identically
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)))) if augment else None
        loss = self._hard_loss(self._teacher(self._norm(x)), self.student(self._norm(x))[:, :c])
        if self._penalty_files is not None and augment:
            loss = loss + self.student(self._norm(self._penalty_batch(x.shape[0], rng)))[:, :c].pow(2).mean()
        xa = self._norm(self._augment(x, rng) if augment else x)
        ae = self.autoencoder(xa)
        loss_ae = (self._teacher(xa) - ae).pow(2).mean()
        loss_stae = (ae - self.student(xa)[:, c:]).pow(2).mean()
        return loss + loss_ae + loss_stae

    def training_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        if not bool(self.teacher_stats_ready):
            self._accumulate(batch["image"])
            if self.teacher_count >= self.teacher_stats_images * pdn_output_size(self.image_size) ** 2:
                self.teacher_stats_ready.fill_(True)
        return self._loss(batch["image"], augment=True)

    def validation_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return self._loss(batch["image"], augment=False)

    # --- inference -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def raw_maps(self, images: torch.Tensor):
        """Unnormalised structural and logical maps [B,h,w] at the PDN output resolution."""
        x = self._norm(self._prep(images))
        c = self.channels
        s = self.student(x)
        map_st = (self._teacher(x) - s[:, :c]).pow(2).mean(dim=1)
        map_ae = (self.autoencoder(x) - s[:, c:]).pow(2).mean(dim=1)
        return map_st, map_ae

    def on_fit_end(self, val_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        if not bool(self.teacher_stats_ready) and self.teacher_count > 0:
            self.teacher_stats_ready.fill_(True)  # fewer training images than teacher_stats_images
        was_training = self.training
        self.eval()
        st, ae = [], []
        for batch in val_loader or []:
            a, b = self.raw_maps(batch["image"].to(self.teacher_mean.device))
            st.append(a.flatten().cpu())
            ae.append(b.flatten().cpu())
        self.train(was_training)
        if not st:
            log.warning("EfficientAD: no validation normals, maps stay unnormalised (set dataset.val_fraction > 0)")
            return
        for buf, vals in ((self.map_st_q, st), (self.map_ae_q, ae)):
            buf.copy_(torch.from_numpy(np.quantile(torch.cat(vals).double().numpy(), self.map_quantiles)).to(buf))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        map_st, map_ae = self.raw_maps(images)
        qs, qa = self.map_st_q, self.map_ae_q
        m = 0.5 * 0.1 * (map_st - qs[0]) / (qs[1] - qs[0]) + 0.5 * 0.1 * (map_ae - qa[0]) / (qa[1] - qa[0])
        m = F.pad(m[:, None], (MAP_PAD,) * 4)
        maps = F.interpolate(m, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return Prediction(scores=maps.flatten(1).max(dim=1).values, maps=maps)
