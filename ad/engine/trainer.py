"""One pure-PyTorch loop for every model.

The trainer reads what a model declares (optimizer or none, epoch/step budget, batch size) and never asks
which model it is running. Memory models (no optimizer) get `default_max_epochs` feature-collection passes
under no_grad; trained models get the usual loop with validation loss, early stopping, checkpoints and resume.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ad.errors import ConfigError
from ad.engine.scoring import PredictionSet, score_loader
from ad.models.base import AnomalyModel, Budget, OptimizerSpec

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def progress_enabled(setting: "str | bool") -> bool:
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        return str(setting).lower() in ("1", "true", "yes", "on")
    return sys.stderr.isatty() and not os.environ.get("CI")


@dataclass
class EarlyStopping:
    """Stop when the validation loss has not improved by `min_delta` for `patience` epochs."""

    enabled: bool = True
    patience: int = 5
    min_delta: float = 0.0
    best: float = math.inf
    bad_epochs: int = 0

    def update(self, value: float) -> tuple[bool, bool]:
        """Returns (improved, should_stop)."""
        if value < self.best - self.min_delta:
            self.best, self.bad_epochs = value, 0
            return True, False
        self.bad_epochs += 1
        return False, self.enabled and self.bad_epochs >= self.patience

    def state_dict(self) -> Dict[str, float]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])


@dataclass
class EpochRecord:
    """One row of a run's `history.csv`."""

    epoch: int
    step: int
    train_loss: float
    val_loss: Optional[float]
    lr: float
    seconds: float  # wall time of this epoch (training + validation loss)


@dataclass
class FitResult:
    epochs: int = 0
    steps: int = 0
    stopped_early: bool = False
    resumed_from_epoch: Optional[int] = None
    best_val_loss: Optional[float] = None
    train_losses: List[float] = field(default_factory=list)  # per epoch
    val_losses: List[float] = field(default_factory=list)  # per epoch
    history: List[EpochRecord] = field(default_factory=list)
    budget: Optional[Budget] = None
    fit_s: float = 0.0


