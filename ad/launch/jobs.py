"""What a launcher knows about the jobs of a sweep: where each one writes, what its results.json says, how a
job that ended without a result of its own is recorded (failed, one line), and which jobs a resumed sweep may
skip. Shared by the joblib and SLURM launchers."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import open_dict

from ad.rundir.records import RecordError, RunInfo, RunRecord, load_record

log = logging.getLogger("ad.sweep")

FINISHED = ("ok", "failed", "interrupted")


def job_dir(hydra_context: Any, config: Any, idx: int, overrides: Sequence[str]) -> Path:
    """The directory job `idx` of a sweep runs in: composed exactly as the worker composes it."""
    from hydra.core.hydra_config import HydraConfig

    cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
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


def read_record(job: Path) -> Optional[RunRecord]:
    """The job's results.json, or None when it has none (or an unreadable one)."""
    try:
        return load_record(job / "results.json") if (job / "results.json").is_file() else None
    except RecordError:
        return None


def record_job_failure(job: Path, overrides: Sequence[str], error: str) -> RunRecord:
    """Record a job that ended without writing its own final record as failed with `error` (one line),
    keeping what its results.json already said about it."""
    from ad.io import write_json
    from ad.rundir.params import swept_params

    record = read_record(job) or RunRecord(run=RunInfo(params=swept_params(list(overrides))))
    record.status = "failed"
    record.error = error
    job.mkdir(parents=True, exist_ok=True)
    write_json(job / "results.json", record.to_dict())
    log.error("%s: %s", job.name, error)
    return record


def job_return(overrides: Sequence[str], record: RunRecord) -> JobReturn:
    """A completed JobReturn: the failure is in the record, so the sweep goes on (and Optuna sees None)."""
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret.return_value = record.validation.objective if (record.status == "ok" and record.validation) else None
    return ret


def _what(overrides: Sequence[str]) -> List[str]:
    """The overrides that decide what a job computes (identity choices and hyper-parameters), in order."""
    from ad.rundir.params import NAME_KEYS, is_param

    keys = [(o.lstrip("+~").partition("=")[0], str(o)) for o in overrides]
    return sorted(o for k, o in keys if k in NAME_KEYS or is_param(k))


def finished_ok(job: Path, overrides: Sequence[str]) -> Optional[RunRecord]:
    """The job's record when a resumed sweep may skip it: results.json says ok and the job ran with the same
    identity and hyper-parameter overrides (its .hydra/overrides.yaml; where/how keys such as the launcher or
    thread counts may differ); None otherwise (it runs again)."""
    from omegaconf import OmegaConf

    record = read_record(job)
    saved = job / ".hydra" / "overrides.yaml"
    if record is None or record.status != "ok" or not saved.is_file():
        return None
    try:
        before = [str(o) for o in OmegaConf.to_container(OmegaConf.load(saved))]
    except Exception:  # noqa: BLE001 - an unreadable overrides file: run the job again
        return None
    return record if _what(before) == _what(overrides) else None


__all__: List[Any] = ["FINISHED", "job_dir", "read_record", "record_job_failure", "job_return", "finished_ok"]
