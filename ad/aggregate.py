"""Turn sweep directories into paper-ready tables and plots.

    ad-aggregate [SWEEP_DIR ...] [--out DIR] [--metrics image.auroc,pixel.auroc,pixel.aupro]
                 [--group model,backbone] [--reference [NAMES]]

Every job directory below the given directories (a directory with `.hydra/` or `results.json`) is read:
`results.json` (written by the runner), `.hydra/overrides.yaml`, `.hydra/config.yaml` and `.hydra/hydra.yaml`.
Rows are (dataset, category); columns are the groups of `--group` (default: the model plus every parameter
that varies between jobs of the same category, seeds excepted) × the chosen metrics. Jobs that fall in the
same cell (seeds, or parameters left out of `--group`) are averaged: mean ± sample standard deviation.

A job whose `results.json` says `status: failed`, or that has no `results.json` (crashed, killed, still
running), is listed explicitly and never enters a mean. Outputs in `--out` (default: the first sweep dir):
results.md, results.csv (the table), jobs.csv (one row per job), results.tex, bars_<column>.png,
heatmap_image_auroc.png.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from ad.engine.records import from_dict

DEFAULT_METRICS = ("image.auroc", "pixel.auroc", "pixel.aupro")
REFERENCE_FILE = Path(__file__).with_name("reference_results.yaml")
HEATMAP_METRIC = "image.auroc"

# Leaves of results.json that are fractions in [0, 1]: shown in percent with one decimal, like the papers.
_FRACTION_LEAVES = {"auroc", "ap", "aupro", "f1_max", "f1", "mad", "accuracy", "precision", "recall", "iou"}
_LEAF_LABELS = {"mad": "mAD", "auroc": "AUROC", "ap": "AP", "aupro": "AUPRO", "f1_max": "F1-max", "ms_per_image": "ms/image",
                "peak_rss_mb": "peak RSS MB", "fit_s": "fit s", "predict_s": "predict s"}
# Categories per benchmark: a paper's dataset mean is only shown beside a mean over all of them.
def dataset_size(dataset: str) -> int:
    """How many categories a dataset has (its `conf/category/*.yaml` options; -1 when unknown)."""
    from ad.config import dataset_categories

    return len(dataset_categories(dataset)) or -1
# Datasets in the order papers list them; others follow alphabetically.
_DATASET_ORDER = ["mvtec", "visa", "btad", "synthetic", "folder"]
# Never used as automatic column groups: row keys, replicates, and knobs that do not change results.
# A job's row (dataset, category) and its seed (averaged over) are never columns.
_AUTO_GROUP_EXCLUDE = {"dataset", "category", "seed", "trainer", "logger", "paths"}

MISSING_NOTE = "no results.json (crashed, killed or still running)"


class AggregateError(Exception):
    """Bad input for the aggregator; printed as one line by `main`."""


# ----------------------------------------------------------------------------------------------- jobs


def _load_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
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


@dataclass
class Job:
    path: Path
    status: str  # "ok" | "failed" | "missing"
    error: Optional[str] = None
    results: Optional[dict] = None
    overrides: Dict[str, Any] = field(default_factory=dict)
    config: Optional[dict] = None
    choices: Dict[str, Any] = field(default_factory=dict)
    record: Any = None  # the job's RunRecord (ad.engine.records), read through load_record
    category: Optional[str] = None  # for one category row of a unified run

    # Where each well-known field is found, most authoritative first (results.json is what the job did).
    def get(self, key: str) -> Optional[str]:
        run = self.record.run if self.record is not None else None
        cfg = self.config or {}
        if key == "model":
            cands = [run and run.model, self.choices.get("model"), self.overrides.get("model")]
        elif key == "dataset":
            cands = [run and run.dataset, self.choices.get("dataset"), self.overrides.get("dataset")]
        elif key == "category":
            cands = [self.category, run and run.category, _dotted(cfg, "dataset.category"), self.overrides.get("category")]
        elif key == "backbone":
            cands = [run and run.backbone, self.choices.get("backbone"), _dotted(cfg, "backbone.name")]
        elif key == "seed":
            cands = [run and run.seed, cfg.get("seed"), self.overrides.get("seed")]
        elif key == "setting":
            cands = [run and run.setting, _dotted(cfg, "setting.name"), "single"]
        else:
            cands = [self.overrides.get(key), _dotted(cfg, key), self.choices.get(key), _dotted(self.results or {}, key)]
        for c in cands:
            if c is not None:
                return format_value(c)
        return None

    def metric(self, name: str) -> Optional[float]:
        if self.status != "ok" or self.record is None:
            return None
        v = self.record.metric(name, self.category)
        return v if v is not None and math.isfinite(v) else None

    @property
    def row(self) -> Tuple[str, str]:
        return (self.get("dataset") or "?", self.get("category") or "?")


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


def load_jobs(path: Path) -> List[Job]:
    """The rows one job dir contributes: one, or one per category of a unified run."""
    job = load_job(path)
    if job.record is None or job.record.categories is None:
        return [job]
    return [dataclasses.replace(job, category=c) for c in job.record.categories]


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
    res_path = path / "results.json"
    if res_path.is_file():
        try:
            with open(res_path, encoding="utf-8") as f:
                results = json.load(f)
            record = from_dict(results)
        except (OSError, ValueError) as e:
            job.error = f"unreadable results.json ({' '.join(str(e).split())}); re-run the job or delete its dir"
            return job
        job.results, job.record = results, record
        status = record.status
        job.status = "ok" if status == "ok" else "failed"
        job.error = None if job.status == "ok" else (record.error or f"status: {status}")
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
                jobs.extend(load_jobs(p))
    if not jobs:
        raise AggregateError(
            f"no job directories (with .hydra/ or results.json) under {', '.join(map(str, dirs))}; run a sweep first: "
            "python -m ad.train -m model=patchcore,padim category=syn_disc,syn_tiles"
        )
    return jobs


# ----------------------------------------------------------------------------------------- aggregation


def _natural_key(text: str) -> Tuple:
    parts = re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", text)
    key = []
    for part in parts:
        try:
            key.append((0, float(part), ""))
        except ValueError:
            key.append((1, 0.0, part))
    return tuple(key)


def _dataset_key(name: str) -> Tuple:
    return (_DATASET_ORDER.index(name), "") if name in _DATASET_ORDER else (len(_DATASET_ORDER), name)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _std(xs: Sequence[float]) -> Optional[float]:
    """Sample standard deviation (n-1): the spread one expects between reruns."""
    if len(xs) < 2:
        return None
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _auto_excluded(key: str) -> bool:
    """Keys that never become a column: a job's row identity, and where/how it ran (`NOT_PARAMS`, the same
    list the run names and sweep directory names use)."""
    from ad.engine.settings import is_param

    return key in _AUTO_GROUP_EXCLUDE or not is_param(key) and key != "setting"


def varying_keys(jobs: Sequence[Job]) -> List[str]:
    """Parameters that take different values between successful jobs of one (dataset, category).

    A key that only differs between categories (e.g. dataset.root per dataset) describes the row, not a
    method variant, so it does not become a column.
    """
    ok = [j for j in jobs if j.status == "ok"]
    keys = sorted({k for j in ok for k in j.overrides} | {"model", "setting"})
    out = []
    for key in keys:
        per_row: Dict[Tuple[str, str], set] = {}
        for j in ok:
            per_row.setdefault(j.row, set()).add(j.get(key))
        if any(len(v) > 1 for v in per_row.values()):
            out.append(key)
    return out


def auto_group(jobs: Sequence[Job]) -> List[str]:
    return ["model"] + [k for k in varying_keys(jobs) if k != "model" and not _auto_excluded(k)]


def _short_key(key: str, keys: Sequence[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    return leaf if sum(1 for k in keys if k.rsplit(".", 1)[-1] == leaf) == 1 else key


def column_label(group: Sequence[str], values: Sequence[Optional[str]]) -> str:
    parts = []
    for key, value in zip(group, values):
        v = "?" if value is None else value
        parts.append(v if key in ("model", "backbone") else f"{_short_key(key, group)}={v}")
    return " ".join(parts)


@dataclass
class Cell:
    values: List[float] = field(default_factory=list)
    replicates: List[Tuple] = field(default_factory=list)  # replicate key of each value (e.g. the seed)
    n_failed: int = 0
    n_missing: int = 0
    n_na: int = 0  # successful jobs without this metric (e.g. pixel metrics without masks)

    @property
    def mean(self) -> Optional[float]:
        return _mean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        return _std(self.values)

    @property
    def n(self) -> int:
        return len(self.values)


@dataclass
class MeanCell:
    mean: Optional[float]
    std: Optional[float]
    n: int  # categories averaged
    total: int  # categories in the row group


@dataclass
class Reference:
    name: str
    model: str
    label: str
    citation: str
    setting: str
    results: Dict[str, Dict[str, dict]]  # dataset -> metric -> {source, mean, per_category} (fractions)

    def value(self, dataset: str, metric: str, category: str) -> Optional[float]:
        return ((self.results.get(dataset) or {}).get(metric) or {}).get("per_category", {}).get(category)

    def published_mean(self, dataset: str, metric: str) -> Optional[float]:
        return ((self.results.get(dataset) or {}).get(metric) or {}).get("mean")

    def has(self, metric: str) -> bool:
        return any(metric in per_metric for per_metric in self.results.values())


@dataclass
class Column:
    key: Tuple[Optional[str], ...]
    label: str
    model: Optional[str]
    references: List[Reference] = field(default_factory=list)


@dataclass
class Table:
    group: List[str]
    metrics: List[str]
    rows: List[Tuple[str, str]]
    columns: List[Column]
    cells: Dict[Tuple[Tuple[str, str], Tuple, str], Cell]
    jobs: List[Job]
    replicate_keys: List[str]

    @property
    def datasets(self) -> List[str]:
        out: List[str] = []
        for d, _ in self.rows:
            if d not in out:
                out.append(d)
        return out

    def cell(self, row: Tuple[str, str], col: Column, metric: str) -> Cell:
        return self.cells.get((row, col.key, metric)) or Cell()

    def has_jobs(self, rows: Sequence[Tuple[str, str]], col: Column) -> bool:
        """Whether the column ran anything in these rows (paper numbers are only shown next to own runs)."""
        m = self.metrics[0]
        return any((c := self.cells.get((r, col.key, m))) is not None and (c.n + c.n_failed + c.n_missing + c.n_na)
                   for r in rows)

    def problems(self) -> List[Job]:
        return [j for j in self.jobs if j.status != "ok"]

    def mean_cell(self, rows: Sequence[Tuple[str, str]], col: Column, metric: str) -> MeanCell:
        """Mean over categories of the per-category means; ± is the spread of that mean across replicates
        (e.g. seeds), given only when every category has the same replicates."""
        filled = [c for c in (self.cell(r, col, metric) for r in rows) if c.values]
        means = [_mean(c.values) for c in filled]
        if not means:
            return MeanCell(None, None, 0, len(rows))
        std = None
        by_rep = [dict(zip(c.replicates, c.values)) for c in filled]
        reps = set(by_rep[0])
        aligned = len(filled) == len(rows) and all(set(d) == reps and len(d) == c.n for d, c in zip(by_rep, filled))
        if aligned and len(reps) > 1:
            std = _std([_mean([d[r] for d in by_rep]) for r in reps])
        return MeanCell(_mean(means), std, len(means), len(rows))

    def reference_mean(self, rows: Sequence[Tuple[str, str]], col: Column, ref: Reference, metric: str,
                       dataset: Optional[str]) -> Tuple[Optional[float], bool]:
        """(value, is_published_mean): the reference averaged over the categories this column has values for,
        or else, when the column covers every category of the dataset, the paper's own mean."""
        have = [r for r in rows if self.cell(r, col, metric).mean is not None]
        vals = [ref.value(r[0], metric, r[1]) for r in have]
        if have and all(v is not None for v in vals):
            return _mean([v for v in vals if v is not None]), False
        # a paper's own mean compares only with a mean over the same, complete category set
        if dataset is not None and len(have) == dataset_size(dataset):
            pm = ref.published_mean(dataset, metric)
            if pm is not None:
                return pm, True
        return None, False


