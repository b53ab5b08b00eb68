"""The generic training/evaluation engine: one loop for every model, plus run outputs and logging."""
from ad.engine.trainer import EarlyStopping, FitResult, PredictionSet, Trainer  # noqa: F401

__all__ = ["EarlyStopping", "FitResult", "PredictionSet", "Trainer"]
