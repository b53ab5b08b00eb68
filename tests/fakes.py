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

    def configure_optimizers(self, budget):
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


# --- tiny in-memory images for model tests ----------------------------------------------------------------------
def textures(n: int, g: torch.Generator, size: int = 64) -> torch.Tensor:
    """Smooth periodic colour textures [n,3,size,size] with random phase and a little noise."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for _ in range(n):
        ph = torch.rand(2, generator=g) * 6.28
        base = 0.5 + 0.2 * torch.sin(xx * 0.5 + ph[0]) * torch.cos(yy * 0.3 + ph[1])
        img = base.expand(3, size, size) * torch.tensor([1.0, 0.8, 0.6]).view(3, 1, 1)
        out.append((img + 0.03 * torch.randn(3, size, size, generator=g)).clamp(0, 1))
    return torch.stack(out)


def with_defects(images: torch.Tensor, g: torch.Generator, colour=(0.1, 0.2, 0.9), side: int = 16):
    """A saturated `colour` square pasted at a random place of each image; returns (images, bool masks)."""
    size = images.shape[-1]
    out, masks = images.clone(), torch.zeros(len(images), size, size, dtype=torch.bool)
    for img, mask in zip(out, masks):
        y, x = torch.randint(0, size - side, (2,), generator=g).tolist()
        img[:, y : y + side, x : x + side] = torch.tensor(colour).view(3, 1, 1)
        mask[y : y + side, x : x + side] = True
    return out, masks


# --- trainer callbacks ----------------------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


class InterruptAt:
    """Trainer callback that raises `Interrupted` after the given global step (a killed run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_step_end(self, trainer, model, step, loss):
        if step == self.step:
            raise Interrupted()


def assert_resume_matches_uninterrupted(fit, tmp_path: Path, size: int) -> None:
    """`fit(run_dir, seed, callbacks)` -> (model, data, trainer, result) runs 2 epochs of 2 steps. A run killed
    after step 3 and resumed from its checkpoint in a "new process" (other seed, so other init and RNG) must
    end bit-identical to an uninterrupted run."""
    reference, data, trainer, res = fit(tmp_path / "ref", 0, ())
    assert res.steps == 4 and len(res.val_losses) == 2 and all(np.isfinite(res.val_losses))
    try:
        fit(tmp_path / "run", 0, [InterruptAt(3)])  # mid second epoch
        raise AssertionError("the interrupting callback did not fire")
    except Interrupted:
        pass
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    resumed, _, _, res2 = fit(tmp_path / "run", 99, ())
    assert res2.resumed_from_epoch == 0 and res2.steps == 4
    ref_state, new_state = reference.state_dict(), resumed.state_dict()
    assert ref_state.keys() == new_state.keys()
    for k in ref_state:
        assert torch.equal(ref_state[k], new_state[k]), k
    preds = trainer.predict(reference, data.dataloader("test", 8))
    assert preds.maps.shape == (len(data.samples("test")), size, size) and np.isfinite(preds.scores).all()


class KillOnSeed:
    """Trainer callback that SIGKILLs its own process at the first step of the job with seed `kill` — what the
    kernel's out-of-memory killer does to a sweep worker."""

    def __init__(self, seed: int, kill: int) -> None:
        self.seed, self.kill = int(seed), int(kill)

    def on_train_step_end(self, trainer, model, step, value) -> None:
        import os
        import signal

        if self.seed == self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