def load_references(path: Path = REFERENCE_FILE, names: Optional[Sequence[str]] = None) -> List[Reference]:
    data = _load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise AggregateError(f"{path}: expected a mapping 'entries: {{name: {{model, label, citation, results}}}}'")
    refs: List[Reference] = []
    for name, e in data["entries"].items():
        results: Dict[str, Dict[str, dict]] = {}
        for ds, per_metric in (e.get("results") or {}).items():
            for metric, spec in (per_metric or {}).items():
                per_cat = {str(k): float(v) / 100.0 for k, v in (spec.get("per_category") or {}).items()}
                mean = spec.get("mean")
                results.setdefault(str(ds), {})[str(metric)] = {
                    "source": spec.get("source", ""),
                    "mean": None if mean is None else float(mean) / 100.0,
                    "per_category": per_cat,
                }
        refs.append(Reference(name=str(name), model=str(e.get("model", name)), label=str(e.get("label", name)),
                              citation=str(e.get("citation", "")), setting=str(e.get("setting", "")),
                              results=results))
    if names:
        unknown = [n for n in names if n not in {r.name for r in refs}]
        if unknown:
            raise AggregateError(
                f"--reference: unknown entr{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} in {path}; "
                f"available: {', '.join(r.name for r in refs)}"
            )
        refs = [r for r in refs if r.name in names]
    return refs


