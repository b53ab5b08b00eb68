"""The files of a run directory and the columns of its tables."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Sequence

from ad.io import write_csv

PREDICTION_COLUMNS = ["path", "category", "defect_type", "label", "score", "normalized_score", "is_anomalous"]
HISTORY_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "lr", "seconds"]
# Files (and folders) a run writes: removed before a new run starts in the same directory.
RUN_FILES = ("results.json", "predictions.csv", "history.csv", "model.pt", "test_maps.npz", "tb")


def write_predictions(run_dir: Path, rows: Sequence[Dict[str, Any]]) -> None:
    write_csv(run_dir / "predictions.csv", rows, PREDICTION_COLUMNS)


def write_history(run_dir: Path, history: Sequence[Any]) -> None:
    """Per-epoch training log (CSV beside TensorBoard); header only for models without epochs of training."""
    write_csv(run_dir / "history.csv", [dataclasses.asdict(h) for h in history], HISTORY_COLUMNS)
