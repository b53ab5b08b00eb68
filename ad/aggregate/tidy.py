"""Tidy views of a table: one row per variant (model × setting × swept values), metrics as columns, one table
per dataset — what the terminal and results.md show; `results_long.csv` (one line per variant, category or
mean, and metric) for machines; and `load(dirs)`, a pandas DataFrame of every job and category for notebooks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ad.aggregate.jobs import collect_jobs, format_value
from ad.aggregate.table import (Column, Row, Table, VCol, Value, _category_value, _mean_value, _reference_shows_values,
                                build_table, metric_label)

_LEAF_SECTIONS = ("image", "pixel")
_RUN_SECTIONS = ("timing", "memory")


@dataclass
class TidyRow:
    """One printed line: a variant (or a paper's numbers for it) in one category or over a dataset."""

    column: Column
    reference: Optional[str]  # the paper's label for a published-numbers row, else None
    values: List[Value]  # one per metric, in table.metrics order


def group_headers(table: Table) -> List[str]:
    """The variant columns: `model`, `setting`, then each swept key by its shortest unambiguous name."""
    from ad.aggregate.table import _short_key

    return [_short_key(k, table.group) for k in table.group]


def variant_rows(table: Table, rows: Sequence[Row], dataset: Optional[str], mean: bool) -> List[TidyRow]:
    """One TidyRow per column that ran anything in `rows` (and per paper with comparable numbers for it)."""
    out: List[TidyRow] = []
    for col in table.columns:
        if not table.has_jobs(rows, col):
            continue
        values = [(_mean_value(table, VCol(col, m), rows, dataset) if mean else _category_value(table, VCol(col, m), rows[0]))
                  for m in table.metrics]
        out.append(TidyRow(col, None, values))
        for ref in col.references:
            if not any(_reference_shows_values(table, col, ref, m) for m in table.metrics):
                continue
            vals = [(_mean_value(table, VCol(col, m, ref), rows, dataset) if mean
                     else _category_value(table, VCol(col, m, ref), rows[0])) for m in table.metrics]
            if any(v.mean is not None for v in vals):
                out.append(TidyRow(col, f"{ref.label} (paper)", vals))
    return out


def _best(rows: Sequence[TidyRow], k: int) -> Optional[float]:
    means = [r.values[k].mean for r in rows if r.reference is None and r.values[k].mean is not None]
    return max(means) if len(means) > 1 else None


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(table: Table, rows: Sequence[TidyRow], lead: Sequence[str] = (), lead_values: Sequence[Sequence[str]] = ()) -> str:
    """A Markdown table: lead columns (e.g. category), the variant keys, one column per metric; the best
    measured value of each metric among the rows of one category (one lead value) in bold."""
    header = list(lead) + group_headers(table) + [metric_label(m) for m in table.metrics]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join(["---"] * (len(lead) + len(table.group)) + [":---:"] * len(table.metrics)) + "|"]
    # the best is compared within one category (rows sharing their lead values), never across categories
    groups: Dict[tuple, List[TidyRow]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(tuple(lead_values[i]) if lead_values else (), []).append(r)
    bests = {g: [_best(rs, k) for k in range(len(table.metrics))] for g, rs in groups.items()}
    for i, r in enumerate(rows):
        best = bests[tuple(lead_values[i]) if lead_values else ()]
        keys = [str(v) if v is not None else "?" for v in r.column.key]
        if r.reference is not None:
            keys = [r.reference] + [""] * (len(keys) - 1)
        cells = []
        for k, v in enumerate(r.values):
            text = v.text or "—"
            if best[k] is not None and r.reference is None and v.mean == best[k]:
                text = f"**{text}**"
            cells.append(text)
        lead_cells = list(lead_values[i]) if lead_values else []
        lines.append("| " + " | ".join(_md_escape(c) for c in lead_cells + keys + cells) + " |")
    return "\n".join(lines) + "\n"


def render_tidy_markdown(table: Table) -> str:
    """Per dataset: the mean over its categories (one row per variant) and the per-category rows; a dataset
    with one category gets one table (its mean would repeat it). Then the mean over all datasets."""
    out: List[str] = []
    for ds in table.datasets:
        rows = table.dataset_rows(ds)
        if len(rows) == 1:
            out.append(f"## {ds} / {rows[0][1]}\n\n" + _md_table(table, variant_rows(table, rows, ds, mean=False)))
            continue
        out.append(f"## {ds} — mean over {len(rows)} categories\n\n"
                   + _md_table(table, variant_rows(table, rows, ds, mean=True)))
        per_rows: List[TidyRow] = []
        leads: List[List[str]] = []
        for r in rows:
            got = variant_rows(table, [r], ds, mean=False)
            per_rows += got
            leads += [[r[1]]] * len(got)
        out.append(f"### {ds} per category\n\n" + _md_table(table, per_rows, ["category"], leads))
    if len(table.datasets) > 1:
        out.append(f"## All datasets — mean over {len(table.rows)} categories\n\n"
                   + _md_table(table, variant_rows(table, list(table.rows), None, mean=True)))
    return "\n".join(out)


# --- machines ---------------------------------------------------------------------------------------------
def long_rows(table: Table) -> List[Dict[str, object]]:
    """results_long.csv: one dict per (dataset, category or mean, variant or paper, metric)."""
    out: List[Dict[str, object]] = []

    def add(scope: str, dataset: str, category: str, trs: Sequence[TidyRow]) -> None:
        for tr in trs:
            for m, v in zip(table.metrics, tr.values):
                if v.mean is None and not v.text:
                    continue
                ci = v.stat.ci or (None, None)
                out.append({"scope": scope, "dataset": dataset, "category": category,
                            "source": tr.reference or "run", **dict(zip(table.group, tr.column.key)),
                            "metric": m, "mean": v.mean, "std": v.std, "n": v.n, "n_incomplete": v.n_missing,
                            "n_duplicates": len(table.cell((dataset, category), tr.column, m).duplicates)
                            if scope == "category" else None,
                            "ci_low": ci[0], "ci_high": ci[1], "p_vs_baseline": v.stat.p,
                            "significant": v.stat.sign or None, "text": v.text})

    for ds in table.datasets:
        rows = table.dataset_rows(ds)
        for r in rows:
            add("category", ds, r[1], variant_rows(table, [r], ds, mean=False))
        if len(rows) > 1:  # the mean over one category would repeat it
            add("dataset_mean", ds, "", variant_rows(table, rows, ds, mean=True))
    if len(table.datasets) > 1:
        add("overall_mean", "all", "", variant_rows(table, list(table.rows), None, mean=True))
    return out


def write_long_csv(table: Table, path: Path) -> None:
    import pandas as pd

    cols = ["scope", "dataset", "category", "source", *table.group, "metric", "mean", "std", "n", "n_incomplete",
            "n_duplicates", "ci_low", "ci_high", "p_vs_baseline", "significant", "text"]
    pd.DataFrame(long_rows(table), columns=cols).to_csv(path, index=False)


def _numeric_leaves(obj: object, prefix: str) -> Dict[str, float]:
    import dataclasses

    if obj is None:
        return {}
    return {f"{prefix}.{k}": float(v) for k, v in dataclasses.asdict(obj).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _as_number(text: Optional[str]) -> object:
    if text is None:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load(dirs: "Sequence[os.PathLike | str] | os.PathLike | str") -> "pd.DataFrame":  # noqa: F821
    """Every job below `dirs` as a pandas DataFrame, one row per job and evaluated category (a unified run has
    one per category): identity (dataset, category, model, setting, backbone, seed), the swept parameters,
    status/error, every metric (`image.auroc`, `pixel.aupro`, `mad`, `image.f1` at the run's threshold, ...)
    and timing/memory. `duplicate_of` names the job an identical re-run repeats (same configuration and
    seed): drop those rows before averaging, they are not seeds.

        df = ad.aggregate.load("multirun/2024-05-01_10-00-00")
        df[df.status == "ok"].groupby(["model", "category"])["image.auroc"].mean()
    """
    import pandas as pd

    from ad.rundir.params import is_param

    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    jobs = collect_jobs([Path(d) for d in dirs])
    repeats = {str(dup.path): str(first.path) for dup, first in build_table(jobs, ["image.auroc"]).duplicates}
    records = []
    for j in jobs:
        params = {k: format_value(v) for k, v in j.overrides.items() if is_param(k) and k not in ("seed",)}
        for ds, cat in j.rows:
            row: Dict[str, object] = {"job": str(j.path), "status": j.status, "error": j.error, "dataset": ds,
                                      "category": cat, "model": j.get("model"), "setting": j.get("setting"),
                                      "backbone": j.get("backbone"), "seed": _as_number(j.get("seed")),
                                      "duplicate_of": repeats.get(str(j.path))}
            row.update({k: _as_number(v) for k, v in params.items() if k not in row})
            rec = j.record if j.status == "ok" else None
            if rec is not None:
                src = rec.categories[cat] if j.unified else rec
                for section in _LEAF_SECTIONS:
                    row.update(_numeric_leaves(getattr(src, section), section))
                row["mad"] = src.mad
                for section in _RUN_SECTIONS:
                    row.update(_numeric_leaves(getattr(rec, section), section))
            records.append(row)
    return pd.DataFrame.from_records(records)
