"""Typed settings and identity of a run, built by the entry point from its config (the engine never sees a
DictConfig), and the one list of overrides that are not hyper-parameters."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Dict, Literal, Optional, Sequence, Union

from ad.errors import ConfigError
from ad.rundir.params import NOT_PARAMS, categories_of, is_param, run_name, swept_params  # noqa: F401
from ad.values import (NonNegativeFloat, NonNegativeInt, OpenUnitInterval, PositiveFloat, PositiveInt, Range,
                       positive_int)

THRESHOLD_METHODS = ("mean_std", "quantile")
OBJECTIVE_MODES = ("auto", "always", "never")


@dataclass
class EvalSettings:
    """`evaluation:` in conf/config.yaml — its schema: every field is a config key (ad.schema), checked once
    before any work starts."""

    threshold: Literal["mean_std", "quantile"] = "mean_std"
    k: NonNegativeFloat = 3.0
    quantile: OpenUnitInterval = 0.99
    pixel_pool: Literal["max", "all"] = "max"
    pixel_metrics: bool = True
    aupro_max_fpr: Annotated[float, Range(0, 1, low_open=True)] = 0.3
    objective: Literal["auto", "always", "never"] = "auto"  # auto: only when a hyper-parameter search consumes it
    objective_max_images: PositiveInt = 64
    save_maps: bool = True  # test_maps.npz beside predictions.csv (ad.rundir.maps_store)
    save_maps_max_side: PositiveInt = 256  # larger maps are block-averaged before saving
    min_val_images: PositiveInt = 2  # fewer held-out normals than this: thresholds come from cross-fitting
    cross_fit_folds: PositiveInt = 4  # folds of the training normals for cross-fitted thresholds (few-shot)

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
class SettingSpec:
    """`setting:` (conf/setting/*.yaml): one model per category, or one model over several categories."""

    name: Literal["single", "unified"] = "single"
    # unified: every category of the dataset ("all"), or a list such as [bottle, cable]
    categories: Union[Literal["all"], Sequence[str], None] = None


@dataclass
class ExperimentSettings:
    """The top-level values of conf/config.yaml (the nodes beside them have schemas of their own)."""

    seed: Annotated[int, Range(0, 2**32 - 1)] = 0  # numpy's seed range; the run's data split, init and order
    tag: Optional[str] = None


@dataclass
class EarlyStoppingSettings:
    """`trainer.early_stopping`: stop when the validation loss stalls (models with a validation loss)."""

    enabled: bool = True
    patience: PositiveInt = 5  # epochs without improvement
    min_delta: NonNegativeFloat = 0.0
    restore_best: bool = True  # score with the best-validation weights, not the last


@dataclass
class TrainerSettings:
    """`trainer:` (conf/trainer/*.yaml): the training loop's settings and the run's scoring/process settings.

    The entry point splits it: `loop()` is what `ad.engine.trainer.Trainer` takes; the pipeline reads the test
    limits, loader settings and visualisation count from here (via `RunSpec.trainer`); `num_threads` and
    `deterministic` configure the process."""

    # None = the model's declared default (one precedence rule: what is set here wins)
    max_epochs: Optional[PositiveInt] = None
    max_steps: Optional[PositiveInt] = None
    batch_size: Optional[PositiveInt] = None
    eval_batch_size: PositiveInt = 16
    num_workers: NonNegativeInt = 0
    gradient_clip_val: Optional[PositiveFloat] = None
    precision: Literal["auto", "fp32", "amp"] = "auto"  # auto = mixed precision on CUDA, fp32 on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:<n>
    num_threads: Optional[PositiveInt] = None  # torch CPU threads (None = torch's default)
    deterministic: bool = False
    early_stopping: EarlyStoppingSettings = field(default_factory=EarlyStoppingSettings)
    checkpoint_every_n_epochs: PositiveInt = 1
    resume: bool = True
    limit_train: Optional[PositiveInt] = None  # at most N train / val / test images (smoke runs)
    limit_val: Optional[PositiveInt] = None
    limit_test: Optional[PositiveInt] = None
    log_every_n_steps: PositiveInt = 10
    progress_bar: Union[Literal["auto"], bool] = "auto"
    progress_interval: NonNegativeFloat = 30.0  # seconds between progress lines (log files, train.log); 0 = every batch
    num_visualizations: NonNegativeInt = 8  # test images with heatmap overlays in TensorBoard
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0  # data order of every epoch
    callbacks: Sequence[Any] = ()

    def __post_init__(self) -> None:
        from ad.schema.check import check_instance

        if not isinstance(self.early_stopping, EarlyStoppingSettings):
            self.early_stopping = EarlyStoppingSettings(**dict(self.early_stopping or {"enabled": False}))
        self.callbacks = list(self.callbacks or ())
        check_instance(self, "trainer")

    # What the training loop needs (the keyword arguments of ad.engine.trainer.Trainer).
    LOOP_KEYS = ("max_epochs", "max_steps", "batch_size", "eval_batch_size", "num_workers", "gradient_clip_val",
                 "precision", "device", "checkpoint_every_n_epochs", "resume", "limit_train", "limit_val",
                 "log_every_n_steps", "progress_bar", "progress_interval", "seed", "callbacks")

    def loop(self) -> Dict[str, Any]:
        """Keyword arguments of `ad.engine.trainer.Trainer`."""
        out = {k: getattr(self, k) for k in self.LOOP_KEYS}
        out["early_stopping"] = asdict(self.early_stopping)
        return out


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
    trainer: TrainerSettings = field(default_factory=TrainerSettings)  # limits, loaders and visualisations

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
