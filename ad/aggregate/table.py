"""The table model: rows are (dataset, category), columns the groups of `--group`, cells the runs that fall in
them. `printed_rows` turns it into the rows every renderer prints: each `Value` carries its own column, numbers,
interval, significance and text, so no renderer re-aligns anything by position."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ad.aggregate.jobs import Job
from ad.aggregate.references import Reference, dataset_size

DEFAULT_METRICS = ("image.auroc", "pixel.auroc", "pixel.aupro")
# Leaves of results.json that are fractions in [0, 1]: shown in percent with one decimal, like the papers.
_FRACTION_LEAVES = {"auroc", "ap", "aupro", "f1_max", "f1", "mad", "accuracy", "precision", "recall", "iou"}
_LEAF_LABELS = {"auroc": "AUROC", "ap": "AP", "aupro": "AUPRO", "f1_max": "F1-max", "ms_per_image": "ms/image",
                "peak_rss_mb": "peak RSS MB", "fit_s": "fit s", "predict_s": "predict s", "mad": "mAD"}
# Datasets in the order papers list them; others follow alphabetically.
_DATASET_ORDER = ["mvtec", "visa", "btad", "synthetic", "folder"]
# A job's row (dataset, category) and its seed (averaged over) are never columns.
_AUTO_GROUP_EXCLUDE = {"dataset", "category", "seed", "trainer", "logger", "paths"}
Row = Tuple[str, str]


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
    from ad.rundir.params import is_param

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
        per_row: Dict[Row, set] = {}
        for j in ok:
            value = j.get(key)
            for r in j.rows:
                per_row.setdefault(r, set()).add(value)
        if any(len(v) > 1 for v in per_row.values()):
            out.append(key)
    return out


def auto_group(jobs: Sequence[Job]) -> List[str]:
    """The model, the setting when any run is unified (single vs unified are different experiments), and every
    other parameter that varies within a category."""
    group = ["model"]
    if any(j.get("setting") not in (None, "single") for j in jobs):
        group.append("setting")
    return group + [k for k in varying_keys(jobs) if k not in group and not _auto_excluded(k)]


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
class Stat:
    """What the statistics add to a cell: a bootstrap interval and the comparison with the baseline column."""

    ci: Optional[Tuple[float, float]] = None
    p: Optional[float] = None  # two-sided p-value of 'same as the baseline'
    test: str = ""  # "DeLong" | "paired bootstrap"
    sign: int = 0  # +1 significantly better than the baseline, -1 significantly worse, 0 neither


@dataclass
class Cell:
    values: List[float] = field(default_factory=list)
    replicates: List[Tuple] = field(default_factory=list)  # replicate key of each value (e.g. the seed)
    runs: List[Tuple[Job, str]] = field(default_factory=list)  # (job, category) of each value
    n_failed: int = 0
    n_missing: int = 0
    n_na: int = 0  # successful jobs without this metric (e.g. pixel metrics without masks)
    stat: Stat = field(default_factory=Stat)

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
    stat: Stat = field(default_factory=Stat)


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
    rows: List[Row]
    columns: List[Column]
    cells: Dict[Tuple[Row, Tuple, str], Cell]
    jobs: List[Job]
    replicate_keys: List[str]
    baseline: Optional[Column] = None
    mean_stats: Dict[Tuple[Tuple[Row, ...], Tuple, str], Stat] = field(default_factory=dict)
    alpha: float = 0.05

    @property
    def datasets(self) -> List[str]:
        out: List[str] = []
        for d, _ in self.rows:
            if d not in out:
                out.append(d)
        return out

    def dataset_rows(self, dataset: str) -> List[Row]:
        return [r for r in self.rows if r[0] == dataset]

    def cell(self, row: Row, col: Column, metric: str) -> Cell:
        return self.cells.get((row, col.key, metric)) or Cell()

    def has_jobs(self, rows: Sequence[Row], col: Column) -> bool:
        """Whether the column ran anything in these rows (paper numbers are only shown next to own runs)."""
        m = self.metrics[0]
        return any((c := self.cells.get((r, col.key, m))) is not None and (c.n + c.n_failed + c.n_missing + c.n_na)
                   for r in rows)

    def problems(self) -> List[Job]:
        return [j for j in self.jobs if j.status != "ok"]

    def mean_cell(self, rows: Sequence[Row], col: Column, metric: str) -> MeanCell:
        """Mean over categories of the per-category means; ± is the spread of that mean across replicates
        (e.g. seeds), given only when every category has the same replicates."""
        filled = [c for c in (self.cell(r, col, metric) for r in rows) if c.values]
        means = [_mean(c.values) for c in filled]
        stat = self.mean_stats.get((tuple(rows), col.key, metric)) or Stat()
        if not means:
            return MeanCell(None, None, 0, len(rows), stat)
        std = None
        by_rep = [dict(zip(c.replicates, c.values)) for c in filled]
        reps = set(by_rep[0])
        aligned = len(filled) == len(rows) and all(set(d) == reps and len(d) == c.n for d, c in zip(by_rep, filled))
        if aligned and len(reps) > 1:
            std = _std([_mean([d[r] for d in by_rep]) for r in reps])
        return MeanCell(_mean(means), std, len(means), len(rows), stat)

    def reference_mean(self, rows: Sequence[Row], col: Column, ref: Reference, metric: str,
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


def build_table(jobs: Sequence[Job], metrics: Sequence[str] = DEFAULT_METRICS,
                group: Optional[Sequence[str]] = None,
                references: Optional[Sequence[Reference]] = None) -> Table:
    group = list(group) if group else auto_group(jobs)
    replicate_keys = [k for k in varying_keys(jobs) if k not in group and k not in ("dataset", "category")]
    if "seed" not in replicate_keys and "seed" not in group:
        replicate_keys.append("seed")

    rows = sorted({r for j in jobs for r in j.rows}, key=lambda r: (_dataset_key(r[0]), _natural_key(r[1])))
    col_keys = sorted({tuple(j.get(k) for k in group) for j in jobs},
                      key=lambda t: tuple(_natural_key(v or "") for v in t))
    columns = []
    for key in col_keys:
        model = key[group.index("model")] if "model" in group else None
        refs = [r for r in (references or []) if model is not None and r.model == model]
        columns.append(Column(key=key, label=column_label(group, key), model=model, references=refs))

    cells: Dict[Tuple[Row, Tuple, str], Cell] = {}
    for j in jobs:
        ck = tuple(j.get(k) for k in group)
        rep = tuple(j.get(k) for k in replicate_keys)
        for row in j.rows:
            for m in metrics:
                c = cells.setdefault((row, ck, m), Cell())
                if j.status == "failed":
                    c.n_failed += 1
                elif j.status == "missing":
                    c.n_missing += 1
                elif (v := j.metric(m, row[1])) is None:
                    c.n_na += 1
                else:
                    c.values.append(v)
                    c.replicates.append(rep)
                    c.runs.append((j, row[1]))
    return Table(group=group, metrics=list(metrics), rows=rows, columns=columns, cells=cells, jobs=list(jobs),
                 replicate_keys=replicate_keys)


# ------------------------------------------------------------------------------------- printed rows


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


MARKERS = {1: "▲", -1: "▼", 0: ""}


def _stat_text(metric: str, stat: Stat) -> str:
    text = ""
    if stat.ci is not None:
        text += f" [{fmt_number(metric, stat.ci[0])}, {fmt_number(metric, stat.ci[1])}]"
    return text + MARKERS[stat.sign]


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
    text += _stat_text(metric, c.stat)
    if c.n_failed or c.n_missing:
        text += " †"
    return text


def mean_text(metric: str, mc: MeanCell) -> str:
    if mc.mean is None:
        return "—"
    text = fmt_number(metric, mc.mean)
    if mc.std is not None:
        text += f" ± {fmt_number(metric, mc.std)}"
    text += _stat_text(metric, mc.stat)
    if mc.n < mc.total:
        text += f" ({mc.n}/{mc.total})"
    return text


@dataclass(frozen=True)
class VCol:
    """One printed value column: a measured (column, metric), or the paper numbers of a reference for it."""

    column: Column
    metric: str
    ref: Optional[Reference] = None

    @property
    def header(self) -> str:
        if self.ref is not None:
            return f"{self.ref.label} (paper) · {metric_label(self.metric)}"
        return f"{self.column.label} · {metric_label(self.metric)}"


@dataclass
class Value:
    """One printed cell with everything a renderer needs."""

    vcol: VCol
    text: str
    mean: Optional[float] = None
    std: Optional[float] = None
    n: int = 0  # runs (category rows) or categories (mean rows) with a value
    n_missing: int = 0  # failed or missing runs (category rows), categories without a value (mean rows)
    stat: Stat = field(default_factory=Stat)
    published: bool = False  # a reference cell showing the paper's own dataset mean


@dataclass
class PrintedRow:
    kind: str  # "category" | "dataset_mean" | "overall_mean"
    dataset: str
    category: str
    values: List[Value]

    @property
    def label(self) -> Tuple[str, str]:
        return (self.dataset, self.category) if self.kind != "overall_mean" else ("all", "mean")


def _reference_shows_values(table: Table, col: Column, ref: Reference, metric: str) -> bool:
    """A paper column only when it has a comparable number next to this column's own runs."""
    for ds in table.datasets:
        rows = table.dataset_rows(ds)
        if not table.has_jobs(rows, col):
            continue
        if any(ref.value(ds, metric, r[1]) is not None and table.has_jobs([r], col) for r in rows):
            return True
        if table.reference_mean(rows, col, ref, metric, ds)[0] is not None:
            return True
    return False


