"""`python -m ad.train [overrides]` — run one experiment; `-m` sweeps (see README).

The only module that sees a DictConfig: it turns the config into a typed `RunSpec`, instantiates the dataset,
model, trainer and logger from their `_target_`s and hands them to `ad.engine.pipeline.run_experiment`. Every
run directory gets results.json (also when the run fails: status "failed", one-line error), and on success
predictions.csv, history.csv, model.pt, tb/ and train.log.
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from ad.config import CONFIG_DIR, register_resolvers
from ad.launch.sweep import EXIT as _EXIT  # set by failed single runs and by the sweep summary callback
from ad.engine.settings import run_name, swept_params  # noqa: F401  (re-exported: run names are part of the CLI)


def build_spec(cfg: DictConfig, choices: Dict[str, str], overrides: List[str]):
    """The run's identity and evaluation settings, checked before any work starts."""
    from ad.engine.settings import EvalSettings, RunSpec, identity_of
    from ad.values import number

    config = OmegaConf.to_container(cfg, resolve=True)
    seed = number(cfg.seed, "seed", int)
    setting = str(OmegaConf.select(cfg, "setting.name", default="single"))
    consumer = ("hparams_search" if choices.get("hparams_search")
                else "optuna sweeper" if "optuna" in str(choices.get("hydra/sweeper", "")) else None)
    return RunSpec(
        model=choices.get("model"), dataset=choices.get("dataset"), category=str(cfg.dataset.category), seed=seed,
        evaluation=EvalSettings(**config["evaluation"]), setting=setting, params=swept_params(overrides),
        tag=cfg.get("tag"), objective_consumer=consumer, model_config=config["model"],
        data_config={"image_size": config["dataset"].get("image_size"), "center_crop": config["dataset"].get("center_crop")},
        config=config, identity=identity_of(config),
    )


def build_components(cfg: DictConfig, spec):
    """Instantiate every part from its `_target_`; a unified run gets one data module per category."""
    from hydra.utils import instantiate

    from ad.config import dataset_categories
    from ad.data.unified import UnifiedData
    from ad.engine.pipeline import Components
    from ad.loggers.tensorboard import TensorBoardLogger
    from ad.engine.trainer import seed_everything
    from ad.errors import ConfigError

    def fresh_model():
        # Seeded right before it is built: the model and every cross-fitting fold model start from the same
        # initial weights (random-init backbones included), so their scores share one scale.
        seed_everything(spec.seed, bool(cfg.trainer.deterministic))
        return instantiate(cfg.model)

    seed_everything(spec.seed, bool(cfg.trainer.deterministic))
    trainer = instantiate(cfg.trainer)
    if spec.setting == "unified":
        wanted = OmegaConf.select(cfg, "setting.categories", default="all")
        names = dataset_categories(spec.dataset) if wanted in (None, "all") else [str(c) for c in wanted]
        if not names:
            raise ConfigError(f"setting=unified needs a dataset with categories; dataset={spec.dataset} has none "
                              "(choose dataset=mvtec|visa|btad|synthetic or list setting.categories=[...])")
        categories = {c: instantiate(cfg.dataset, category=c).setup() for c in names}
        data = UnifiedData(categories).setup()
    else:
        data = instantiate(cfg.dataset).setup()
        categories = {spec.category: data}
    model = fresh_model()  # after the data checks: a bad dataset fails before any slow model build
    logger = partial(TensorBoardLogger, **OmegaConf.to_container(cfg.logger, resolve=True))
    return Components(data=data, model=model, trainer=trainer, logger_factory=logger, categories=categories,
                      model_factory=fresh_model)


def run(cfg: DictConfig, run_dir: Path, choices: Dict[str, str], overrides: List[str]):
    """Run one experiment end to end and return its `RunRecord`; a failed run is a record, never an exception."""
    from ad.engine import pipeline
    from ad.engine.guard import record_failure
    from ad.rundir.records import RunInfo, RunRecord

    try:
        spec = build_spec(cfg, choices, overrides)
    except Exception as exc:  # noqa: BLE001 - bad values before the run starts are recorded like any failure
        info = RunInfo(model=choices.get("model"), dataset=choices.get("dataset"),
                       category=OmegaConf.select(cfg, "dataset.category", default=None, throw_on_missing=False),
                       params=swept_params(overrides))
        return record_failure(RunRecord(run=info), exc, Path(run_dir))
    return pipeline.run_experiment(spec, lambda: build_components(cfg, spec), Path(run_dir))


def format_summary(record, run_dir: Path) -> str:
    def f(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    lines = [f"run      {record.run.run_name or record.run.model}  [{record.status}]"]
    if record.status != "ok":
        lines.append(f"error    {record.error}")
    else:
        for name, row in ((c.category, c) for c in record.category_rows()) if record.categories else []:
            lines.append(f"  {name:<14s} image AUROC {f(row.metric('image.auroc'))}  pixel AUROC "
                         f"{f(row.metric('pixel.auroc'))}  AUPRO {f(row.metric('pixel.aupro'))}  mAD {f(row.mad)}")
        label = "mean" if record.categories else "image"
        img, pix = record.image, record.pixel
        lines.append(f"{label:<8s} image AUROC {f(img.auroc)}  AP {f(img.ap)}  F1max {f(img.f1_max)}" if record.categories
                     else f"image    AUROC {f(img.auroc)}  AP {f(img.ap)}  F1max {f(img.f1_max)}")
        if pix:
            lines.append(f"pixel    AUROC {f(pix.auroc)}  AUPRO {f(pix.aupro)}  AP {f(pix.ap)}  mAD {f(record.mad)}")
        else:
            lines.append("pixel    n/a (no ground-truth masks)")
        t = record.timing
        lines.append(f"time     fit {t.fit_s:.1f} s, predict {t.ms_per_image:.1f} ms/image, "
                     f"peak RSS {record.memory.peak_rss_mb:.0f} MB")
    lines.append(f"outputs  {run_dir}")
    if (run_dir / "tb").is_dir():
        lines.append(f"tensorboard --logdir {run_dir / 'tb'}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    record = run(cfg, run_dir, dict(hc.runtime.choices), list(hc.overrides.task))
    print(format_summary(record, run_dir), flush=True)
    if record.status != "ok":
        if hc.mode != RunMode.MULTIRUN:
            _EXIT["code"] = 1
        return None
    # The value an optimising sweeper (Optuna) maximises: a validation objective, never a test metric.
    return record.validation.objective if record.validation else None


def register_plugins() -> None:
    """Make our launcher known to Hydra (when the joblib launcher it extends is installed)."""
    try:
        from hydra.core.plugins import Plugins

        from hydra_plugins.ad_launchers.robust_joblib import RobustJoblibLauncher
    except ImportError:  # hydra-joblib-launcher not installed: launcher=joblib says so itself
        return
    Plugins.instance().register(RobustJoblibLauncher)


def main() -> None:
    register_resolvers()
    register_plugins()
    try:
        _hydra_main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(_EXIT["code"])


if __name__ == "__main__":
    main()


__all__: List[Any] = ["run", "build_spec", "build_components", "format_summary", "main"]
