"""A joblib launcher that survives dead workers (`launcher=joblib`).

A job that fails normally is already a record (status failed) and never stops a sweep. A job whose worker
*process* dies — killed for using too much memory, a segfault in a native library — used to take the whole
joblib pool down with it: its siblings were killed mid-run, the rest never started, the end-of-sweep summary
was lost. Here, when the pool dies, every job that has not finished is run again on its own; a job that kills
its worker even when alone is the culprit, and is recorded as failed with the reason. The other jobs finish.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from omegaconf import open_dict

from ad.rundir.records import RecordError, RunInfo, RunRecord, load_record

log = logging.getLogger("ad.sweep")

DEAD_WORKER = ("TerminatedWorkerError", "BrokenProcessPool")
FINISHED = ("ok", "failed", "interrupted")


def _dead_worker(exc: BaseException) -> bool:
    return any(type(e).__name__ in DEAD_WORKER for e in (exc, exc.__cause__, exc.__context__) if e is not None)


class RobustJoblibLauncher(JoblibLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        try:
            return super().launch(job_overrides, initial_job_idx)
        except Exception as exc:  # noqa: BLE001 - only a dead pool is handled, anything else re-raises
            if not _dead_worker(exc):
                raise
            log.error("a sweep worker process died (%s); re-running the unfinished jobs one at a time",
                      str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        returns: List[JobReturn] = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            job_dir = self.job_dir(idx, overrides)
            record = _record(job_dir)
            if record is not None and record.status in FINISHED:
                returns.append(_job_return(overrides, record))
                continue
            try:
                returns += list(super().launch([overrides], idx))
            except Exception as exc:  # noqa: BLE001
                if not _dead_worker(exc):
                    raise
                returns.append(_job_return(overrides, mark_dead(job_dir, overrides, exc)))
        return returns

    def job_dir(self, idx: int, overrides: Sequence[str]) -> Path:
        """The directory job `idx` runs in: composed exactly as the worker composes it."""
        from hydra.core.hydra_config import HydraConfig

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
            cfg.hydra.job.num = idx
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(cfg)  # ${hydra:...} in the subdir pattern resolves against this job
        try:
            return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        finally:
            if previous is not None:
                HydraConfig.instance().set_config(previous)


def _record(job_dir: Path) -> Optional[RunRecord]:
    try:
        return load_record(job_dir / "results.json") if (job_dir / "results.json").is_file() else None
    except RecordError:
        return None


def mark_dead(job_dir: Path, overrides: Sequence[str], exc: BaseException) -> RunRecord:
    """Record a job whose worker died as failed, keeping what its results.json already said about it."""
    from ad.io import write_json
    from ad.rundir.params import swept_params

    record = _record(job_dir) or RunRecord(run=RunInfo(params=swept_params(list(overrides))))
    record.status = "failed"
    record.error = ("the job's worker process died (killed by the system, e.g. out of memory, or crashed) even "
                    f"when run alone: {type(exc).__name__}; lower its memory use (batch sizes, image size) and re-run it")
    job_dir.mkdir(parents=True, exist_ok=True)
    write_json(job_dir / "results.json", record.to_dict())
    log.error("%s: %s", job_dir.name, record.error)
    return record


def _job_return(overrides: Sequence[str], record: RunRecord) -> JobReturn:
    """A completed JobReturn: the failure is in the record, so the sweep goes on (and Optuna sees None)."""
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret.return_value = record.validation.objective if (record.status == "ok" and record.validation) else None
    return ret


__all__: List[Any] = ["RobustJoblibLauncher", "mark_dead"]
