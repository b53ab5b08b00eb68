"""PNG plots of a table: bars per column group, a heatmap of image AUROC, a critical-difference diagram
per dataset (Friedman + Nemenyi over its categories), and a metric-vs-parameter line plot for every numeric
swept parameter (e.g. `dataset.shots`, `model.coreset_ratio`)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ad.stats.cd_diagram import figure as _figure
from ad.aggregate.table import Table, build_table, cell_text, fmt_number, is_fraction, metric_label

HEATMAP_METRIC = "image.auroc"
TREND_EXCLUDE = ("model", "setting", "backbone", "seed")


def _as_number(value: Optional[str]) -> Optional[float]:
    try:
        x = float(value) if value is not None else None
    except ValueError:
        return None
    return x if x is not None and x == x else None


def trend_keys(table: Table) -> List[str]:
    """Swept parameters of the table's columns whose values are all numbers (at least two distinct ones)."""
    keys = []
    for i, key in enumerate(table.group):
        if key in TREND_EXCLUDE:
            continue
        xs = [_as_number(c.key[i]) for c in table.columns]
        if xs and all(x is not None for x in xs) and len(set(xs)) >= 2:
            keys.append(key)
    return keys


def trend_series(table: Table, key: str, metric: str) -> Dict[str, List[Tuple[float, float, Optional[float], int]]]:
    """{series label: [(x, mean, spread, categories)] sorted by x} for one numeric swept `key`. A series is one
    combination of the other grouping values (e.g. one model). The mean is over the categories every point of
    the series has a value for (so a point is never an average over an easier subset); the spread is the mean
    over those categories of the std over seeds (None with a single seed)."""
    i = table.group.index(key)
    others = [k for k in range(len(table.group)) if k != i]
    by_series: Dict[Tuple, List] = {}
    for col in table.columns:
        by_series.setdefault(tuple(col.key[k] for k in others), []).append(col)
    out: Dict[str, List[Tuple[float, float, Optional[float], int]]] = {}
    for series, cols in by_series.items():
        common = [r for r in table.rows if all(table.cell(r, c, metric).mean is not None for c in cols)]
        if not common:
            continue
        points = []
        for col in cols:
            cells = [table.cell(r, col, metric) for r in common]
            stds = [c.std for c in cells if c.std is not None]
            points.append((_as_number(col.key[i]), sum(c.mean for c in cells) / len(cells),
                           sum(stds) / len(stds) if len(stds) == len(cells) else None, len(common)))
        label = " ".join(f"{table.group[k]}={v}" if table.group[k] not in ("model", "backbone") else str(v)
                         for k, v in zip(others, series)) or metric_label(metric)
        out[label] = sorted(points)
    return out


