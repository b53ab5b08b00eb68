"""results.csv (the table, raw fractions, one line per printed row) and jobs.csv (one line per job)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import List, Optional, Sequence

from ad.aggregate.jobs import format_value
from ad.aggregate.table import Table, Value, printed_rows, value_columns

STAT_FIELDS = ("mean", "std", "n", "n_failed", "ci_low", "ci_high", "p_vs_baseline")


def _num(v: Optional[float]) -> str:
    return "" if v is None else repr(float(v))


def _fields(v: Value) -> List[str]:
    if v.vcol.ref is not None:
        return [_num(v.mean)]
    ci = v.stat.ci or (None, None)
    return [_num(v.mean), _num(v.std), str(v.n), str(v.n_missing), _num(ci[0]), _num(ci[1]), _num(v.stat.p)]


def write_results_csv(table: Table, path: Path) -> None:
    """For mean rows `n` counts the categories averaged and `n_failed` those without a value."""
    header = ["dataset", "category"]
    for vc in value_columns(table):
        if vc.ref is not None:
            header.append(f"{vc.ref.label} (paper) | {vc.metric}")
        else:
            header += [f"{vc.column.label} | {vc.metric} | {s}" for s in STAT_FIELDS]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in printed_rows(table):
            w.writerow(list(r.label) + [x for v in r.values for x in _fields(v)])


def write_jobs_csv(table: Table, path: Path, extra_metrics: Sequence[str] = ()) -> None:
    """One line per job and evaluated category (a unified run has one per category)."""
    metrics = list(dict.fromkeys(list(table.metrics) + list(extra_metrics)))
    keys = list(dict.fromkeys(["model", "setting", "dataset", "backbone", "seed"] + table.group))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["job", "status", "error", "category"] + keys + ["overrides"] + metrics)
        for j in sorted(table.jobs, key=lambda j: str(j.path)):
            overrides = " ".join(f"{k}={format_value(v)}" for k, v in j.overrides.items())
            for _, cat in j.rows:
                vals = [j.metric(m, cat) for m in metrics]
                w.writerow([str(j.path), j.status, j.error or "", cat] + [j.get(k) or "" for k in keys]
                           + [overrides] + ["" if v is None else repr(v) for v in vals])