def build_table(jobs: Sequence[Job], metrics: Sequence[str] = DEFAULT_METRICS,
                group: Optional[Sequence[str]] = None,
                references: Optional[Sequence[Reference]] = None) -> Table:
    group = list(group) if group else auto_group(jobs)
    replicate_keys = [k for k in varying_keys(jobs) if k not in group and k not in ("dataset", "category")]
    if "seed" not in replicate_keys and "seed" not in group:
        replicate_keys.append("seed")

    rows = sorted({j.row for j in jobs}, key=lambda r: (_dataset_key(r[0]), _natural_key(r[1])))
    col_keys = sorted({tuple(j.get(k) for k in group) for j in jobs},
                      key=lambda t: tuple(_natural_key(v or "") for v in t))
    columns = []
    for key in col_keys:
        model = key[group.index("model")] if "model" in group else None
        refs = [r for r in (references or []) if model is not None and r.model == model]
        columns.append(Column(key=key, label=column_label(group, key), model=model, references=refs))

    cells: Dict[Tuple[Tuple[str, str], Tuple, str], Cell] = {}
    for j in jobs:
        ck = tuple(j.get(k) for k in group)
        rep = tuple(j.get(k) for k in replicate_keys)
        for m in metrics:
            c = cells.setdefault((j.row, ck, m), Cell())
            if j.status == "failed":
                c.n_failed += 1
            elif j.status == "missing":
                c.n_missing += 1
            else:
                v = j.metric(m)
                if v is None:
                    c.n_na += 1
                else:
                    c.values.append(v)
                    c.replicates.append(rep)
    return Table(group=group, metrics=list(metrics), rows=rows, columns=columns, cells=cells, jobs=list(jobs),
                 replicate_keys=replicate_keys)