def value_columns(table: Table) -> List[VCol]:
    out = []
    for col in table.columns:
        for m in table.metrics:
            out.append(VCol(col, m))
            for ref in col.references:
                if _reference_shows_values(table, col, ref, m):
                    out.append(VCol(col, m, ref))
    return out


def _category_value(table: Table, vc: VCol, row: Row) -> Value:
    if vc.ref is not None:
        v = vc.ref.value(row[0], vc.metric, row[1]) if table.has_jobs([row], vc.column) else None
        return Value(vc, fmt_number(vc.metric, v), mean=v)
    c = table.cell(row, vc.column, vc.metric)
    return Value(vc, cell_text(vc.metric, c), c.mean, c.std, c.n, c.n_failed + c.n_missing, c.stat)


def _mean_value(table: Table, vc: VCol, rows: Sequence[Row], dataset: Optional[str]) -> Value:
    if vc.ref is not None:
        if not table.has_jobs(rows, vc.column):
            return Value(vc, "")
        v, published = table.reference_mean(rows, vc.column, vc.ref, vc.metric, dataset)
        return Value(vc, fmt_number(vc.metric, v) + ("*" if published and v is not None else ""), mean=v,
                     published=published and v is not None)
    mc = table.mean_cell(rows, vc.column, vc.metric)
    return Value(vc, mean_text(vc.metric, mc), mc.mean, mc.std, mc.n, mc.total - mc.n, mc.stat)


def printed_rows(table: Table) -> List[PrintedRow]:
    """Every printed row, in order: each dataset's categories and its mean, then the overall mean."""
    vcols = value_columns(table)
    out: List[PrintedRow] = []
    for ds in table.datasets:
        rows = table.dataset_rows(ds)
        for r in rows:
            out.append(PrintedRow("category", r[0], r[1], [_category_value(table, vc, r) for vc in vcols]))
        out.append(PrintedRow("dataset_mean", ds, "mean", [_mean_value(table, vc, rows, ds) for vc in vcols]))
    if len(table.datasets) > 1:
        out.append(PrintedRow("overall_mean", "all", "mean", [_mean_value(table, vc, table.rows, None) for vc in vcols]))
    return out


def row_groups(table: Table) -> List[Tuple[str, Optional[str], List[Row]]]:
    """(kind, dataset, rows) of every mean row, in print order (what the statistics annotate)."""
    out: List[Tuple[str, Optional[str], List[Row]]] = [("dataset_mean", ds, table.dataset_rows(ds))
                                                       for ds in table.datasets]
    if len(table.datasets) > 1:
        out.append(("overall_mean", None, list(table.rows)))
    return out
