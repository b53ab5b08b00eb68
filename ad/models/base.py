"""The contract between a model and the trainer.

A model is a plain `nn.Module` with explicit keyword arguments. It *declares* what it needs and the trainer
never asks which model it is running:

- `configure_optimizers(budget)` → an `OptimizerSpec` for gradient-trained models, or None for models that only
  collect statistics (PatchCore, PaDiM...). Without an optimizer the trainer runs `training_step` under
  `torch.no_grad()` for `default_max_epochs` passes (1 for memory models) and never back-propagates.
  `budget` is the `Budget` the trainer will run (epochs, steps, batch size, steps per epoch), so LR schedules
  are laid out over the real run. The model never reads or writes the trainer's settings itself.
- Declarations (class attributes): `default_max_epochs`, `default_max_steps`, `default_batch_size`. One
  precedence rule: a `trainer.max_epochs` / `max_steps` / `batch_size` that is set (not null) wins, else the
  model's declared default.
- `training_step(batch)` → loss tensor (trained models) or None (memory models collect features here).
- `validation_step(batch)` → validation loss on held-out *normal* images, or None when the model has none
  (then early stopping is off for it).
- `on_fit_start(train_loader)` → prepare (reset a memory bank, statistics over the training images).
- `on_fit_end(val_loader)` → finalise after the last epoch (coreset, Gaussian fit, map-normalisation
  quantiles on validation normals...).
- `predict(images)` → `Prediction(scores [B], maps [B,H,W])` at input resolution. `images` are float
  [B,3,H,W] in [0,1]; a model applies its own backbone normalisation.
- What the engine reads back: `notes` (lines for the run record about this fit) and
  `config_for_state_dict(cfg, state_dict)` (the config that rebuilds the model around a saved state dict, for
  models whose construction needs files the state dict replaces — EfficientAD's teacher).

All fitted state lives in parameters or buffers, so `state_dict()` round-trips the whole fitted model. Buffers
whose size is only known after fitting (memory banks) are resized on load by `_load_from_state_dict`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Sequence

import torch
from torch import nn


@dataclass
class Prediction:
    scores: torch.Tensor  # [B] image anomaly scores, higher = more anomalous
    maps: torch.Tensor  # [B,H,W] pixel anomaly maps at input resolution


@dataclass(frozen=True)
class Budget:
    """What the trainer will run, told to the model before it builds its optimizer and schedule."""

    max_epochs: Optional[int]  # None: the step budget alone decides when to stop
    max_steps: Optional[int]  # None: no step cap
    batch_size: int  # training batch size
    steps_per_epoch: int  # optimisation steps per epoch at this batch size (last partial batch dropped)

    @property
    def total_steps(self) -> Optional[int]:
        """Optimisation steps the run will take at most (the tighter of the two budgets)."""
        by_epochs = None if self.max_epochs is None else self.max_epochs * max(1, self.steps_per_epoch)
        known = [v for v in (self.max_steps, by_epochs) if v is not None]
        return min(known) if known else None


@dataclass
class OptimizerSpec:
    optimizer: torch.optim.Optimizer
    scheduler: Optional[Any] = None  # a torch LR scheduler
    scheduler_interval: str = "epoch"  # "epoch" | "step"


class AnomalyModel(nn.Module):
    #: epochs the trainer runs when `trainer.max_epochs` is null
    default_max_epochs: int = 1
    #: optimisation steps cap when `trainer.max_steps` is null (None = no cap)
    default_max_steps: Optional[int] = None
    #: training batch size when `trainer.batch_size` is null (also the feature-collection batch of memory models)
    default_batch_size: int = 16
    #: shuffle training images (memory models don't care; trained models do)
    shuffle_train: bool = True
    #: name of the backbone for reporting (None for backbone-free models)
    backbone_name: Optional[str] = None
    #: why `predict` cannot become a static inference graph (ONNX / OpenVINO), or None when it can;
    #: `ad.export` refuses such a model with this reason instead of writing a graph that scores differently
    export_unsupported: Optional[str] = None
    #: lines for the run record's `notes` about this fit (EfficientAD: which teacher it used)
    notes: Sequence[str] = ()

    @staticmethod
    def config_for_state_dict(cfg: Dict[str, Any], state_dict: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """The model config that rebuilds this model around `state_dict` (model.pt); most models need none."""
        return cfg

    def configure_optimizers(self, budget: Budget) -> Optional[OptimizerSpec]:
        return None

    def training_step(self, batch: Dict[str, Any]) -> Optional[torch.Tensor]:
        raise NotImplementedError

    def validation_step(self, batch: Dict[str, Any]) -> Optional[torch.Tensor]:
        return None

    def on_fit_start(self, train_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        """Called once before the first epoch (reset a memory bank, compute statistics over the training
        images: `train_loader` iterates them in a fixed order without augmentation). Not called when a run
        resumes from a checkpoint, which already holds whatever this set up."""

    def on_fit_end(self, val_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        """Called once after training; `val_loader` yields the validation normals."""

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        raise NotImplementedError

    # Memory banks and other fitted tensors change size when fitted: accept the saved shape on load.
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if key in state_dict and buf is not None and buf.shape != state_dict[key].shape:
                self._buffers[name] = torch.empty_like(state_dict[key], device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