# ------------------------------------------------------------------------------------------ rendering


def metric_label(metric: str) -> str:
    head, _, leaf = metric.rpartition(".")
    leaf_label = _LEAF_LABELS.get(leaf, leaf)
    return f"{head} {leaf_label}".strip()


def is_fraction(metric: str) -> bool:
    return metric.rsplit(".", 1)[-1] in _FRACTION_LEAVES


def fmt_number(metric: str, v: Optional[float]) -> str:
    if v is None:
        return ""
    if is_fraction(metric):
        return f"{100.0 * v:.1f}"
    return f"{v:.4g}"


def cell_text(metric: str, c: Cell) -> str:
    if c.mean is None:
        if c.n_failed:
            return "failed"
        if c.n_missing:
            return "missing"
        if c.n_na:
            return "n/a"
        return "—"
    text = fmt_number(metric, c.mean)
    if c.std is not None:
        text += f" ± {fmt_number(metric, c.std)}"
    if c.n_failed or c.n_missing:
        text += " †"
    return text


def mean_text(metric: str, mc: MeanCell) -> str:
    if mc.mean is None:
        return "—"
    text = fmt_number(metric, mc.mean)
    if mc.std is not None:
        text += f" ± {fmt_number(metric, mc.std)}"
    if mc.n < mc.total:
        text += f" ({mc.n}/{mc.total})"
    return text


@dataclass
class _Col:
    """One printed value column: a measured (column, metric) or its reference."""

    column: Column
    metric: str
    ref: Optional[Reference] = None

    @property
    def header(self) -> str:
        if self.ref is not None:
            return f"{self.ref.label} (paper) · {metric_label(self.metric)}"
        return f"{self.column.label} · {metric_label(self.metric)}"


def _reference_shows_values(table: Table, col: Column, ref: Reference, metric: str) -> bool:
    """A paper column only when it has a comparable number next to this column's own runs."""
    for ds in table.datasets:
        rows = [r for r in table.rows if r[0] == ds]
        if not table.has_jobs(rows, col):
            continue
        if any(ref.value(ds, metric, r[1]) is not None and table.has_jobs([r], col) for r in rows):
            return True
        if table.reference_mean(rows, col, ref, metric, ds)[0] is not None:
            return True
    return False


def _value_columns(table: Table) -> List[_Col]:
    out = []
    for col in table.columns:
        for m in table.metrics:
            out.append(_Col(col, m))
            for ref in col.references:
                if _reference_shows_values(table, col, ref, m):
                    out.append(_Col(col, m, ref))
    return out


