"""The run pipeline: instantiate → fit → calibrate → score + evaluate → objective → write artefacts.

`run_experiment` reads top to bottom; each stage is a small function taking and returning typed values, and
the `RunRecord` it fills is the only thing results.json is written from. A failure at any stage is recorded
as data (status failed, one-line error) in results.json; Ctrl-C is recorded as "interrupted".
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np

from ad.engine import artefacts
from ad.rundir import layout
from ad.engine.evaluation import Calibration, calibrate, evaluate_category, mean_over_categories
from ad.io import peak_rss_mb, write_json
from ad.rundir.records import CategoryRecord, Counts, Memory, RunInfo, RunRecord, Timing, Training, Validation
from ad.engine.scoring import PredictionSet, score_function
from ad.engine.settings import RunSpec
from ad.errors import ADError, ConfigError

log = logging.getLogger("ad.run")


@dataclass
class Components:
    """The instantiated parts of a run (built by the entry point from the config's `_target_`s)."""

    data: Any  # an AnomalyDataModule, or a UnifiedData over several
    model: Any  # an AnomalyModel
    trainer: Any  # an ad.engine.trainer.Trainer
    logger_factory: Callable[[Path], Any]  # log_dir -> TensorBoardLogger
    categories: Dict[str, Any] = field(default_factory=dict)  # category -> its data module (evaluation order)
    model_factory: Optional[Callable[[], Any]] = None  # a fresh, unfitted model (cross-fitting few-shot runs)


def run_experiment(spec: RunSpec, build: Callable[[], Components], run_dir: Path) -> RunRecord:
    """Run one experiment end to end; never raises for a failed run (the failure is in the returned record),
    except when `run_dir` belongs to another live run (nothing is written there then)."""
    record = RunRecord(run=RunInfo(model=spec.model, dataset=spec.dataset, category=spec.category, seed=spec.seed,
                                   setting=spec.setting, params=dict(spec.params), run_name=spec.name, tag=spec.tag))
    t0 = time.perf_counter()
    try:
        lock = run_dir_lock(run_dir)
        lock.__enter__()
    except RunDirBusy as exc:  # another live run owns the directory: write nothing there
        record.status, record.error = "failed", str(exc)
        log.error("%s", exc)
        return record
    with recorded(record, run_dir, lock):
        artefacts.clear_previous(run_dir)
        write_json(run_dir / "results.json", record.to_dict())  # "running": a crash leaves a trace
        parts = build()
        record.run.backbone = getattr(parts.model, "backbone_name", None)
        record.run.categories = list(parts.categories)
        record.counts = count_images(parts)
        logger = parts.logger_factory(run_dir / "tb")
        maps = artefacts.maps_writer(run_dir, spec.evaluation)
        try:
            fit = parts.trainer.fit(parts.model, parts.data, run_dir=run_dir, logger=logger, identity=spec.identity)
            record.training = training_record(fit)
            val, source = held_out_normals(parts, spec)
            cal = calibrate(val, spec.evaluation, list(parts.categories), source)
            record.thresholds = cal.thresholds_record(spec.evaluation)
            record.notes += cal.notes + list(getattr(parts.model, "notes", []))
            rows, test_s = score_and_evaluate(parts, cal, spec, record, logger, run_dir, maps)
            record.validation = validation_record(parts, spec, val, fit)
            layout.write_predictions(run_dir, rows)
            if maps is not None:
                maps.close()
            layout.write_history(run_dir, fit.history)
            artefacts.save_model(run_dir, parts.model, spec, cal, parts.trainer.use_amp)
            record.timing = Timing(fit_s=fit.fit_s, predict_s=test_s, ms_per_image=1000.0 * test_s / max(1, len(rows)),
                                   total_s=time.perf_counter() - t0)
            record.memory = memory_record()
            logger.log_final(record, hparams(record))
        finally:
            logger.close()
            if maps is not None:
                maps.abort()  # a no-op once closed; drops a partial file when the run failed
        record.status = "ok"
    return record


# --- stages -----------------------------------------------------------------------------------------------
def count_images(parts: Components) -> Counts:
    t = parts.trainer
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
    t = parts.trainer
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
        part = t.predict(model, fold.dataloader("heldout", t.eval_batch_size), desc=f"scoring fold {i + 1}")
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


def score_and_evaluate(parts: Components, cal: Calibration, spec: RunSpec, record: RunRecord, logger: Any,
                       run_dir: Path, maps: Any = None) -> tuple[List[Dict[str, Any]], float]:
    """Score and evaluate one category at a time, so memory is bounded by the largest category, not the
    dataset (maps are dropped once evaluated). Returns the predictions.csv rows and the scoring time."""
    t = parts.trainer
    unified = len(parts.categories) > 1
    rows: List[Dict[str, Any]] = []
    seconds = 0.0
    per_category: Dict[str, CategoryRecord] = {}
    for name, module in parts.categories.items():
        loader = module.dataloader("test", t.eval_batch_size, limit=t.limit_test, num_workers=t.num_workers)
        test = t.predict(parts.model, loader, desc=f"scoring test images{f' of {name}' if unified else ''}")
        seconds += test.seconds
        rec = evaluate_category(test, cal, spec.evaluation, module.has_masks, cal.per_category.get(name) if unified else None)
        rec.counts = Counts(train=len(module.dataset("train", t.limit_train)), val=len(module.dataset("val", t.limit_val)),
                            test=rec.counts.test, test_anomalous=rec.counts.test_anomalous)
        per_category[name] = rec
        if maps is not None:  # test_maps.npz: this category's maps, before they are dropped
            maps.add(name, test.paths, test.labels, test.maps, test.masks, test.has_mask)
        cat_rows = artefacts.prediction_rows(test, cal, name)
        rows += cat_rows
        normalized = np.array([r["normalized_score"] for r in cat_rows])
        logger.log_test(f"{name}/" if unified else "", rec, test, normalized,
                        visualizations(module.dataset("test", t.limit_test), test, cal, t.num_visualizations))
    if unified:
        record.categories = per_category
        record.image, record.pixel = mean_over_categories(per_category)
        mads = [c.mad for c in per_category.values()]
        record.mad = None if any(m is None for m in mads) else float(np.mean(mads))
        record.notes += [f"{c}: {n}" for c, r in per_category.items() for n in r.notes]
    else:
        (only,) = per_category.values()
        record.image, record.pixel, record.per_defect, record.mad = only.image, only.pixel, only.per_defect, only.mad
        record.notes += only.notes
    return rows, seconds


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

    ds = parts.data.dataset("val", parts.trainer.limit_val)
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


def visualizations(dataset: Any, test: PredictionSet, cal: Calibration, n: int) -> List[Dict[str, Any]]:
    from ad.visualize import display_map, pick_visualizations

    picks = pick_visualizations(test.labels, test.scores, n)
    return [{"image": dataset[i]["image"].numpy(), "map": display_map(test.maps[i], cal.pixel_normalization),
             "mask": test.masks[i] if test.has_mask[i] else None, "caption": f"{Path(test.paths[i]).name} {cap}",
             "name": Path(test.paths[i]).name, "score": float(test.scores[i]), "label": int(test.labels[i]),
             "decision": None if cal.image_threshold is None else bool(test.scores[i] >= cal.image_threshold)}
            for i, cap in picks]


def memory_record() -> Memory:
    import torch

    mem = Memory(peak_rss_mb=peak_rss_mb())
    if torch.cuda.is_available():
        mem.peak_cuda_mb = torch.cuda.max_memory_allocated() / 2**20
    return mem


def hparams(record: RunRecord) -> Dict[str, Any]:
    r = record.run
    return {"model": r.model, "dataset": r.dataset, "category": r.category, "setting": r.setting,
            "backbone": r.backbone or "none", "seed": r.seed, **r.params}


# --- failure handling -------------------------------------------------------------------------------------
def record_failure(info: RunInfo, exc: BaseException, run_dir: Path) -> RunRecord:
    """A run that failed before it could start (bad values): its record, written like any other failure."""
    record = RunRecord(run=info)
    try:
        lock = run_dir_lock(run_dir)
        lock.__enter__()
    except RunDirBusy as busy:
        record.status, record.error = "failed", str(busy)
        return record
    with recorded(record, run_dir, lock):
        artefacts.clear_previous(run_dir)  # never leave an earlier run's model beside this failure
        raise exc
    return record


@contextmanager
def recorded(record: RunRecord, run_dir: Path, lock: Any = None) -> Iterator[None]:
    """Turn any failure inside into data: status failed + one line (the traceback of a bug goes to train.log),
    Ctrl-C into status interrupted; results.json is written in every case, then `lock` is released."""
    try:
        yield
    except KeyboardInterrupt:
        record.status, record.error = "interrupted", "interrupted (KeyboardInterrupt); start it again to resume"
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a record, never a lost run
        record.status, record.error = "failed", error_line(exc, run_dir)
        user_error = exc if isinstance(exc, ADError) else exc.__cause__  # instantiate() wraps a component's ADError
        if isinstance(user_error, ADError):
            log.error("%s", record.error)
        else:
            log.error("run failed: %s\n%s", record.error, traceback.format_exc())
    finally:
        if record.memory is None:
            record.memory = memory_record()
        try:
            _write_record(record, run_dir)
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)


