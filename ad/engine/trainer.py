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
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ad.errors import ConfigError, TrainingDiverged
from ad.values import non_negative_int, number, positive_int
from ad.io import atomic_write
from ad.engine.progress import DEFAULT_INTERVAL_S, EpochClock, hms, track
from ad.engine.scoring import PredictionSet, score_loader
from ad.models.base import AnomalyModel, Budget, OptimizerSpec

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


def set_num_threads(num_threads: Optional[int]) -> None:
    """torch CPU threads of this process (`trainer.num_threads`; None keeps torch's default)."""
    if num_threads:
        torch.set_num_threads(int(num_threads))


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


PRECISIONS = ("auto", "fp32", "amp")
DEVICE_KINDS = ("auto", "cpu", "cuda", "cuda:<n>", "mps")


def checked_device(device: Any) -> torch.device:
    """`trainer.device` as a torch device this machine has, or one ConfigError line naming what is here."""
    try:
        dev = resolve_device(str(device))
    except (RuntimeError, ValueError):
        raise ConfigError(f"trainer.device={device!r} is not a device; use {', '.join(DEVICE_KINDS)}") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"trainer.device={device} but no CUDA GPU is available here; use trainer.device=auto or cpu")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"trainer.device={device} but this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1}); "
                              "use one of those or trainer.device=auto")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"trainer.device={device} but Apple MPS is not available here; use trainer.device=auto or cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"trainer.device={device}: device kind '{dev.type}' is not supported by ad; use "
                          f"{', '.join(DEVICE_KINDS)}")
    return dev


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


@dataclass
class _FitState:
    """What one `fit` of a trained model carries from step to step (and into its checkpoints)."""

    model: AnomalyModel
    spec: OptimizerSpec
    scaler: Any
    stopper: EarlyStopping
    result: FitResult
    ckpt_dir: Optional[Path]
    identity: Optional[Dict[str, Any]]
    logger: Any
    step: int = 0
    clock: Optional[EpochClock] = None  # run-level "epoch k/N, ETA"


