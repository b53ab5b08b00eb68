"""Across categories: Friedman + Nemenyi average ranks and Wilcoxon signed-rank pairs (Holm) per dataset."""
from __future__ import annotations

import io
from typing import Any, Dict, List

from ad.aggregate.table import Table, build_table, metric_label
from ad.stats import friedman, wilcoxon_holm


def rankings(table: Table, metric: str) -> Dict[str, Dict[str, Any]]:
    """{dataset: {"categories", "friedman" (None for 2 columns), "pairs"}} over the categories where every
    column with a value has one (a method missing a category cannot be ranked there)."""
    if metric not in table.metrics:
        table = build_table(table.jobs, [metric], table.group)
    out: Dict[str, Dict[str, Any]] = {}
    for ds in table.datasets:
        rows = table.dataset_rows(ds)
        cols = [c for c in table.columns if any(table.cell(r, c, metric).mean is not None for r in rows)]
        full = [r for r in rows if all(table.cell(r, c, metric).mean is not None for c in cols)]
        if len(cols) < 2 or len(full) < 2:
            continue
        values = [[table.cell(r, c, metric).mean for c in cols] for r in full]
        labels = [c.label for c in cols]
        out[ds] = {"categories": [r[1] for r in full], "friedman": friedman(values, labels) if len(cols) >= 3 else None,
                   "pairs": wilcoxon_holm(values, labels)}
    return out


def ranking_section(table: Table, metric: str) -> str:
    ranks = rankings(table, metric)
    if not ranks:
        return ""
    out = io.StringIO()
    out.write(f"## Rankings across categories ({metric_label(metric)})\n\n")
    out.write("Friedman test over categories (average rank, 1 = best; Nemenyi critical difference CD: two methods "
              "whose ranks differ by less than CD are not significantly different) and Wilcoxon signed-rank "
              "tests per pair with Holm's correction. With few categories these tests have little power.\n")
    for ds, r in ranks.items():
        out.write(f"\n**{ds}** ({len(r['categories'])} categories)")
        f = r["friedman"]
        if f is not None:
            ranks_txt = ", ".join(f"{m} {v:.2f}" for m, v in sorted(f.ranks.items(), key=lambda kv: kv[1]))
            out.write(f": Friedman χ² = {f.chi2:.2f}, p = {f.p:.3g}; CD = {f.cd:.2f}; ranks: {ranks_txt}")
        out.write("\n\n| a | b | mean a − b | p | p (Holm) |\n|---|---|---:|---:|---:|\n")
        for p in r["pairs"]:
            out.write(f"| {p['a']} | {p['b']} | {100 * p['mean_diff']:+.2f} | {p['p']:.3g} | {p['p_holm']:.3g} |\n")
    return out.getvalue()
