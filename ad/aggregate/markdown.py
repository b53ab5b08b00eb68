"""results.md: the table, the legend, published sources, failed jobs, significance tests and plots."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from ad.aggregate.table import PrintedRow, Table, printed_rows, value_columns


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
    if any(v.published for v in values):
        text += ("`*`: the paper's own dataset mean (it does not list every category; the sweep covers all of "
                 "them).\n")
    return text


def render_markdown(table: Table, sources: Sequence[Path] = (), plots: Sequence[str] = (),
                    extra_sections: Sequence[str] = ()) -> str:
    vcols = value_columns(table)
    header = ["dataset", "category"] + [vc.header for vc in vcols]
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
    out.write("| " + " | ".join(_md_escape(h) for h in header) + " |\n")
    out.write("|" + "|".join(["---", "---"] + [":---:"] * len(vcols)) + "|\n")
    for r in rows:
        first, second = r.label
        if r.kind != "category":
            first, second = f"**{first}**", f"**{second}**"
        out.write("| " + " | ".join(_md_escape(c) for c in [first, second] + [v.text for v in r.values]) + " |\n")
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
    for section in extra_sections:
        out.write("\n" + section.rstrip() + "\n")
    if plots:
        out.write("\n## Plots\n\n")
        for p in plots:
            out.write(f"![{p}]({p})\n")
    return out.getvalue()