def table_rows(table: Table) -> Tuple[List[Tuple[str, List[str], str]], bool]:
    """(kind, cells, dataset) for every printed row; kind is "category", "dataset_mean" or "overall_mean";
    and whether a reference cell shows a paper's own mean (marked `*`)."""
    vcols = _value_columns(table)
    out: List[Tuple[str, List[str], str]] = []
    published_used = False

    def ref_category(vc: _Col, row: Tuple[str, str]) -> str:
        assert vc.ref is not None
        if not table.has_jobs([row], vc.column):
            return ""
        return fmt_number(vc.metric, vc.ref.value(row[0], vc.metric, row[1]))

    def ref_mean(vc: _Col, rows: Sequence[Tuple[str, str]], dataset: Optional[str]) -> str:
        nonlocal published_used
        assert vc.ref is not None
        if not table.has_jobs(rows, vc.column):
            return ""
        v, published = table.reference_mean(rows, vc.column, vc.ref, vc.metric, dataset)
        if v is None:
            return ""
        published_used |= published
        return fmt_number(vc.metric, v) + ("*" if published else "")

    for ds in table.datasets:
        rows = [r for r in table.rows if r[0] == ds]
        for r in rows:
            vals = [ref_category(vc, r) if vc.ref else cell_text(vc.metric, table.cell(r, vc.column, vc.metric))
                    for vc in vcols]
            out.append(("category", [r[0], r[1]] + vals, ds))
        vals = [ref_mean(vc, rows, ds) if vc.ref else mean_text(vc.metric, table.mean_cell(rows, vc.column, vc.metric))
                for vc in vcols]
        out.append(("dataset_mean", [ds, "mean"] + vals, ds))
    if len(table.datasets) > 1:
        vals = [ref_mean(vc, table.rows, None) if vc.ref else
                mean_text(vc.metric, table.mean_cell(table.rows, vc.column, vc.metric)) for vc in vcols]
        out.append(("overall_mean", ["all", "mean"] + vals, ""))
    return out, published_used


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(table: Table, sources: Sequence[Path] = (), plots: Sequence[str] = ()) -> str:
    vcols = _value_columns(table)
    header = ["dataset", "category"] + [vc.header for vc in vcols]
    rows, published_used = table_rows(table)
    n_ok = sum(j.status == "ok" for j in table.jobs)
    n_failed = sum(j.status == "failed" for j in table.jobs)
    n_missing = sum(j.status == "missing" for j in table.jobs)

    out = io.StringIO()
    out.write("# Results\n\n")
    if sources:
        out.write("Sweeps: " + ", ".join(f"`{s}`" for s in sources) + "\n\n")
    out.write(f"Jobs: {len(table.jobs)} ({n_ok} ok, {n_failed} failed, {n_missing} missing). "
              f"Columns grouped by: {', '.join(table.group)}")
    if table.replicate_keys:
        out.write(f"; runs differing only in {', '.join(table.replicate_keys)} are averaged")
    out.write(".\n\n")
    out.write("| " + " | ".join(_md_escape(h) for h in header) + " |\n")
    out.write("|" + "|".join(["---", "---"] + [":---:"] * len(vcols)) + "|\n")
    for kind, cells, _ in rows:
        if kind != "category":
            cells = [f"**{cells[0]}**", f"**{cells[1]}**"] + cells[2:]
        out.write("| " + " | ".join(_md_escape(c) for c in cells) + " |\n")
    out.write("\n")
    out.write(
        "AUROC / AP / AUPRO / F1 in %. `a ± s`: mean and sample standard deviation over the runs of a cell. "
        "Means are over categories (each category weighs the same); `(n/m)`: only n of the m categories have "
        "a value. `†`: some runs of the cell failed or are missing (listed below; never averaged). "
        "`failed` / `missing`: no successful run; `n/a`: the metric does not exist for that data "
        "(e.g. pixel metrics without masks); `—`: no run.\n"
    )
    if published_used:
        out.write("`*`: the paper's own dataset mean (it does not list every category; the sweep covers all of "
                  "them).\n")
    refs = {vc.ref.name: vc.ref for vc in vcols if vc.ref is not None}
    if refs:
        out.write("\n## Published numbers\n\n")
        for r in refs.values():
            sources_txt = "; ".join(sorted({f"{ds} {m}: {spec['source']}" for ds, pm in r.results.items()
                                            for m, spec in pm.items() if m in table.metrics}))
            out.write(f"- **{r.label}** — {r.citation}. Setting: {r.setting}. Source: {sources_txt}.\n")
    problems = table.problems()
    out.write(f"\n## Failed or missing jobs ({len(problems)})\n\n")
    if problems:
        out.write("| status | model | dataset | category | job | error |\n|---|---|---|---|---|---|\n")
        for j in sorted(problems, key=lambda j: str(j.path)):
            out.write("| " + " | ".join(_md_escape(x) for x in [
                j.status, j.get("model") or "?", j.row[0], j.row[1], f"`{j.path}`", j.error or ""]) + " |\n")
    else:
        out.write("None.\n")
    if plots:
        out.write("\n## Plots\n\n")
        for p in plots:
            out.write(f"![{p}]({p})\n")
    return out.getvalue()


def write_results_csv(table: Table, path: Path) -> None:
    """The table, machine-readable: raw fractions, one row per printed row. For mean rows `n` counts the
    categories averaged and `n_failed` those without a value."""
    vcols = _value_columns(table)
    header = ["dataset", "category"]
    for vc in vcols:
        if vc.ref is not None:
            header.append(f"{vc.ref.label} (paper) | {vc.metric}")
        else:
            header += [f"{vc.column.label} | {vc.metric} | {s}" for s in ("mean", "std", "n", "n_failed")]

    def num(v: Optional[float]) -> str:
        return "" if v is None else repr(float(v))

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        groups = [(ds, [r for r in table.rows if r[0] == ds]) for ds in table.datasets]
        for ds, rows in groups:
            for r in rows:
                line: List[str] = [r[0], r[1]]
                for vc in vcols:
                    if vc.ref is not None:
                        shown = table.has_jobs([r], vc.column)
                        line.append(num(vc.ref.value(r[0], vc.metric, r[1]) if shown else None))
                    else:
                        c = table.cell(r, vc.column, vc.metric)
                        line += [num(c.mean), num(c.std), str(c.n), str(c.n_failed + c.n_missing)]
                w.writerow(line)
            w.writerow(_csv_mean_line(table, vcols, rows, [ds, "mean"], ds, num))
        if len(table.datasets) > 1:
            w.writerow(_csv_mean_line(table, vcols, table.rows, ["all", "mean"], None, num))