class Trainer:
    """The training loop. It takes what the loop needs only; the run's other `trainer.*` settings (test limits,
    visualisations, threads, determinism) are read by the entry point and the pipeline from
    `ad.engine.settings.TrainerSettings`, whose `loop()` gives these keyword arguments."""

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
        early_stopping: Optional[Dict[str, Any]] = None,
        checkpoint_every_n_epochs: int = 1,
        resume: bool = True,
        limit_train: Optional[int] = None,
        limit_val: Optional[int] = None,
        log_every_n_steps: int = 10,
        progress_bar: "str | bool" = "auto",
        progress_interval: float = DEFAULT_INTERVAL_S,
        seed: int = 0,
        callbacks: Sequence[Any] = (),
    ) -> None:
        # None = the model's declared default (one precedence rule: what is set here wins).
        default = "the model's default"
        self.max_epochs = positive_int(max_epochs, "trainer.max_epochs", optional=True, null_means=default)
        self.max_steps = positive_int(max_steps, "trainer.max_steps", optional=True, null_means=default)
        self.batch_size = positive_int(batch_size, "trainer.batch_size", optional=True, null_means=default)
        self.eval_batch_size = positive_int(eval_batch_size, "trainer.eval_batch_size")
        self.num_workers = non_negative_int(num_workers, "trainer.num_workers")
        self.gradient_clip_val = gradient_clip_val
        self.device = checked_device(device)
        if precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision={precision!r} is not one of {', '.join(PRECISIONS)} (amp = float16 "
                              "autocast on CUDA, bfloat16 on CPU; fp32 = full precision); set e.g. trainer.precision=amp")
        self.use_amp = precision == "amp" or (precision == "auto" and self.device.type == "cuda")
        self.early_stopping_cfg = dict(early_stopping or {"enabled": False})
        self.checkpoint_every_n_epochs = positive_int(checkpoint_every_n_epochs, "trainer.checkpoint_every_n_epochs")
        self.resume = resume
        self.limit_train, self.limit_val = (
            positive_int(v, f"trainer.limit_{k}", optional=True, null_means="all")
            for k, v in (("train", limit_train), ("val", limit_val)))
        self.log_every_n_steps = positive_int(log_every_n_steps, "trainer.log_every_n_steps")
        self.progress = progress_enabled(progress_bar)
        self.progress_interval = number(progress_interval, "trainer.progress_interval", float, low=0.0)
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

    def fit(self, model: AnomalyModel, data, run_dir: "str | Path | None" = None, logger: Any = None,
            identity: Optional[Dict[str, Any]] = None) -> FitResult:
        """Fit `model` on the train normals of `data`; validation normals drive early stopping and
        `on_fit_end`. With `run_dir`, trained models checkpoint to `<run_dir>/checkpoints/` and resume —
        only a checkpoint whose `identity` (the experiment's configuration, see `ad.engine.settings`) equals
        this run's; any other is refused with a one-line error rather than reused under a wrong label."""
        t0 = time.perf_counter()
        model.to(self.device)
        budget = self.budget(model, len(data.dataset("train", self.limit_train)))
        # The model lays out its LR schedule (drops at 95 %, milestones) over the budget it is told.
        spec: Optional[OptimizerSpec] = model.configure_optimizers(budget)
        if spec is None:  # statistics passes (memory models): epochs only, no checkpoints
            return self._collect(model, data, budget, t0)
        ckpt_dir = Path(run_dir) / "checkpoints" if run_dir is not None else None
        stopper = EarlyStopping(**{k: v for k, v in self.early_stopping_cfg.items() if k in ("enabled", "patience", "min_delta")})  # noqa: E501
        # Loss scaling is for float16 on CUDA; the CPU's bfloat16 autocast has float32's range and needs none.
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.device.type == "cuda")
        run = _FitState(model, spec, scaler, stopper, FitResult(budget=budget), ckpt_dir, identity, logger)
        max_epochs = budget.max_epochs if budget.max_epochs is not None else 10**9  # else the step budget decides
        start_epoch = 0
        if ckpt_dir is not None and self.resume and (ckpt_dir / "last.ckpt").is_file():
            start_epoch, finished = self._resume(run, ckpt_dir / "last.ckpt")
            max_epochs = start_epoch if finished else max_epochs  # finished: straight to on_fit_end
        else:
            model.on_fit_start(data.dataloader("train", self.eval_batch_size, limit=self.limit_train,
                                               num_workers=self.num_workers))
        run.result.epochs = start_epoch
        planned = budget.max_epochs if budget.max_epochs is not None else (
            -(-budget.max_steps // max(1, budget.steps_per_epoch)) if budget.max_steps else None)
        run.clock = EpochClock(planned, start_epoch, early_stopping=stopper.enabled)
        for epoch in range(start_epoch, max_epochs):
            if budget.max_steps is not None and run.step >= budget.max_steps:
                break
            t_epoch = time.perf_counter()
            losses = self._train_epoch(run, data, epoch)
            run.result.epochs = epoch + 1
            if self._end_epoch(run, data, epoch, losses, time.perf_counter() - t_epoch, max_epochs):
                break
        return self._finish(run, data, t0)

    def _collect(self, model: AnomalyModel, data, budget: Budget, t0: float) -> FitResult:
        """Memory/statistics models: `max_epochs` passes of `training_step` under no_grad, then `on_fit_end`."""
        epochs = self.max_epochs if self.max_epochs is not None else int(model.default_max_epochs)
        budget = Budget(max_epochs=epochs, max_steps=None, batch_size=budget.batch_size, steps_per_epoch=budget.steps_per_epoch)
        model.on_fit_start(data.dataloader("train", self.eval_batch_size, limit=self.limit_train, num_workers=self.num_workers))
        model.train()
        for epoch in range(epochs):
            loader = data.dataloader("train", budget.batch_size, shuffle=model.shuffle_train, num_workers=self.num_workers,
                                     limit=self.limit_train, generator=self._epoch_generator(epoch))
            what = "collecting features" + (f" (pass {epoch + 1}/{epochs})" if epochs > 1 else "")
            with torch.no_grad():
                for batch in track(loader, what, bar=self.progress, interval=self.progress_interval):
                    model.training_step(self._to_device(batch))
        model.eval()
        t_end = time.perf_counter()
        model.on_fit_end(self.val_loader(data))  # e.g. PatchCore's coreset: often the longest part of a fit
        log.info("fitting the model's statistics (on_fit_end) took %s", hms(time.perf_counter() - t_end))
        return FitResult(epochs=epochs, budget=budget, fit_s=time.perf_counter() - t0)

    def _epoch_generator(self, epoch: int) -> torch.Generator:
        # Data order depends only on (seed, epoch): a resumed run sees the same batches.
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def _resume(self, run: "_FitState", path: Path) -> tuple[int, bool]:
        """Restore everything an uninterrupted run would have at the end of the checkpointed epoch."""
        state = _load_checkpoint(path, self.device)
        check_identity(path, state.get("identity"), run.identity)
        run.model.load_state_dict(state["model"])
        run.spec.optimizer.load_state_dict(state["optimizer"])
        if run.spec.scheduler is not None and state.get("scheduler") is not None:
            run.spec.scheduler.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        run.stopper.load_state_dict(state["early_stopping"])
        _set_rng_state(state["rng"])
        run.step = state["step"]
        run.result.train_losses, run.result.val_losses = state["train_losses"], state["val_losses"]
        run.result.history = [EpochRecord(**h) for h in state.get("history", [])]
        run.result.resumed_from_epoch = state["epoch"]
        log.info("resumed from %s (epoch %d, step %d)", path, state["epoch"], run.step)
        return state["epoch"] + 1, bool(state.get("finished"))

    def _train_epoch(self, run: "_FitState", data, epoch: int) -> List[float]:
        budget, spec = run.result.budget, run.spec
        loader = data.dataloader("train", budget.batch_size, shuffle=run.model.shuffle_train, num_workers=self.num_workers,
                                 limit=self.limit_train, generator=self._epoch_generator(epoch), drop_last=True)
        run.model.train()
        losses: List[float] = []
        total = run.clock.total if run.clock is not None else None
        what = f"epoch {epoch + 1}" + (f"/{total}" if total else "")
        for batch in track(loader, what, total=len(loader), bar=self.progress, interval=self.progress_interval):
            value = self._optimisation_step(run, self._to_device(batch))
            losses.append(value)
            if run.logger is not None and run.step % self.log_every_n_steps == 0:
                run.logger.scalar("train/loss_step", value, run.step)
                run.logger.scalar("train/lr", spec.optimizer.param_groups[0]["lr"], run.step)
            self._call("on_train_step_end", self, run.model, run.step, value)
            if budget.max_steps is not None and run.step >= budget.max_steps:
                break
        if spec.scheduler is not None and spec.scheduler_interval == "epoch":
            spec.scheduler.step()
        return losses

    def _optimisation_step(self, run: "_FitState", batch: Dict[str, Any]) -> float:
        spec = run.spec
        with torch.autocast(self.device.type, enabled=self.use_amp):
            loss = run.model.training_step(batch)
        spec.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if self.gradient_clip_val:
            run.scaler.unscale_(spec.optimizer)
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), float(self.gradient_clip_val))
        run.scaler.step(spec.optimizer)
        run.scaler.update()
        if spec.scheduler is not None and spec.scheduler_interval == "step":
            spec.scheduler.step()
        run.step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDiverged(f"training loss became {value} at step {run.step}; lower the learning rate or "
                                     "enable trainer.gradient_clip_val")
        return value

    def _end_epoch(self, run: "_FitState", data, epoch: int, losses: List[float], seconds: float,
                   max_epochs: int) -> bool:
        """Validation loss, history, logging, early stopping and checkpoints; True when training should stop."""
        result, lr = run.result, float(run.spec.optimizer.param_groups[0]["lr"])
        train_loss = float(np.mean(losses)) if losses else float("nan")
        val_loss = self.validation_loss(run.model, data)
        result.train_losses.append(train_loss)
        result.history.append(EpochRecord(epoch=epoch, step=run.step, train_loss=train_loss, val_loss=val_loss, lr=lr,
                                          seconds=seconds + 0.0))
        stop = False
        if val_loss is not None:
            result.val_losses.append(val_loss)
            improved, stop = run.stopper.update(val_loss)
            if improved and run.ckpt_dir is not None:
                self._save(run.ckpt_dir / "best.ckpt", run, epoch)
        if run.logger is not None:
            run.logger.scalar("train/loss_epoch", train_loss, epoch)
            if val_loss is not None:
                run.logger.scalar("val/loss", val_loss, epoch)
            run.logger.scalar("train/lr_epoch", lr, epoch)
        log.info("%s: train loss %.5f%s", run.clock.text(epoch) if run.clock is not None else f"epoch {epoch + 1}",
                 train_loss, f", val loss {val_loss:.5f}" if val_loss is not None else "")
        self._call("on_epoch_end", self, run.model, epoch, train_loss, val_loss)
        max_steps = result.budget.max_steps
        done = stop or (max_steps is not None and run.step >= max_steps) or epoch + 1 >= max_epochs
        if run.ckpt_dir is not None and (done or (epoch + 1) % self.checkpoint_every_n_epochs == 0):
            self._save(run.ckpt_dir / "last.ckpt", run, epoch, finished=done)
        if stop:
            result.stopped_early = True
            log.info("early stopping at epoch %d: val loss has not improved for %d epochs", epoch, run.stopper.patience)
        return stop

    def _finish(self, run: "_FitState", data, t0: float) -> FitResult:
        result = run.result
        result.steps = run.step
        result.best_val_loss = run.stopper.best if math.isfinite(run.stopper.best) else None
        restore_best = bool(self.early_stopping_cfg.get("restore_best", True))
        if restore_best and run.ckpt_dir is not None and (run.ckpt_dir / "best.ckpt").is_file():
            # The last epochs after the best one only overfit or drift: score with the best weights.
            run.model.load_state_dict(_load_checkpoint(run.ckpt_dir / "best.ckpt", self.device)["model"])
        run.model.eval()
        run.model.on_fit_end(self.val_loader(data))
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

    def _save(self, path: Path, run: "_FitState", epoch: int, finished: bool = False) -> None:
        state = {
            "version": CHECKPOINT_VERSION,
            "identity": run.identity,
            "model": run.model.state_dict(),
            "optimizer": run.spec.optimizer.state_dict(),
            "scheduler": run.spec.scheduler.state_dict() if run.spec.scheduler is not None else None,
            "scaler": run.scaler.state_dict(),
            "early_stopping": run.stopper.state_dict(),
            "rng": _get_rng_state(),
            "epoch": epoch,
            "step": run.step,
            "finished": finished,
            "train_losses": list(run.result.train_losses),
            "val_losses": list(run.result.val_losses),
            "history": [dataclasses.asdict(h) for h in run.result.history],
        }
        # An interruption or a full disk never leaves a half-written checkpoint or a stray temporary.
        atomic_write(path, lambda tmp: torch.save(state, tmp), binary=True)

    def predict(self, model: AnomalyModel, loader, desc: str = "predicting") -> PredictionSet:
        """Score every batch of `loader` through the one prediction path (`ad.engine.scoring`)."""
        return score_loader(model, loader, self.device, self.use_amp, self.progress, desc, self.progress_interval)


