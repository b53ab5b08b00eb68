"""model.pt, the fitted model file of a run: its format version and its writer (read back by `ad.predict`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

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
