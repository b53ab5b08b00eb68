"""Typed settings and identity of a run, built by the entry point from its config (the engine never sees a
DictConfig), and the one list of overrides that are not hyper-parameters."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from ad.errors import ConfigError
from ad.rundir.params import NOT_PARAMS, categories_of, is_param, run_name, swept_params  # noqa: F401
from ad.values import positive_int

THRESHOLD_METHODS = ("mean_std", "quantile")
OBJECTIVE_MODES = ("auto", "always", "never")


@dataclass
class EvalSettings:
    """`evaluation:` in conf/config.yaml, checked once before any work starts."""

    threshold: str = "mean_std"
    k: float = 3.0
    quantile: float = 0.99
    pixel_pool: str = "max"
    pixel_metrics: bool = True
    aupro_max_fpr: float = 0.3
    objective: str = "auto"  # auto: only when a hyper-parameter search consumes it | always | never
    objective_max_images: int = 64
    save_maps: bool = True  # test_maps.npz beside predictions.csv (ad.rundir.maps_store)
    save_maps_max_side: int = 256  # larger maps are block-averaged before saving
    min_val_images: int = 2  # fewer held-out normals than this: thresholds come from cross-fitting
    cross_fit_folds: int = 4  # folds of the training normals for cross-fitted thresholds (few-shot)

    def __post_init__(self) -> None:
        if self.threshold not in THRESHOLD_METHODS:
            raise ConfigError(f"evaluation.threshold={self.threshold!r} is not one of {', '.join(THRESHOLD_METHODS)}")
        for key in ("k", "quantile", "aupro_max_fpr"):
            try:
                setattr(self, key, float(getattr(self, key)))
            except (TypeError, ValueError):
                raise ConfigError(f"evaluation.{key}={getattr(self, key)!r} is not a number") from None
        if self.k < 0:
            raise ConfigError(f"evaluation.k={self.k} is negative; the threshold is mean + k·std, use k >= 0 (default 3)")
        if not 0.0 < self.quantile < 1.0:
            raise ConfigError(f"evaluation.quantile={self.quantile} must be in (0, 1), e.g. 0.99")
        if self.pixel_pool not in ("max", "all"):
            raise ConfigError(f"evaluation.pixel_pool={self.pixel_pool!r} must be max or all")
        if not 0.0 < self.aupro_max_fpr <= 1.0:
            raise ConfigError(f"evaluation.aupro_max_fpr={self.aupro_max_fpr} must be in (0, 1], e.g. 0.3")
        if self.objective not in OBJECTIVE_MODES:
            raise ConfigError(f"evaluation.objective={self.objective!r} must be one of {', '.join(OBJECTIVE_MODES)}")
        for key in ("objective_max_images", "min_val_images", "cross_fit_folds", "save_maps_max_side"):
            setattr(self, key, positive_int(getattr(self, key), f"evaluation.{key}"))


@dataclass
class RunSpec:
    """Everything the engine needs to know about a run besides its components."""

    model: Optional[str]
    dataset: Optional[str]
    category: Optional[str]
    seed: int
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    setting: str = "single"
    params: Dict[str, str] = field(default_factory=dict)
    tag: Optional[str] = None
    objective_consumer: Optional[str] = None  # what consumes the objective (e.g. "hparams_search"), if anything
    model_config: Dict[str, Any] = field(default_factory=dict)  # to rebuild the model from model.pt
    data_config: Dict[str, Any] = field(default_factory=dict)  # image_size / center_crop for ad.predict
    config: Dict[str, Any] = field(default_factory=dict)  # the resolved config, stored in model.pt
    identity: Dict[str, Any] = field(default_factory=dict)  # what a checkpoint must match to be resumed

    @property
    def name(self) -> str:
        return run_name(self.model, self.dataset, self.category, self.params, self.setting)

    @property
    def wants_objective(self) -> Optional[str]:
        """Why the validation objective is computed, or None when it is skipped."""
        if self.evaluation.objective == "always":
            return "evaluation.objective=always"
        if self.evaluation.objective == "auto" and self.objective_consumer:
            return self.objective_consumer
        return None


# Keys that do not change what a checkpoint holds: evaluation settings act after training, and these trainer
# keys change only logging, scoring batches or test subsets.
_NOT_IDENTITY = ("evaluation.", "tag", "trainer.eval_batch_size", "trainer.limit_test", "trainer.num_visualizations",
                 "trainer.log_every_n_steps", "trainer.checkpoint_every_n_epochs", "trainer.callbacks")


def identity_of(config: Dict[str, Any]) -> Dict[str, Any]:
    """The experiment a checkpoint belongs to: the resolved config flattened to dotted keys, minus where/how it
    runs (`NOT_PARAMS`) and the keys that act only after training."""
    flat: Dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node if isinstance(node, (int, float, str, bool, type(None))) else repr(node)

    walk({k: v for k, v in config.items() if k != "hydra"}, "")
    return {k: v for k, v in sorted(flat.items())
            if is_param(k) and not any(k == p or k.startswith(p if p.endswith(".") else p + ".") for p in _NOT_IDENTITY)}
