"""Finding and reading job directories: `results.json` through the typed run records (`ad.rundir.records`,
which also converts files written before the schema had a version), plus `.hydra/overrides.yaml`,
`.hydra/config.yaml` and `.hydra/hydra.yaml` for what the job was asked to do."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from ad.rundir.records import RecordError, RunRecord, from_dict

MISSING_NOTE = "no results.json (crashed, killed or still running)"
# libyaml's parser when present: hydra.yaml / config.yaml of real jobs are long, and 1000 jobs read three each.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class AggregateError(Exception):
    """Bad input for the aggregator; printed as one line by `main`."""


def _load_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError):
        return None


def _dotted(tree: Any, key: str) -> Any:
    node = tree
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def format_value(value: Any) -> str:
    """One canonical string per value, so `0.10` (an override) and `0.1` (a config) fall in one group."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _parse_override_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def read_record(path: Path) -> Tuple[Optional[RunRecord], Optional[dict], Optional[str]]:
    """(record, the record as a JSON tree, error) of `path/results.json`; the one place results are parsed."""
    try:
        with open(path / "results.json", encoding="utf-8") as f:
            data = json.load(f)
        record = from_dict(data)
    except (OSError, ValueError) as e:  # json.JSONDecodeError and RecordError are ValueErrors
        kind = "results.json does not follow the schema" if isinstance(e, RecordError) else "unreadable results.json"
        return None, None, f"{kind} ({' '.join(str(e).split())}); re-run the job or delete its dir"
    return record, record.to_dict(), None


@dataclass
class Job:
    path: Path
    status: str  # "ok" | "failed" | "missing"
    error: Optional[str] = None
    record: Optional[RunRecord] = None
    results: Optional[dict] = None  # the record as a JSON tree (what --metrics paths address)
    overrides: Dict[str, Any] = field(default_factory=dict)
    config: Optional[dict] = None
    choices: Dict[str, Any] = field(default_factory=dict)

    # Where each well-known field is found, most authoritative first (results.json is what the job did).
    def get(self, key: str) -> Optional[str]:
        run = self.record.run if self.record is not None else None
        cfg = self.config or {}
        if key in ("model", "dataset", "backbone", "seed", "setting") and run is not None:
            if getattr(run, key) is not None:
                return format_value(getattr(run, key))
        if key == "model":
            cands = [self.choices.get("model"), self.overrides.get("model")]
        elif key == "dataset":
            cands = [self.choices.get("dataset"), self.overrides.get("dataset")]
        elif key == "category":
            cands = [run.category if run else None, _dotted(cfg, "dataset.category"), self.overrides.get("category")]
        elif key == "backbone":
            cands = [self.choices.get("backbone"), _dotted(cfg, "backbone.name")]
        elif key == "seed":
            cands = [cfg.get("seed"), self.overrides.get("seed")]
        elif key == "setting":
            cands = [_dotted(cfg, "setting.name"), "single"]
        else:
            cands = [self.overrides.get(key), _dotted(cfg, key), self.choices.get(key), _dotted(self.results, key)]
        for c in cands:
            if c is not None:
                return format_value(c)
        return None

    @property
    def unified(self) -> bool:
        return self.record is not None and self.record.categories is not None

    def categories(self) -> List[str]:
        """The categories this job evaluates: one row each (a unified run has several)."""
        if self.record is not None and self.record.categories is not None:
            return list(self.record.categories)
        if self.record is not None and len(self.record.run.categories) > 1:  # a failed unified run
            return list(self.record.run.categories)
        return [self.get("category") or "?"]

    def metric(self, name: str, category: Optional[str] = None) -> Optional[float]:
        if self.status != "ok" or self.record is None:
            return None
        v = self.record.metric(name, category if self.unified else None)
        return v if v is not None and math.isfinite(v) else None

    @property
    def rows(self) -> List[Tuple[str, str]]:
        ds = self.get("dataset") or "?"
        return [(ds, c) for c in self.categories()]

    @property
    def row(self) -> Tuple[str, str]:
        return self.rows[0]


def _is_job_dir(p: Path) -> bool:
    return (p / "results.json").is_file() or (p / ".hydra" / "overrides.yaml").is_file() or (
        p / ".hydra" / "config.yaml"
    ).is_file()


def find_job_dirs(root: Path) -> List[Path]:
    """Job directories below `root` (or `root` itself); a job's own sub-directories are not searched."""
    found: List[Path] = []
    for dirpath, dirnames, _ in os.walk(root):
        p = Path(dirpath)
        if _is_job_dir(p):
            found.append(p)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found


def load_job(path: Path) -> Job:
    hydra_dir = path / ".hydra"
    overrides: Dict[str, Any] = {}
    for item in _load_yaml(hydra_dir / "overrides.yaml") or []:
        text = str(item)
        if text.startswith("~"):
            continue
        key, sep, raw = text.lstrip("+").partition("=")
        if sep:
            overrides[key] = _parse_override_value(raw)
    config = _load_yaml(hydra_dir / "config.yaml")
    hydra_cfg = _load_yaml(hydra_dir / "hydra.yaml")
    choices = _dotted(hydra_cfg, "hydra.runtime.choices") or {}

    job = Job(path=path, status="missing", error=MISSING_NOTE, overrides=overrides,
              config=config if isinstance(config, dict) else None, choices=dict(choices))
    if (path / "results.json").is_file():
        record, tree, error = read_record(path)
        if record is None:
            job.error = error
            return job
        job.record, job.results = record, tree
        job.status = "ok" if record.status == "ok" else "failed"
        job.error = None if job.status == "ok" else (record.error or f"status: {record.status}")
        job.error = job.error if job.error is None else " ".join(str(job.error).split())
    return job


def collect_jobs(dirs: Sequence[Path]) -> List[Job]:
    jobs: List[Job] = []
    seen = set()
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise AggregateError(
                f"{d} is not a directory; pass the sweep directory printed by `python -m ad.train -m` (e.g. multirun/<date>)"
            )
        for p in find_job_dirs(d):
            rp = p.resolve()
            if rp not in seen:
                seen.add(rp)
                jobs.append(load_job(p))
    if not jobs:
        raise AggregateError(
            f"no job directories (with .hydra/ or results.json) under {', '.join(map(str, dirs))}; run a sweep first: "
            "python -m ad.train -m model=patchcore,padim category=syn_disc,syn_tiles"
        )
    return jobs