def _csv_mean_line(table: Table, vcols: List[_Col], rows, head: List[str], dataset: Optional[str], num) -> List[str]:
    line = list(head)
    for vc in vcols:
        if vc.ref is not None:
            shown = table.has_jobs(rows, vc.column)
            line.append(num(table.reference_mean(rows, vc.column, vc.ref, vc.metric, dataset)[0] if shown else None))
        else:
            mc = table.mean_cell(rows, vc.column, vc.metric)
            line += [num(mc.mean), num(mc.std), str(mc.n), str(mc.total - mc.n)]
    return line


def write_jobs_csv(table: Table, path: Path, extra_metrics: Sequence[str] = ()) -> None:
    metrics = list(dict.fromkeys(list(table.metrics) + list(extra_metrics)))
    keys = list(dict.fromkeys(["model", "dataset", "category", "backbone", "seed"] + table.group))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["job", "status", "error"] + keys + ["overrides"] + metrics)
        for j in sorted(table.jobs, key=lambda j: str(j.path)):
            overrides = " ".join(f"{k}={format_value(v)}" for k, v in j.overrides.items())
            vals = [j.metric(m) for m in metrics]
            w.writerow([str(j.path), j.status, j.error or ""] + [j.get(k) or "" for k in keys] + [overrides]
                       + ["" if v is None else repr(v) for v in vals])


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(table: Table) -> str:
    """A booktabs table: one column group per model (measured + paper), best value per row in bold."""
    vcols = _value_columns(table)
    rows, _ = table_rows(table)
    # best measured mean per printed row and metric (fraction metrics: higher is better)
    best: Dict[Tuple[int, str], float] = {}
    numeric: Dict[Tuple[int, int], Optional[float]] = {}
    row_sets = []
    for ds in table.datasets:
        rs = [r for r in table.rows if r[0] == ds]
        row_sets += [[r] for r in rs] + [rs]
    if len(table.datasets) > 1:
        row_sets.append(list(table.rows))
    for i, rs in enumerate(row_sets):
        for k, vc in enumerate(vcols):
            if vc.ref is not None:
                continue
            v = table.cell(rs[0], vc.column, vc.metric).mean if len(rs) == 1 and rows[i][0] == "category" \
                else table.mean_cell(rs, vc.column, vc.metric).mean
            numeric[(i, k)] = v
            if v is not None and is_fraction(vc.metric):
                best[(i, vc.metric)] = max(best.get((i, vc.metric), -math.inf), v)
    multi = len(table.columns) > 1

    spans: List[Tuple[Column, int]] = []  # one header group per column: its measured + paper value columns
    for vc in vcols:
        if spans and spans[-1][0] is vc.column:
            spans[-1] = (vc.column, spans[-1][1] + 1)
        else:
            spans.append((vc.column, 1))
    out = io.StringIO()
    out.write("% Generated by ad-aggregate. Needs \\usepackage{booktabs}.\n")
    out.write("\\begin{table}[t]\n\\centering\n\\small\n")
    out.write("\\begin{tabular}{ll" + "c" * len(vcols) + "}\n\\toprule\n")
    out.write(" & & " + " & ".join(f"\\multicolumn{{{n}}}{{c}}{{{latex_escape(col.label)}}}" for col, n in spans) + " \\\\\n")
    start = 3
    rules = []
    for _, n in spans:
        rules.append(f"\\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    out.write("".join(rules) + "\n")
    sub = [latex_escape(metric_label(vc.metric)) + (f" ({latex_escape(vc.ref.label)})" if vc.ref else "")
           for vc in vcols]
    out.write("Dataset & Category & " + " & ".join(sub) + " \\\\\n\\midrule\n")
    prev_ds = None
    for i, (kind, cells, ds) in enumerate(rows):
        values = []
        for k, (vc, text) in enumerate(zip(vcols, cells[2:])):
            t = latex_escape(text).replace("±", "$\\pm$").replace("†", "$^\\dagger$").replace("—", "--")
            v = numeric.get((i, k))
            if multi and vc.ref is None and v is not None and best.get((i, vc.metric)) == v:
                t = f"\\textbf{{{t}}}"
            values.append(t)
        if kind == "category":
            first = latex_escape(cells[0]) if cells[0] != prev_ds else ""
            prev_ds = cells[0]
            out.write(f"{first} & {latex_escape(cells[1])} & " + " & ".join(values) + " \\\\\n")
        else:
            out.write(f"\\cmidrule(lr){{2-{2 + len(vcols)}}}\n" if kind == "dataset_mean" else "\\midrule\n")
            label = "\\textit{mean}" if kind == "dataset_mean" else "\\textbf{all} & \\textit{mean}"
            lead = f" & {label}" if kind == "dataset_mean" else label
            out.write(f"{lead} & " + " & ".join(values) + " \\\\\n")
            if kind == "dataset_mean" and ds != table.datasets[-1]:
                out.write("\\midrule\n")
    out.write("\\bottomrule\n\\end{tabular}\n")
    caption = ("Anomaly detection results (\\%). Mean $\\pm$ sample std over runs; best per row in bold; "
               "$^\\dagger$: some runs failed.")
    if table.problems():
        caption += f" {len(table.problems())} failed/missing job(s) excluded."
    out.write(f"\\caption{{{caption}}}\n\\label{{tab:ad-results}}\n\\end{{table}}\n")
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- plots


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "column"


def _figure(width: float, height: float):
    # The Agg canvas directly, without pyplot: no global backend state, works headless and in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_bars(table: Table, out_dir: Path) -> List[Path]:
    """Per column group (model): one bar per category and metric, error bars = std, paper values as ticks."""
    paths = []
    labels = [f"{d}/{c}" for d, c in table.rows]
    n_m = len(table.metrics)
    for col in table.columns:
        fig = _figure(max(6.0, 0.55 * len(labels) * max(n_m, 1) ** 0.5 + 2.0) + 2.5, 4.2)
        ax = fig.add_subplot(1, 1, 1)
        width = 0.8 / max(n_m, 1)
        scale_pct = all(is_fraction(m) for m in table.metrics)
        for k, m in enumerate(table.metrics):
            xs, ys, errs, marks = [], [], [], []
            for i, r in enumerate(table.rows):
                c = table.cell(r, col, m)
                x = i - 0.4 + width * (k + 0.5)
                if c.mean is None:
                    if c.n_failed or c.n_missing:
                        marks.append(x)
                    continue
                f = 100.0 if scale_pct else 1.0
                xs.append(x)
                ys.append(c.mean * f)
                errs.append((c.std or 0.0) * f)
            ax.bar(xs, ys, width=width * 0.95, yerr=errs, capsize=2, label=metric_label(m))
            for x in marks:
                ax.text(x, 1.0, "×", ha="center", va="bottom", color="red", fontsize=11)
            for ref in col.references:
                rx = [i - 0.4 + width * (k + 0.5) for i, r in enumerate(table.rows)
                      if ref.value(r[0], m, r[1]) is not None]
                ry = [ref.value(r[0], m, r[1]) * (100.0 if scale_pct else 1.0) for r in table.rows
                      if ref.value(r[0], m, r[1]) is not None]
                if rx:
                    ax.scatter(rx, ry, marker="_", s=200, color="black", zorder=3,
                               label=f"{ref.label} (paper) {metric_label(m)}")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        if scale_pct:
            ax.set_ylim(0, 105)
            ax.set_ylabel("%")
        ax.set_title(f"{col.label}  (× = failed/missing)" if any(
            table.cell(r, col, m).mean is None and (table.cell(r, col, m).n_failed or table.cell(r, col, m).n_missing)
            for r in table.rows for m in table.metrics) else col.label)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        p = out_dir / f"bars_{_slug(col.label)}.png"
        fig.savefig(p, format="png")
        paths.append(p)
    return paths


def plot_heatmap(table: Table, out_dir: Path, metric: str = HEATMAP_METRIC) -> Optional[Path]:
    """Column groups × categories, colour = mean `metric`; failed/missing cells hatched and labelled."""
    import numpy as np

    if not table.columns or not table.rows:
        return None
    cells = {}
    if metric not in table.metrics:  # the heatmap metric is always image AUROC, chosen metrics or not
        table = build_table(table.jobs, [metric], table.group, [r for c in table.columns for r in c.references])
    data = np.full((len(table.columns), len(table.rows)), np.nan)
    for i, col in enumerate(table.columns):
        for k, r in enumerate(table.rows):
            c = table.cell(r, col, metric)
            cells[(i, k)] = c
            if c.mean is not None:
                data[i, k] = c.mean * (100.0 if is_fraction(metric) else 1.0)
    fig = _figure(max(4.0, 0.75 * len(table.rows) + 3.0), max(2.5, 0.5 * len(table.columns) + 1.8))
    ax = fig.add_subplot(1, 1, 1)
    finite = data[np.isfinite(data)]
    vmin = float(finite.min()) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    if is_fraction(metric):
        vmin, vmax = min(vmin, 50.0), 100.0
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    for (i, k), c in cells.items():
        if c.mean is not None:
            v = data[i, k]
            ax.text(k, i, fmt_number(metric, c.mean), ha="center", va="center", fontsize=7,
                    color="white" if v < (vmin + vmax) / 2 else "black")
        else:
            ax.text(k, i, cell_text(metric, c), ha="center", va="center", fontsize=7, color="red")
    ax.set_xticks(range(len(table.rows)))
    ax.set_xticklabels([f"{d}/{c}" for d, c in table.rows], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(table.columns)))
    ax.set_yticklabels([c.label for c in table.columns], fontsize=8)
    ax.set_title(metric_label(metric) + (" (%)" if is_fraction(metric) else ""))
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    p = out_dir / f"heatmap_{_slug(metric.replace('.', '_'))}.png"
    fig.savefig(p, format="png")
    return p


