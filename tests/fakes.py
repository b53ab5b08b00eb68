"""Tiny models and data for engine tests (not registered: they never appear as config options)."""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import torch
from PIL import Image
from torch import nn

from ad.data import AnomalyDataModule, Sample
from ad.models import AnomalyModel, OptimizerSpec, Prediction


def write_fake_layout(root: Path, n_train: int = 12, n_good: int = 4, n_bad: int = 4, size: int = 32, seed: int = 0) -> Path:
    """Flat noise textures; anomalies have a bright square whose mask is written too."""
    rng = np.random.default_rng(seed)
    for sub in ("train", "test_good", "test_bad", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    def texture():
        return (0.4 + 0.1 * rng.standard_normal((size, size, 3))).clip(0, 1)

    for i in range(n_train):
        Image.fromarray((texture() * 255).astype(np.uint8)).save(root / "train" / f"{i:03d}.png")
    for i in range(n_good):
        Image.fromarray((texture() * 255).astype(np.uint8)).save(root / "test_good" / f"{i:03d}.png")
    for i in range(n_bad):
        img, mask = texture(), np.zeros((size, size), np.uint8)
        y, x = rng.integers(2, size - 10, 2)
        img[y:y + 8, x:x + 8] = 1.0
        mask[y:y + 8, x:x + 8] = 255
        Image.fromarray((img * 255).astype(np.uint8)).save(root / "test_bad" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


class FakeData(AnomalyDataModule):
    name = "fake"

    def list_samples(self) -> List[Sample]:
        r = self.root
        out = [Sample(str(p), 0, "good", None, "train") for p in sorted((r / "train").glob("*.png"))]
        out += [Sample(str(p), 0, "good", None, "test") for p in sorted((r / "test_good").glob("*.png"))]
        out += [Sample(str(p), 1, "square", str(r / "masks" / p.name), "test") for p in sorted((r / "test_bad").glob("*.png"))]
        return out


class TinyAE(AnomalyModel):
    """A small convolutional autoencoder; dropout exercises the RNG state across resume."""

    default_max_epochs = 3

    def __init__(self, lr: float = 1e-2, width: int = 8) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(), nn.Dropout(0.1),
            nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1), nn.Sigmoid(),
        )

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        return OptimizerSpec(opt, torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.9), "epoch")

    def training_step(self, batch):
        x = batch["image"]
        return ((self.net(x) - x) ** 2).mean()

    def validation_step(self, batch):
        return self.training_step(batch)

    @torch.no_grad()
    def predict(self, images):
        err = ((self.net(images) - images) ** 2).mean(1)
        return Prediction(err.flatten(1).amax(1), err)


class TinyMemory(AnomalyModel):
    """Per-pixel mean/std of train images (a memory model: no optimizer); state in buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("total", torch.zeros(0))
        self.register_buffer("total_sq", torch.zeros(0))
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("std", torch.zeros(0))
        self.fit_end_calls = 0

    def on_fit_start(self, train_loader=None):
        self.total = torch.zeros(0)
        self.count.zero_()

    def training_step(self, batch):
        x = batch["image"]
        if self.total.numel() == 0:
            self.total, self.total_sq = torch.zeros_like(x[0]), torch.zeros_like(x[0])
        self.total += x.sum(0)
        self.total_sq += (x ** 2).sum(0)
        self.count += len(x)
        return None

    def on_fit_end(self, val_loader=None):
        self.fit_end_calls += 1
        self.mean = self.total / self.count
        self.std = (self.total_sq / self.count - self.mean ** 2).clamp_min(1e-6).sqrt()

    @torch.no_grad()
    def predict(self, images):
        z = ((images - self.mean) / self.std).abs().mean(1)
        return Prediction(z.flatten(1).amax(1), z)