class Trainer:
    def __init__(
        self,
        max_epochs: Optional[int] = None,
        max_steps: Optional[int] = None,
        batch_size: Optional[int] = None,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        gradient_clip_val: Optional[float] = None,
        precision: str = "auto",
        device: str = "auto",
        num_threads: Optional[int] = None,
        deterministic: bool = False,
        early_stopping: Optional[Dict[str, Any]] = None,
        checkpoint_every_n_epochs: int = 1,
        resume: bool = True,
        limit_train: Optional[int] = None,
        limit_val: Optional[int] = None,
        limit_test: Optional[int] = None,
        log_every_n_steps: int = 10,
        progress_bar: "str | bool" = "auto",
        num_visualizations: int = 8,
        seed: int = 0,
        callbacks: Sequence[Any] = (),
    ) -> None:
        # None = the model's declared default (one precedence rule: what is set here wins).
        self.max_epochs = _positive_int("trainer.max_epochs", max_epochs, optional=True)
        self.max_steps = _positive_int("trainer.max_steps", max_steps, optional=True)
        self.batch_size = _positive_int("trainer.batch_size", batch_size, optional=True)
        self.eval_batch_size = _positive_int("trainer.eval_batch_size", eval_batch_size)
        self.num_workers = _non_negative_int("trainer.num_workers", num_workers)
        self.gradient_clip_val = gradient_clip_val
        self.device = resolve_device(device)
        self.use_amp = precision == "amp" or (precision == "auto" and self.device.type == "cuda")
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.deterministic = deterministic
        self.early_stopping_cfg = dict(early_stopping or {"enabled": False})
        self.checkpoint_every_n_epochs = max(1, int(checkpoint_every_n_epochs))
        self.resume = resume
        self.limit_train, self.limit_val, self.limit_test = limit_train, limit_val, limit_test
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self.progress = progress_enabled(progress_bar)
        self.num_visualizations = int(num_visualizations)
        self.seed = int(seed)
        self.callbacks = list(callbacks)

    # ----------------------------------------------------------------------------------------------------
    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(*args)

    def _to_device(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def val_loader(self, data):
        return data.dataloader("val", self.eval_batch_size, limit=self.limit_val, num_workers=self.num_workers)

    def budget(self, model: AnomalyModel, n_train: int) -> Budget:
        """The budget `model` gets on `n_train` training images. A trainer value that is set wins, else the
        model's declaration. A step budget without an epoch budget runs as many epochs as the steps need."""
        batch_size = self.batch_size if self.batch_size is not None else int(model.default_batch_size)
        max_steps = self.max_steps if self.max_steps is not None else model.default_max_steps
        if self.max_epochs is not None:
            max_epochs: Optional[int] = self.max_epochs
        else:
            max_epochs = None if max_steps is not None else int(model.default_max_epochs)
        # The train loader drops the last partial batch only when there is more than one batch.
        steps_per_epoch = n_train // batch_size if n_train > batch_size else int(n_train > 0)
        return Budget(max_epochs=max_epochs, max_steps=max_steps, batch_size=batch_size, steps_per_epoch=steps_per_epoch)

    def fit(self, model: AnomalyModel, data, run_dir: "str | Path | None" = None, logger: Any = None) -> FitResult:
        """Fit `model` on the train normals of `data`; validation normals drive early stopping and
        `on_fit_end`. With `run_dir`, trained models checkpoint to `<run_dir>/checkpoints/` and resume."""
        t0 = time.perf_counter()
        model.to(self.device)
        budget = self.budget(model, len(data.dataset("train", self.limit_train)))
        # The model lays out its LR schedule (drops at 95 %, milestones) over the budget it is told.
        spec: Optional[OptimizerSpec] = model.configure_optimizers(budget)
        trains = spec is not None
        if trains:
            max_epochs = budget.max_epochs if budget.max_epochs is not None else 10**9  # the step budget decides
            max_steps = budget.max_steps
        else:  # statistics passes: epochs only
            max_epochs = self.max_epochs if self.max_epochs is not None else int(model.default_max_epochs)
            max_steps = None
            budget = Budget(max_epochs=max_epochs, max_steps=None, batch_size=budget.batch_size, steps_per_epoch=budget.steps_per_epoch)
        batch_size = budget.batch_size
        ckpt_dir = Path(run_dir) / "checkpoints" if (run_dir is not None and trains) else None
        stopper = EarlyStopping(**{k: v for k, v in self.early_stopping_cfg.items() if k in ("enabled", "patience", "min_delta")})  # noqa: E501
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and trains)
        result = FitResult(budget=budget)
        start_epoch, step = 0, 0
        restore_best = bool(self.early_stopping_cfg.get("restore_best", True))

        resuming = ckpt_dir is not None and self.resume and (ckpt_dir / "last.ckpt").is_file()
        if not resuming:
            model.on_fit_start(data.dataloader("train", self.eval_batch_size, limit=self.limit_train,
                                               num_workers=self.num_workers))
        if resuming:
            state = torch.load(ckpt_dir / "last.ckpt", map_location=self.device, weights_only=False)
            model.load_state_dict(state["model"])
            spec.optimizer.load_state_dict(state["optimizer"])
            if spec.scheduler is not None and state.get("scheduler") is not None:
                spec.scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            stopper.load_state_dict(state["early_stopping"])
            _set_rng_state(state["rng"])
            start_epoch, step = state["epoch"] + 1, state["step"]
            result.train_losses, result.val_losses = state["train_losses"], state["val_losses"]
            result.history = [EpochRecord(**h) for h in state.get("history", [])]
            result.resumed_from_epoch = state["epoch"]
            log.info("resumed from %s (epoch %d, step %d)", ckpt_dir / "last.ckpt", state["epoch"], step)
            if state.get("finished"):
                max_epochs = start_epoch  # nothing left to train; go straight to on_fit_end

        epochs_done = start_epoch
        for epoch in range(start_epoch, max_epochs):
            if max_steps is not None and step >= max_steps:
                break
            # Data order depends only on (seed, epoch): a resumed run sees the same batches.
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            t_epoch = time.perf_counter()
            loader = data.dataloader(
                "train", batch_size, shuffle=model.shuffle_train, num_workers=self.num_workers,
                limit=self.limit_train, generator=gen, drop_last=trains,
            )
            model.train()
            losses: List[float] = []
            bar = tqdm(loader, desc=f"epoch {epoch}" if trains else "collecting features", disable=not self.progress,
                       leave=False, total=len(loader))
            for batch in bar:
                batch = self._to_device(batch)
                if not trains:
                    with torch.no_grad():
                        model.training_step(batch)
                    continue
                with torch.autocast(self.device.type, enabled=self.use_amp):
                    loss = model.training_step(batch)
                spec.optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if self.gradient_clip_val:
                    scaler.unscale_(spec.optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(self.gradient_clip_val))
                scaler.step(spec.optimizer)
                scaler.update()
                if spec.scheduler is not None and spec.scheduler_interval == "step":
                    spec.scheduler.step()
                step += 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"training loss became {value} at step {step}; lower the learning rate or enable trainer.gradient_clip_val")
                losses.append(value)
                bar.set_postfix(loss=f"{value:.4f}")
                if logger is not None and step % self.log_every_n_steps == 0:
                    logger.scalar("train/loss_step", value, step)
                    logger.scalar("train/lr", spec.optimizer.param_groups[0]["lr"], step)
                self._call("on_train_step_end", self, model, step, value)
                if max_steps is not None and step >= max_steps:
                    break
            if not trains:
                continue
            if spec.scheduler is not None and spec.scheduler_interval == "epoch":
                spec.scheduler.step()
            epochs_done = epoch + 1
            train_loss = float(np.mean(losses)) if losses else float("nan")
            val_loss = self.validation_loss(model, data)
            result.train_losses.append(train_loss)
            result.history.append(EpochRecord(epoch=epoch, step=step, train_loss=train_loss, val_loss=val_loss,
                                              lr=float(spec.optimizer.param_groups[0]["lr"]),
                                              seconds=time.perf_counter() - t_epoch))
            stop = False
            if val_loss is not None:
                result.val_losses.append(val_loss)
                improved, stop = stopper.update(val_loss)
                if improved and ckpt_dir is not None:
                    self._save(ckpt_dir / "best.ckpt", model, spec, scaler, stopper, epoch, step, result)
            if logger is not None:
                logger.scalar("train/loss_epoch", train_loss, epoch)
                if val_loss is not None:
                    logger.scalar("val/loss", val_loss, epoch)
                logger.scalar("train/lr_epoch", spec.optimizer.param_groups[0]["lr"], epoch)
            log.info("epoch %d: train loss %.5f%s", epoch, train_loss, f", val loss {val_loss:.5f}" if val_loss is not None else "")
            self._call("on_epoch_end", self, model, epoch, train_loss, val_loss)
            done = stop or (max_steps is not None and step >= max_steps) or epoch + 1 >= max_epochs
            if ckpt_dir is not None and (done or (epoch + 1) % self.checkpoint_every_n_epochs == 0):
                self._save(ckpt_dir / "last.ckpt", model, spec, scaler, stopper, epoch, step, result, finished=done)
            if stop:
                result.stopped_early = True
                log.info("early stopping at epoch %d: val loss has not improved for %d epochs", epoch, stopper.patience)
                break

        result.epochs = epochs_done if trains else max(0, max_epochs)
        result.steps = step
        result.best_val_loss = stopper.best if math.isfinite(stopper.best) else None
        if trains and restore_best and ckpt_dir is not None and (ckpt_dir / "best.ckpt").is_file():
            # The last epochs after the best one only overfit or drift: score with the best weights.
            model.load_state_dict(torch.load(ckpt_dir / "best.ckpt", map_location=self.device, weights_only=False)["model"])
        model.eval()
        model.on_fit_end(self.val_loader(data))
        result.fit_s = time.perf_counter() - t0
        return result

    @torch.no_grad()
    def validation_loss(self, model: AnomalyModel, data) -> Optional[float]:
        model.eval()
        losses, weights = [], []
        for batch in self.val_loader(data):
            batch = self._to_device(batch)
            with torch.autocast(self.device.type, enabled=self.use_amp):
                loss = model.validation_step(batch)
            if loss is None:
                model.train()
                return None
            losses.append(float(loss))
            weights.append(len(batch["path"]))
        model.train()
        if not losses:
            return None
        return float(np.average(losses, weights=weights))

    def _save(self, path: Path, model, spec, scaler, stopper, epoch, step, result, finished: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "version": CHECKPOINT_VERSION,
            "model": model.state_dict(),
            "optimizer": spec.optimizer.state_dict(),
            "scheduler": spec.scheduler.state_dict() if spec.scheduler is not None else None,
            "scaler": scaler.state_dict(),
            "early_stopping": stopper.state_dict(),
            "rng": _get_rng_state(),
            "epoch": epoch,
            "step": step,
            "finished": finished,
            "train_losses": list(result.train_losses),
            "val_losses": list(result.val_losses),
            "history": [dataclasses.asdict(h) for h in result.history],
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # an interruption never leaves a half-written checkpoint

    def predict(self, model: AnomalyModel, loader, desc: str = "predicting") -> PredictionSet:
        """Score every batch of `loader` through the one prediction path (`ad.engine.scoring`)."""
        return score_loader(model, loader, self.device, self.use_amp, self.progress, desc)


def _get_rng_state() -> Dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