def error_line(exc: BaseException, run_dir: Path) -> str:
    user_error = exc if isinstance(exc, ADError) else exc.__cause__
    if isinstance(user_error, ADError):
        text = str(user_error).splitlines()[0] if str(user_error) else user_error.__class__.__name__
    else:
        if exc.__class__.__name__ == "InstantiationException" and exc.__cause__ is not None:
            exc = exc.__cause__  # Hydra's wrapper says only which target failed; the cause says why
        first = str(exc).splitlines()[0] if str(exc) else ""
        text = f"{exc.__class__.__name__}: {first}".rstrip(": ")
    free = _free_mb(run_dir)
    if free is not None and free < 64 and "No space left" not in text:
        text = f"No space left on device ({free:.0f} MB free in {run_dir}): {text}"
    return text


def _free_mb(path: Path) -> Optional[float]:
    try:
        return shutil.disk_usage(path).free / 2**20
    except OSError:
        return None


def _write_record(record: RunRecord, run_dir: Path) -> None:
    """results.json even on a full disk: drop the run's own partial outputs to make room, then retry."""
    try:
        write_json(run_dir / "results.json", record.to_dict())
    except OSError:
        for name in ("model.pt", "predictions.csv", "history.csv", "test_maps.npz"):
            (run_dir / name).unlink(missing_ok=True)
        for tmp in list(run_dir.glob(".*.tmp")) + list((run_dir / "checkpoints").glob("*.tmp")):
            tmp.unlink(missing_ok=True)
        write_json(run_dir / "results.json", record.to_dict())


class RunDirBusy(ConfigError):
    """The run directory is owned by another live run."""


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Own `run_dir` for the duration of the run: a second live run pointed at it is refused (one line)
    instead of mixing files; a lock left by a dead process is taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _lock_pid(lock)
            if pid is not None and pid != os.getpid() and _alive(pid):
                raise RunDirBusy(f"run dir {run_dir} is in use by a live run (pid {pid}); wait for it or choose "
                                 "another hydra.run.dir") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        if _lock_pid(lock) == os.getpid():
            lock.unlink(missing_ok=True)


def _lock_pid(lock: Path) -> Optional[int]:
    try:
        return int(lock.read_text().strip() or "0") or None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
