"""Anomaly-detection models; each file registers one `AnomalyModel` in MODELS."""
from ad.models.base import AnomalyModel, OptimizerSpec, Prediction  # noqa: F401
from ad.registry import MODELS, import_submodules

import_submodules(__name__)


def create_model(name: str, **kwargs) -> AnomalyModel:
    return MODELS.create(name, **kwargs)


__all__ = ["AnomalyModel", "OptimizerSpec", "Prediction", "MODELS", "create_model"]
