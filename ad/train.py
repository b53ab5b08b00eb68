"""`python -m ad.train [overrides]` — run one experiment; `-m` sweeps (see README).

The only module that sees a DictConfig: it turns the config into a typed `RunSpec`, instantiates the dataset,
model, trainer and logger from their `_target_`s and hands them to `ad.engine.pipeline.run_experiment`. Every
run directory gets results.json (also when the run fails: status "failed", one-line error), and on success
predictions.csv, history.csv, model.pt, tb/ and train.log.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from ad.config import CONFIG_DIR, register_resolvers
from ad.errors import Terminated
from ad.launch.sweep import EXIT as _EXIT  # set by failed single runs and by the sweep summary callback
from ad.engine.settings import run_name, swept_params  # noqa: F401  (re-exported: run names are part of the CLI)


SEED_MAX = 2**32 - 1


def build_spec(cfg: DictConfig, choices: Dict[str, str], overrides: List[str]):
    """The run's identity and settings, checked against the schemas before any work starts (the command line
    was checked before Hydra made the run dir: `ad.launch.preflight`; this covers jobs whose values a sweeper
    samples, and callers of `run`)."""
    from ad.engine.settings import EvalSettings, RunSpec, TrainerSettings, identity_of
    from ad.schema.check import validate

    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    seed = int(config["seed"])
    setting = str(OmegaConf.select(cfg, "setting.name", default="single"))
    consumer = ("hparams_search" if choices.get("hparams_search")
                else "optuna sweeper" if "optuna" in str(choices.get("hydra/sweeper", "")) else None)
    return RunSpec(
        model=choices.get("model"), dataset=choices.get("dataset"), category=str(cfg.dataset.category), seed=seed,
        evaluation=EvalSettings(**config["evaluation"]), setting=setting, params=swept_params(overrides),
        tag=cfg.get("tag"), objective_consumer=consumer, model_config=config["model"],
        data_config={"image_size": config["dataset"].get("image_size"), "center_crop": config["dataset"].get("center_crop")},
        config=config, identity=identity_of(config),
        trainer=TrainerSettings(**{k: v for k, v in config["trainer"].items() if k != "_target_"}),
    )


def build_components(cfg: DictConfig, spec):
    """Instantiate every part from its `_target_`; a unified run gets one data module per category."""
    from hydra.utils import instantiate

    from ad.config import dataset_categories
    from ad.data.unified import UnifiedData
    from ad.engine.pipeline import Components
    from ad.loggers.tensorboard import TensorBoardLogger, run_log_dir
    from ad.engine.trainer import Trainer, seed_everything, set_num_threads
    from ad.errors import ConfigError

    def fresh_model():
        # Seeded right before it is built: the model and every cross-fitting fold model start from the same
        # initial weights (random-init backbones included), so their scores share one scale.
        seed_everything(spec.seed, spec.trainer.deterministic)
        return instantiate(cfg.model)

    set_num_threads(spec.trainer.num_threads)
    seed_everything(spec.seed, spec.trainer.deterministic)
    loop = spec.trainer.loop()
    # callbacks are objects built from their `_target_`s (the typed settings hold their configs)
    loop["callbacks"] = list(instantiate(cfg.trainer.callbacks)) if cfg.trainer.get("callbacks") else []
    trainer = Trainer(**loop)
    if spec.setting == "unified":
        wanted = OmegaConf.select(cfg, "setting.categories", default="all")
        listed = OmegaConf.select(cfg, "dataset.categories", default=None) or dataset_categories(spec.dataset)
        # all: in name order (the order of the per-category records and tables), whatever the YAML lists
        names = sorted(str(c) for c in listed) if wanted in (None, "all") else [str(c) for c in wanted]
        if not names:
            raise ConfigError(f"setting=unified needs a dataset with categories; dataset={spec.dataset} has none "
                              "(choose dataset=mvtec|visa|btad|synthetic or list setting.categories=[...])")
        categories = {c: instantiate(cfg.dataset, category=c).setup() for c in names}
        data = UnifiedData(categories).setup()
    else:
        data = instantiate(cfg.dataset).setup()
        categories = {spec.category: data}
    model = fresh_model()  # after the data checks: a bad dataset fails before any slow model build
    logger_cfg = OmegaConf.to_container(cfg.logger, resolve=True)

    def logger(default_dir: Path) -> TensorBoardLogger:  # in a sweep: <sweep>/tb/<run name>, see run_log_dir
        return TensorBoardLogger(run_log_dir(default_dir.parent, spec.name), **logger_cfg)

    return Components(data=data, model=model, trainer=trainer, logger_factory=logger, categories=categories,
                      model_factory=fresh_model)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While inside, SIGTERM raises `ad.errors.Terminated` (a KeyboardInterrupt) in the main thread: the run is
    recorded as interrupted like Ctrl-C, checkpoints kept. Elsewhere (a worker thread) signals can't be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(cfg: DictConfig, run_dir: Path, choices: Dict[str, str], overrides: List[str]):
    """Run one experiment end to end and return its `RunRecord`; a failed run is a record, never an exception."""
    with sigterm_interrupts():
        return _run(cfg, run_dir, choices, overrides)


def _run(cfg: DictConfig, run_dir: Path, choices: Dict[str, str], overrides: List[str]):
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


def finished_before(cfg: DictConfig, run_dir: Path, choices: Dict[str, str], overrides: List[str]):
    """With skip_finished=true: the run dir's ok record when it came from this same run, else None."""
    from ad.launch.jobs import read_record

    if not cfg.get("skip_finished"):
        return None
    record = read_record(run_dir)
    if record is None or record.status != "ok":
        return None
    same = (record.run.model == choices.get("model") and record.run.dataset == choices.get("dataset")
            and record.run.category == str(cfg.dataset.category) and record.run.params == swept_params(overrides))
    return record if same else None