def _load_checkpoint(path: Path, device: torch.device) -> Dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # truncated / corrupt file: torch raises RuntimeError, EOFError, UnpicklingError...
        raise ConfigError(f"checkpoint {path} is unreadable ({exc.__class__.__name__}); delete it to train from "
                          "scratch or set trainer.resume=false") from None


def check_identity(path: Path, saved: Optional[Dict[str, Any]], current: Optional[Dict[str, Any]]) -> None:
    """Refuse to resume a checkpoint of another experiment. Budgets count too: LR schedules are laid out over
    the budget, so continuing a finished 2-epoch run to 4 epochs would not equal a 4-epoch run."""
    saved = _current_targets(saved)
    if saved == current:
        return
    if saved is None or current is None:
        what = "was written without an experiment identity" if saved is None else "cannot be matched to this run"
        raise ConfigError(f"checkpoint {path} {what}; delete {path.parent} or set trainer.resume=false to train from scratch")
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    diff = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys[:3]) + (" ..." if len(keys) > 3 else "")
    raise ConfigError(f"checkpoint {path} belongs to a different experiment ({diff}); use another run dir, delete "
                      f"{path.parent}, or set trainer.resume=false to train from scratch")


def _current_targets(identity: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """A checkpoint's identity with pre-family model `_target_`s spelled as today (same class, moved module)."""
    from ad.registry import current_target

    if identity is None:
        return None
    return {k: current_target(v) if k.endswith("_target_") and isinstance(v, str) else v for k, v in identity.items()}


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
