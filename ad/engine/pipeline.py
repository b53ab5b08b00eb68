"""The run pipeline: build → fit → calibrate → score + evaluate → write artefacts.

`run_experiment` reads top to bottom. Each stage is a small function that takes typed values and returns one
(`Counts`, `Training`, `Calibration`, `TestResult`, `Validation`); the `RunRecord` is filled from them here and
nowhere else, and is the only thing results.json is written from. `guarded` owns the run dir and records any
failure as data (status failed, one-line error; Ctrl-C → interrupted).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol

import numpy as np

from ad.data import DataSource
from ad.data.identity import data_identity
from ad.engine import artefacts
from ad.engine.evaluation import (Calibration, benchmark_metrics, calibrate, evaluate_category, mean_entries,
                                  mean_over_categories)
from ad.engine.guard import RunDirBusy, clear_previous, guarded, memory_record
from ad.engine.scoring import PredictionSet, score_function
from ad.engine.settings import RunSpec
from ad.io import write_json
from ad.models.base import AnomalyModel
from ad.rundir.records import (CategoryRecord, Counts, ImageMetrics, PixelMetrics, RunInfo, RunRecord, Timing,
                               Training, Validation, operating_point)

if TYPE_CHECKING:
    from ad.data import AnomalyDataModule
    from ad.engine.trainer import Trainer

log = logging.getLogger("ad.run")


class RunLogger(Protocol):
    """What the pipeline and the trainer need of an experiment logger (`ad.loggers.tensorboard`)."""

    def scalar(self, tag: str, value: float, step: int) -> None: ...

    def log_test(self, prefix: str, record: CategoryRecord, test: PredictionSet, normalized_scores: np.ndarray,
                 visuals: List[Dict[str, Any]]) -> None: ...

    def log_final(self, record: RunRecord, hparams: Dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass
class Components:
    """The instantiated parts of a run (built by the entry point from the config's `_target_`s)."""

    data: DataSource  # one category, or the unified union of several
    model: AnomalyModel
    trainer: "Trainer"  # the loop (fit, predict); its settings are in RunSpec.trainer
    logger_factory: Callable[[Path], RunLogger]  # log_dir -> logger
    categories: Dict[str, "AnomalyDataModule"] = field(default_factory=dict)  # evaluation order
    model_factory: Optional[Callable[[], AnomalyModel]] = None  # a fresh, unfitted model (cross-fitting few-shot runs)


def run_experiment(spec: RunSpec, build: Callable[[], Components], run_dir: Path) -> RunRecord:
    """Run one experiment end to end; never raises for a failed run (the failure is in the returned record),
    and writes nothing when `run_dir` belongs to another live run."""
    record = RunRecord(run=run_info(spec))
    t0 = time.perf_counter()
    try:
        with guarded(record, run_dir):
            clear_previous(run_dir)
            write_json(run_dir / "results.json", record.to_dict())  # "running": a crash leaves a trace
            parts = build()
            record.run.backbone, record.run.categories = parts.model.backbone_name, list(parts.categories)
            # The data is part of the experiment: a checkpoint of another root or file list is never resumed.
            data = data_identity(parts.categories)
            spec.identity = {**spec.identity, **data}
            record.run.data_root, record.run.data_fingerprint = data["data.root"], data["data.fingerprint"]
            record.counts = count_images(parts, spec)
            with artefacts.TestOutputs(run_dir, parts.logger_factory(run_dir / "tb"), spec.evaluation,
                                       unified=spec.setting == "unified") as out:
                fit = parts.trainer.fit(parts.model, parts.data, run_dir=run_dir, logger=out.logger,
                                        identity=spec.identity)
                record.training = training_record(fit)
                val, source = held_out_normals(parts, spec)
                cal = calibrate(val, spec.evaluation, list(parts.categories), source)
                record.thresholds = cal.thresholds_record(spec.evaluation)
                test = score_and_evaluate(parts, cal, spec, out)
                record.categories, record.image, record.pixel, record.per_defect, record.mad = test.summary()
                record.operating_point = operating_point(record)
                record.benchmark = test.benchmark()
                record.notes += cal.notes + list(parts.model.notes) + test.notes()
                record.validation = validation_record(parts, spec, val, fit)
                out.finish(run_dir, fit.history)
                artefacts.save_model(run_dir, parts.model, spec, cal, parts.trainer.use_amp)
                record.timing = Timing(fit_s=fit.fit_s, predict_s=test.seconds, total_s=time.perf_counter() - t0,
                                       ms_per_image=1000.0 * test.seconds / max(1, len(out.rows)))
                record.memory = memory_record()
                out.logger.log_final(record, hparams(record))
            record.status = "ok"
    except RunDirBusy as exc:  # another live run owns the directory: nothing was written there
        record.status, record.error = "failed", str(exc)
        log.error("%s", exc)
    return record


def run_info(spec: RunSpec) -> RunInfo:
    return RunInfo(model=spec.model, dataset=spec.dataset, category=spec.category, seed=spec.seed,
                   setting=spec.setting, params=dict(spec.params), run_name=spec.name, tag=spec.tag)


# --- stages -----------------------------------------------------------------------------------------------
def count_images(parts: Components, spec: RunSpec) -> Counts:
    t = spec.trainer
    test = parts.data.dataset("test", t.limit_test)
    return Counts(train=len(parts.data.dataset("train", t.limit_train)), val=len(parts.data.dataset("val", t.limit_val)),
                  test=len(test), test_anomalous=sum(s.label for s in test.samples))


def training_record(fit: Any) -> Training:
    b = fit.budget
    return Training(epochs=fit.epochs, steps=fit.steps, batch_size=b.batch_size if b else None,
                    max_epochs=b.max_epochs if b else None, max_steps=b.max_steps if b else None,
                    stopped_early=fit.stopped_early, resumed_from_epoch=fit.resumed_from_epoch,
                    best_val_loss=fit.best_val_loss, final_train_loss=fit.train_losses[-1] if fit.train_losses else None)


def held_out_normals(parts: Components, spec: RunSpec) -> tuple[Optional[PredictionSet], str]:
    """Scores of normal images the model was not fitted on, to fit thresholds and normalisation with.

    Normally the validation normals. With fewer than `evaluation.min_val_images` of them (few-shot
    categories) the training normals are cross-fitted: K fresh models, each fitted without one fold, score
    that fold (the few validation normals join the folds). None when not even that is possible.
    """
    t, limits = parts.trainer, spec.trainer
    val = t.predict(parts.model, t.val_loader(parts.data), desc="scoring validation normals")
    val.categories = val.categories or [next(iter(parts.categories))] * len(val.scores)
    if len(val.scores) >= spec.evaluation.min_val_images:
        return val, "validation normals"
    # Every normal the run has (the too-few validation ones too) is scored by a model that did not see it.
    train = parts.data.samples("train") + parts.data.samples("val")
    k = min(len(train), spec.evaluation.cross_fit_folds)
    if k < 2 or parts.model_factory is None:
        return (val if len(val.scores) else None), "validation normals"
    from ad.data import kfold_split
    from ad.data.folds import FoldData

    category_of = {s.path: c for c, m in parts.categories.items() for split in ("train", "val") for s in m.samples(split)}
    sets = []
    for i, (rest, held) in enumerate(kfold_split(train, k, spec.seed)):
        log.info("cross-fitting thresholds: fold %d/%d (%d images fitted, %d held out)", i + 1, k, len(rest), len(held))
        fold = FoldData(parts.data.transform, rest, held, parts.data.loading)
        model = parts.model_factory()
        t.fit(model, fold)  # no run dir: fold models are never checkpointed or saved
        part = t.predict(model, fold.dataloader("heldout", limits.eval_batch_size), desc=f"scoring fold {i + 1}")
        part.categories = [category_of.get(p, "") for p in part.paths]
        sets.append(part)
    return _concat(sets), f"cross-fitted training normals ({k} folds)"


def _concat(sets: List[PredictionSet]) -> PredictionSet:
    return PredictionSet(
        scores=np.concatenate([s.scores for s in sets]), maps=np.concatenate([s.maps for s in sets]),
        labels=np.concatenate([s.labels for s in sets]), masks=np.concatenate([s.masks for s in sets]),
        has_mask=np.concatenate([s.has_mask for s in sets]), paths=[p for s in sets for p in s.paths],
        defect_types=[d for s in sets for d in s.defect_types], seconds=sum(s.seconds for s in sets),
        categories=[c for s in sets for c in s.categories])


@dataclass
class TestResult:
    """The evaluation of every test category: per-category records and the time spent scoring."""

    per_category: Dict[str, CategoryRecord]
    seconds: float
    # A unified run is recorded per category even over one category: the record says what ran (categories
    # named, not a "unified" label row in the tables).
    unified: bool = False

    def summary(self) -> tuple[Optional[Dict[str, CategoryRecord]], ImageMetrics, Optional[PixelMetrics],
                               Any, Optional[float]]:
        """(categories, image, pixel, per_defect, mAD) of the run record: a single category's own metrics, or
        the per-category records with their means (unified)."""
        if not self.unified:
            (only,) = self.per_category.values()
            return None, only.image, only.pixel, only.per_defect, only.mad
        image, pixel = mean_over_categories(self.per_category)
        mads = [c.mad for c in self.per_category.values()]
        mad = None if any(m is None for m in mads) else float(np.mean(mads))
        return dict(self.per_category), image, pixel, None, mad

    def benchmark(self) -> Optional[Dict[str, Optional[float]]]:
        """The benchmark dataset's official metrics: the category's own, or their means over categories."""
        if not self.unified:
            return next(iter(self.per_category.values())).benchmark
        return mean_entries(c.benchmark for c in self.per_category.values())

    def notes(self) -> List[str]:
        if not self.unified:
            return list(next(iter(self.per_category.values())).notes)
        return [f"{c}: {n}" for c, r in self.per_category.items() for n in r.notes]


def score_and_evaluate(parts: Components, cal: Calibration, spec: RunSpec, out: "artefacts.TestOutputs") -> TestResult:
    """Score and evaluate one category at a time, so memory is bounded by the largest category, not the
    dataset: each category's predictions go to `out` (predictions.csv rows, test maps, logger) and are dropped."""
    t = spec.trainer
    unified = spec.setting == "unified"
    per_category: Dict[str, CategoryRecord] = {}
    seconds = 0.0
    for name, module in parts.categories.items():
        loader = module.dataloader("test", t.eval_batch_size, limit=t.limit_test, num_workers=t.num_workers)
        test = parts.trainer.predict(parts.model, loader, desc=f"scoring test images{f' of {name}' if unified else ''}")
        seconds += test.seconds
        rec = evaluate_category(test, cal, spec.evaluation, module.has_masks, cal.per_category.get(name) if unified else None)
        rec.benchmark = benchmark_metrics(module, test, cal)
        rec.counts = Counts(train=len(module.dataset("train", t.limit_train)), val=len(module.dataset("val", t.limit_val)),
                            test=rec.counts.test, test_anomalous=rec.counts.test_anomalous)
        per_category[name] = rec
        out.add(name, test, rec, cal, module.dataset("test", t.limit_test), t.num_visualizations)
    return TestResult(per_category, seconds, unified)


def validation_record(parts: Components, spec: RunSpec, val: Optional[PredictionSet], fit: Any) -> Validation:
    """Validation statistics, and the synthetic-defect objective when something consumes it (it costs a few
    scoring passes over up to `objective_max_images` normals, so runs that nothing optimises skip it)."""
    n = len(val.scores) if val is not None else 0
    rec = Validation(count=int(n), mean_score=float(np.mean(val.scores)) if n else None,
                     std_score=float(np.std(val.scores)) if n else None, loss=fit.best_val_loss)
    why = spec.wants_objective
    if why is None:
        rec.objective_skipped = ("not requested: no hyper-parameter search consumes it "
                                 "(evaluation.objective=auto); set evaluation.objective=always to compute it")
        return rec
    import torch

    from ad.engine.validation import synthetic_anomaly_auroc

    ds = parts.data.dataset("val", spec.trainer.limit_val)
    if len(ds) == 0:
        rec.objective_skipped = "no validation normals to paste synthetic defects into"
        return rec
    # An evenly spread subset keeps every category represented and memory flat on large datasets.
    n = min(len(ds), spec.evaluation.objective_max_images)
    picks = np.linspace(0, len(ds) - 1, n).round().astype(int) if n else []
    images = torch.stack([ds[int(i)]["image"] for i in picks]) if n else torch.zeros(0)
    synthetic = synthetic_anomaly_auroc(score_function(parts.model, parts.trainer.device, parts.trainer.use_amp),
                                        images, seed=spec.seed)
    rec.objective_images = n
    rec.synthetic_auroc_levels = [v for k, v in synthetic.items() if k.startswith("auroc_level")]
    rec.objective = synthetic["objective"]
    return rec


def hparams(record: RunRecord) -> Dict[str, Any]:
    r = record.run
    return {"model": r.model, "dataset": r.dataset, "category": r.category, "setting": r.setting,
            "backbone": r.backbone or "none", "seed": r.seed, **r.params}