# ------------------------------------------------------------------------------------------------ API


def aggregate(dirs: Sequence[os.PathLike | str] = ("multirun",), out: Optional[os.PathLike | str] = None,
              metrics: Sequence[str] = DEFAULT_METRICS, group: Optional[Sequence[str]] = None,
              reference: Optional[Sequence[str]] | bool = None, reference_file: Path = REFERENCE_FILE,
              plots: bool = True) -> Dict[str, Any]:
    """Read the jobs under `dirs`, write the outputs into `out`; returns {"table", "markdown", "paths"}."""
    dirs = [Path(d) for d in dirs] or [Path("multirun")]
    jobs = collect_jobs(dirs)
    ok = [j for j in jobs if j.status == "ok"]
    if ok:
        unknown = [m for m in metrics if not any(_path_known(j.results, m) for j in ok)]
        if unknown:
            avail = sorted({k for j in ok for k in _numeric_paths(j.results)})
            raise AggregateError(f"--metrics: {', '.join(unknown)} not in any results.json; available: {', '.join(avail)}")
    refs: List[Reference] = []
    if reference:
        refs = load_references(reference_file, None if reference is True else list(reference))
    table = build_table(jobs, metrics, group, refs)
    out_dir = Path(out) if out is not None else dirs[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Path] = {}
    plot_names: List[str] = []
    if plots:
        try:
            for p in plot_bars(table, out_dir):
                paths[p.stem] = p
                plot_names.append(p.name)
            hp = plot_heatmap(table, out_dir)
            if hp is not None:
                paths[hp.stem] = hp
                plot_names.insert(0, hp.name)
        except ImportError as e:  # matplotlib is a hard dependency, but keep tables when it is broken
            print(f"ad-aggregate: plots skipped ({e})", file=sys.stderr)
    md = render_markdown(table, sources=dirs, plots=plot_names)
    paths["md"] = out_dir / "results.md"
    paths["md"].write_text(md, encoding="utf-8")
    paths["csv"] = out_dir / "results.csv"
    write_results_csv(table, paths["csv"])
    paths["jobs_csv"] = out_dir / "jobs.csv"
    write_jobs_csv(table, paths["jobs_csv"])
    paths["tex"] = out_dir / "results.tex"
    paths["tex"].write_text(render_latex(table), encoding="utf-8")
    return {"table": table, "markdown": md, "paths": paths}