def plot_trends(table: Table, out_dir: Path) -> List[Path]:
    """One PNG per numeric swept parameter and metric: metric (mean over categories) vs the parameter, a line
    per series, error bars = the seeds' std. A log x axis when the values span a factor of 8 or more."""
    paths = []
    for key in trend_keys(table):
        for metric in table.metrics:
            series = trend_series(table, key, metric)
            if not series:
                continue
            scale = 100.0 if is_fraction(metric) else 1.0
            fig = _figure(6.5, 4.0)
            ax = fig.add_subplot(1, 1, 1)
            xs_all = sorted({p[0] for pts in series.values() for p in pts})
            for label, pts in series.items():
                errs = [p[2] * scale if p[2] is not None else 0.0 for p in pts]
                ax.errorbar([p[0] for p in pts], [p[1] * scale for p in pts], yerr=errs, marker="o", capsize=3,
                            label=f"{label} ({pts[0][3]} categories)")
            if xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= 8:
                ax.set_xscale("log", base=2)
            ax.set_xticks(xs_all)
            ax.set_xticklabels([f"{x:g}" for x in xs_all])
            ax.set_xlabel(key)
            ax.set_ylabel(metric_label(metric) + (" (%)" if scale == 100.0 else ""))
            ax.set_title(f"{metric_label(metric)} vs {key}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            p = out_dir / f"trend_{_slug(key)}_{_slug(metric.replace('.', '_'))}.png"
            fig.savefig(p, format="png")
            paths.append(p)
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "column"


def plot_bars(table: Table, out_dir: Path) -> List[Path]:
    """Per dataset and metric: the models side by side in each category (and the mean over categories), error
    bars = the 95 % bootstrap interval (the std over seeds when intervals are off), × = failed/missing, and a
    y axis fitted to the values (91 vs 95 must be visible, not lost in a 0-100 axis)."""
    import numpy as np

    paths = []
    for ds in table.datasets:
        rows = table.dataset_rows(ds)
        cols = [c for c in table.columns if table.has_jobs(rows, c)]
        if not cols:
            continue
        groups = [(r[1], [r]) for r in rows] + ([("mean", rows)] if len(rows) > 1 else [])
        for m in table.metrics:
            f = 100.0 if is_fraction(m) else 1.0
            fig = _figure(min(18.0, max(7.0, 0.35 * len(groups) * len(cols) + 3.5)), 4.2)
            ax = fig.add_subplot(1, 1, 1)
            width = 0.8 / len(cols)
            lows, highs = [], []
            for k, col in enumerate(cols):
                xs, ys, err_lo, err_hi, marks = [], [], [], [], []
                for i, (_, grp) in enumerate(groups):
                    x = i - 0.4 + width * (k + 0.5)
                    if len(grp) == 1:
                        c = table.cell(grp[0], col, m)
                        mean, std, ci, bad = c.mean, c.std, c.stat.ci, bool(c.n_failed or c.n_missing)
                    else:
                        mc = table.mean_cell(grp, col, m)
                        mean, std, ci, bad = mc.mean, mc.std, mc.stat.ci, False
                    if mean is None:
                        if bad:
                            marks.append(x)
                        continue
                    lo, hi = ci if ci is not None else (mean - (std or 0.0), mean + (std or 0.0))
                    xs.append(x)
                    ys.append(mean * f)
                    err_lo.append(max(0.0, (mean - lo) * f))
                    err_hi.append(max(0.0, (hi - mean) * f))
                    lows.append(lo * f)
                    highs.append(hi * f)
                ax.bar(xs, ys, width=width * 0.92, yerr=[err_lo, err_hi], capsize=2, label=col.label)
                for x in marks:
                    ax.text(x, 0.02, "×", ha="center", va="bottom", color="red", fontsize=11,
                            transform=ax.get_xaxis_transform())
            if lows:
                lo, hi = min(lows), max(highs)
                pad = max(0.5 * f / 100.0, 0.08 * (hi - lo))
                top = 100.0 + 1e-9 if f == 100.0 else None
                ax.set_ylim(max(0.0, lo - pad) if f == 100.0 else lo - pad,
                            min(top, hi + pad) if top is not None else hi + pad)
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels([g for g, _ in groups], rotation=45 if len(groups) > 6 else 0,
                               ha="right" if len(groups) > 6 else "center", fontsize=8)
            if len(groups) > 1 and len(rows) > 1:
                ax.axvline(len(groups) - 1.5, color="grey", lw=0.6, ls=":")
            ax.set_ylabel(metric_label(m) + (" (%)" if f == 100.0 else ""))
            ci_note = "95 % bootstrap interval" if any(table.cell(r, c, m).stat.ci for r in rows for c in cols) else "± std over seeds"
            ax.set_title(f"{ds}: {metric_label(m)} (axis fitted to the values)", fontsize=9)
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title=f"bars: {ci_note}",
                      title_fontsize=7)
            ax.grid(axis="y", alpha=0.3)
            p = out_dir / f"bars_{_slug(ds)}_{_slug(m.replace('.', '_'))}.png"
            fig.savefig(p, format="png", bbox_inches="tight")  # the legend outside the axes stays in the image
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




def rank_table(table: Table, dataset: Optional[str], metric: str):
    """(column labels, [categories x columns] means) over the categories where every column has a value;
    None when fewer than 3 columns or 2 categories remain (Friedman needs 3 methods; for 2 the Wilcoxon
    signed-rank test in the ranking section is the test)."""
    rows = table.rows if dataset is None else table.dataset_rows(dataset)
    cols = [c for c in table.columns if any(table.cell(r, c, metric).mean is not None for r in rows)]
    full = [r for r in rows if all(table.cell(r, c, metric).mean is not None for c in cols)]
    if len(cols) < 3 or len(full) < 2:
        return None
    from ad.aggregate.ranking import friedman_min_p

    if friedman_min_p(len(full), len(cols)) >= table.alpha:  # no test result to draw: the ranking says why
        return None
    return [c.label for c in cols], [[table.cell(r, c, metric).mean for c in cols] for r in full]


def plot_cd_diagrams(table: Table, out_dir: Path, metric: str = HEATMAP_METRIC) -> Dict[str, Path]:
    """{dataset: cd_<dataset>_<metric>.png} for every dataset with >= 3 columns and >= 2 complete categories."""
    from ad.stats import friedman
    from ad.stats.cd_diagram import plot_cd_diagram

    if metric not in table.metrics:
        table = build_table(table.jobs, [metric], table.group)
    out: Dict[str, Path] = {}
    for ds in table.datasets:
        ranked = rank_table(table, ds, metric)
        if ranked is None:
            continue
        labels, values = ranked
        res = friedman(values, labels)
        title = f"{ds}: {metric_label(metric)} (Friedman p = {res.p:.3g})"
        out[ds] = plot_cd_diagram(res, out_dir / f"cd_{_slug(ds)}_{_slug(metric.replace('.', '_'))}.png", title)
    return out