def format_summary(record, run_dir: Path) -> str:
    """The terminal block of a finished run: decisions at the run's own threshold first (what using the run
    would do), then the threshold-free metrics, F1max last and labelled a diagnostic."""
    from ad.rundir.records import operating_point

    def f(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    lines = [f"run         {record.run.run_name or record.run.model}  [{record.status}]"]
    if record.status != "ok":
        lines.append(f"error       {record.error}")
    else:
        op = record.operating_point or operating_point(record)
        if op is None or op.no_threshold:
            lines.append("decisions   none: " + (op.no_threshold if op else "no test metrics"))
        else:
            mean = " (mean over categories)" if record.categories else ""
            lines.append(f"decisions at the run's threshold, fitted on {op.threshold_fitted_on or 'held-out normals'}{mean}")
            for name, at in (("image", op.image), ("pixel", op.pixel)):
                if at is not None:
                    lines.append(f"  {name:<9s} precision {f(at.precision)}  recall {f(at.recall)}  F1 {f(at.f1)}"
                                 f"  (threshold {'n/a' if at.threshold is None else f'{at.threshold:.4g}'})")
            if op.pixel is None:
                lines.append("  pixel     n/a (no ground-truth masks)")
        for name, row in ((c.category, c) for c in record.category_rows()) if record.categories else []:
            lines.append(f"  {name:<14s} image AUROC {f(row.metric('image.auroc'))}  F1 {f(row.metric('image.f1'))}  "
                         f"pixel AUROC {f(row.metric('pixel.auroc'))}  AUPRO {f(row.metric('pixel.aupro'))}  mAD {f(row.mad)}")
        img, pix = record.image, record.pixel
        lines.append(f"ranking     image AUROC {f(img.auroc)}  AP {f(img.ap)}")
        if pix:
            lines.append(f"            pixel AUROC {f(pix.auroc)}  AUPRO {f(pix.aupro)}  AP {f(pix.ap)}  mAD {f(record.mad)}")
        else:
            lines.append("            pixel n/a (no ground-truth masks)")
        diag = f"image {f(img.f1_max)}" + (f", pixel {f(pix.f1_max)}" if pix else "")
        lines.append(f"diagnostic  F1max {diag} (threshold chosen on the test labels: not a deployable result)")
        t = record.timing
        lines.append(f"time        fit {t.fit_s:.1f} s, predict {t.ms_per_image:.1f} ms/image, "
                     f"peak RSS {record.memory.peak_rss_mb:.0f} MB")
    lines.append(f"outputs     {run_dir}")
    if (run_dir / "tb").is_dir():
        lines.append(f"tensorboard --logdir {run_dir / 'tb'}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    record = finished_before(cfg, run_dir, dict(hc.runtime.choices), list(hc.overrides.task))
    if record is not None:
        print(f"skipped  {run_dir}: already ok (skip_finished=true)", flush=True)
        return record.validation.objective if record.validation else None
    record = run(cfg, run_dir, dict(hc.runtime.choices), list(hc.overrides.task))
    print(format_summary(record, run_dir), flush=True)
    if record.status != "ok":
        if hc.mode != RunMode.MULTIRUN:
            from ad.launch.sweep import EXIT  # set by failed single runs and by the sweep summary callback

            EXIT["code"] = 1
        return None
    # The value an optimising sweeper (Optuna) maximises: a validation objective, never a test metric.
    return record.validation.objective if record.validation else None


def register_plugins() -> None:
    """Make our launchers known to Hydra (each when the launcher plugin it extends is installed)."""
    from hydra.core.plugins import Plugins

    try:
        from hydra_plugins.ad_launchers.robust_joblib import RobustJoblibLauncher

        Plugins.instance().register(RobustJoblibLauncher)
    except ImportError:  # hydra-joblib-launcher not installed: launcher=joblib says so itself
        pass
    try:
        from hydra_plugins.ad_launchers.slurm import SlurmLauncher

        Plugins.instance().register(SlurmLauncher)
    except ImportError:  # hydra-submitit-launcher not installed: launcher=slurm says so itself
        pass


def main() -> None:
    from ad.launch.overrides import override_problem

    problem = override_problem(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    register_resolvers()
    # Config mistakes end here, in one line: before Hydra makes a run or sweep dir, before torch is imported
    # (and before the launcher plugins and run-record modules are imported: they are not needed to check).
    from ad.launch.preflight import preflight

    error = preflight(sys.argv[1:])
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    register_plugins()
    from ad.launch.sweep import EXIT  # set by failed single runs and by the sweep summary callback

    try:
        with sigterm_interrupts():
            _hydra_main()
    except KeyboardInterrupt as exc:
        term = isinstance(exc, Terminated)
        print("interrupted (SIGTERM)" if term else "interrupted", file=sys.stderr)
        sys.exit(143 if term else 130)
    sys.exit(_EXIT["code"])


if __name__ == "__main__":
    main()


__all__: List[Any] = ["run", "build_spec", "build_components", "format_summary", "main"]
