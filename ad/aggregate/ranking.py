"""Across categories: Friedman + Nemenyi average ranks and Wilcoxon signed-rank pairs (Holm) per dataset."""
from __future__ import annotations

import io
from typing import Any, Dict, List

from ad.aggregate.table import Table, build_table, metric_label
from ad.stats import friedman, wilcoxon_holm


def wilcoxon_min_p(n: int) -> float:
    """The smallest two-sided p the exact Wilcoxon signed-rank test can give over `n` pairs (every difference
    of one sign): 2 / 2^n. Below 6 categories it is >= 0.0625: the test cannot reject at 5 %, whatever the data."""
    return min(1.0, 2.0 / 2.0 ** n)


def friedman_min_p(n: int, k: int) -> float:
    """The smallest p of the Friedman test over `n` categories and `k` methods (every category ranks the
    methods alike: chi2 = n (k - 1))."""
    from scipy.stats import chi2

    return float(chi2.sf(n * (k - 1), k - 1))


def too_few(test: str, n: int, min_p: float, alpha: float) -> str:
    return (f"{test}: too few categories ({n}): its smallest possible p-value is {min_p:.3g} >= {alpha:g}, so it "
            "cannot find a difference whatever the results; not computed")


def rankings(table: Table, metric: str) -> Dict[str, Dict[str, Any]]:
    """{dataset: {"categories", "friedman", "pairs", "notes"}} over the categories where every column with a
    value has one (a method missing a category cannot be ranked there). A test that cannot reach significance
    with this many categories (`wilcoxon_min_p`, `friedman_min_p`) is None, and `notes` says why, instead of
    a p-value that looks like a result."""
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
        n, notes = len(full), []
        fried = None
        if len(cols) >= 3:
            if friedman_min_p(n, len(cols)) < table.alpha:
                fried = friedman(values, labels)
            else:
                notes.append(too_few("Friedman test", n, friedman_min_p(n, len(cols)), table.alpha))
        pairs = None
        if wilcoxon_min_p(n) < table.alpha:
            pairs = wilcoxon_holm(values, labels)
        else:
            notes.append(too_few("Wilcoxon signed-rank test", n, wilcoxon_min_p(n), table.alpha))
        out[ds] = {"categories": [r[1] for r in full], "friedman": fried, "pairs": pairs, "notes": notes}
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
        out.write("\n")
        for note in r["notes"]:
            out.write(f"\n- {note}")
        if r["pairs"] is not None:
            out.write("\n\n| a | b | mean a − b | p | p (Holm) |\n|---|---|---:|---:|---:|\n")
            for p in r["pairs"]:
                out.write(f"| {p['a']} | {p['b']} | {100 * p['mean_diff']:+.2f} | {p['p']:.3g} | {p['p_holm']:.3g} |\n")
        else:
            out.write("\n")
    return out.getvalue()
