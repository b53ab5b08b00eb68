"""Anomaly-detection models: one file per model; `conf/model/<name>.yaml`'s `_target_` names its class."""
from ad.models.base import AnomalyModel, Budget, OptimizerSpec, Prediction  # noqa: F401
from ad.registry import MODELS


def create_model(name: str, **kwargs) -> AnomalyModel:
    """Build the model of option `name` (the class `conf/model/<name>.yaml` targets) with explicit kwargs."""
    return MODELS.create(name, **kwargs)


__all__ = ["AnomalyModel", "Budget", "OptimizerSpec", "Prediction", "MODELS", "create_model"]