def _path_known(tree: Any, key: str) -> bool:
    """True when `key` exists in results.json, or a parent is an explicit null (e.g. `pixel: null`)."""
    node = tree
    for part in key.split("."):
        if node is None:
            return True
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _numeric_paths(tree: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _numeric_paths(v, f"{prefix}{k}.")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield prefix[:-1]


def _split_list(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ad-aggregate",
        description="Tables (Markdown, CSV, LaTeX) and plots from the results.json of Hydra sweep directories.",
    )
    p.add_argument("dirs", nargs="*", default=["multirun"], metavar="SWEEP_DIR",
                   help="sweep directories (searched recursively; default: multirun/)")
    p.add_argument("--out", default=None, help="output directory (default: the first SWEEP_DIR)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help="comma-separated results.json paths (default: %(default)s)")
    p.add_argument("--group", default="auto",
                   help="comma-separated keys forming the columns, e.g. model,backbone or model,model.coreset_ratio "
                        "(default auto: model + parameters varying within a category, seeds averaged)")
    p.add_argument("--reference", nargs="?", const="all", default=None, metavar="NAMES",
                   help="add published numbers next to each model (all entries, or comma-separated entry names)")
    p.add_argument("--reference-file", default=str(REFERENCE_FILE), help="YAML of published results (default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the Markdown table")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    reference: Optional[Sequence[str]] | bool = None
    if args.reference is not None:
        reference = True if args.reference == "all" else _split_list(args.reference)
    group = None if args.group in ("", "auto") else _split_list(args.group)
    try:
        res = aggregate(args.dirs, out=args.out, metrics=_split_list(args.metrics), group=group,
                        reference=reference, reference_file=Path(args.reference_file), plots=not args.no_plots)
    except AggregateError as e:
        print(f"ad-aggregate: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        try:
            print(res["markdown"])
            sys.stdout.flush()
        except BrokenPipeError:  # `ad-aggregate ... | head`: the files are written, stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    out_dir = res["paths"]["md"].parent
    print(f"ad-aggregate: wrote {', '.join(sorted(p.name for p in res['paths'].values()))} to {out_dir}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
