"""results.md: tidy tables per dataset, the legend, published sources, failed and duplicate jobs, significance
tests and plots."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from ad.aggregate.table import PrintedRow, Table, printed_rows, value_columns
from ad.aggregate.tidy import render_tidy_markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _legend(table: Table, rows: Sequence[PrintedRow]) -> str:
    text = ("AUROC / AP / AUPRO / F1 in %. `a ± s`: mean and sample standard deviation over the runs of a cell. "
            "Means are over categories (each category weighs the same); `(n/m)`: only n of the m categories have "
            "a value. `†`: some runs of the cell failed or are missing (listed below; never averaged). "
            "`failed` / `missing`: no successful run; `n/a`: the metric does not exist for that data "
            "(e.g. pixel metrics without masks); `—`: no run.\n")
    values = [v for r in rows for v in r.values]
    if any(v.stat.ci is not None for v in values):
        text += ("`[l, h]`: 95 % stratified bootstrap interval over the test images (normal and anomalous images "
                 "resampled separately; for several seeds, of their mean; for mean rows, of the mean over "
                 "categories), from each run's predictions.csv and test_maps.npz.\n")
    if table.baseline is not None:
        text += (f"`▲` / `▼`: significantly better / worse than the baseline `{table.baseline.label}` "
                 f"(two-sided p < {table.alpha:g}; DeLong's test for image AUROC of single runs, paired bootstrap "
                 "otherwise, on the same test images).\n")
    if table.duplicates:
        text += ("`‡`: the cell had identical re-runs (same configuration and seed); one is used, the repeats are "
                 "listed under Duplicate runs (they are not seeds and are never averaged in).\n")
    text += "Bold: the best value of its metric among the variants of the same category (or mean).\n"
    if any(v.published for v in values):
        text += ("`*`: the paper's own dataset mean (it does not list every category; the sweep covers all of "
                 "them).\n")
    return text


def render_markdown(table: Table, sources: Sequence[Path] = (), plots: Sequence[str] = (),
                    extra_sections: Sequence[str] = ()) -> str:
    vcols = value_columns(table)
    rows = printed_rows(table)
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
    out.write(render_tidy_markdown(table))
    out.write("\n" + _legend(table, rows))
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
                j.status, j.get("model") or "?", j.row[0], ", ".join(c for _, c in j.rows), f"`{j.path}`",
                j.error or ""]) + " |\n")
    else:
        out.write("None.\n")
    if table.duplicates:
        out.write(f"\n## Duplicate runs ({len(table.duplicates)})\n\nIdentical configuration and seed as an earlier "
                  "job: left out of every mean and spread.\n\n| job | repeats |\n|---|---|\n")
        for dup, first in table.duplicates:
            out.write(f"| `{_md_escape(str(dup.path))}` | `{_md_escape(str(first.path))}` |\n")
    for section in extra_sections:
        out.write("\n" + section.rstrip() + "\n")
    if plots:
        out.write("\n## Plots\n\n")
        for p in plots:
            out.write(f"![{p}]({p})\n")
    return out.getvalue()
