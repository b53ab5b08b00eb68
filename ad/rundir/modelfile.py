"""model.pt, the fitted model file of a run: its format version and its writer (read back by `ad.predict`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ad.errors import ConfigError
from ad.io import atomic_write

MODEL_FILE_VERSION = 1


def save_model_file(path: "str | Path", model: torch.nn.Module, model_config: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """model.pt: fitted state + thresholds + normalisation + the config needed to rebuild the model."""
    path = Path(path)
    state = {
        "version": MODEL_FILE_VERSION,
        "model_config": dict(model_config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **meta,
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp), binary=True)


def check_model_file(meta: Any, path: Path) -> None:
    """Refuse a model.pt of another file-format version (or not a model file at all) in one line: its keys
    may mean something else, and a silently misread threshold or input size would score wrongly."""
    if not isinstance(meta, dict) or "state_dict" not in meta or "model_config" not in meta:
        raise ConfigError(f"{path} is not an ad model file (no state_dict/model_config); pass the run dir of an "
                          "ad.train run")
    version = meta.get("version")
    if version != MODEL_FILE_VERSION:
        raise ConfigError(f"{path} has model-file format version {version!r}; this ad reads version "
                          f"{MODEL_FILE_VERSION}: re-run the training with this version (or score with the ad "
                          "version that wrote it)")
