"""Build the report: one table (with intervals and baseline tests), plots, and a section per category."""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ad.aggregate.cli import DEFAULT_BOOTSTRAP, _check_metrics, build, find_baseline
from ad.aggregate.intervals import RunCache
from ad.errors import ConfigError
from ad.io.outdir import prepare_out_dir
from ad.aggregate.jobs import AggregateError, collect_jobs
from ad.aggregate.plots import plot_cd_diagrams, plot_heatmap
from ad.aggregate.ranking import rankings
from ad.aggregate.table import DEFAULT_METRICS, Table, build_table
from ad.report import html
from ad.report.figures import score_histograms
from ad.report.gallery import colour_bar, model_runs, render_gallery, select_images

ASSETS = "assets"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


def _best_column(table: Table, metric: str) -> Optional[str]:
    """Label of the column with the highest mean over all rows (the default baseline)."""
    means = [(table.mean_cell(table.rows, c, metric).mean, c.label) for c in table.columns]
    means = [m for m in means if m[0] is not None]
    return max(means)[1] if means else None


def _category_section(table: Table, cache: RunCache, row, assets: Path, max_images: int, thumb: int) -> str:
    runs = model_runs(table, cache, row)
    if not runs:
        return "<p class=muted>No saved predictions for this category.</p>"
    prefix = _slug(f"{row[0]}_{row[1]}")
    parts = [f"<h3>Scores</h3><img src='{ASSETS}/{score_histograms(runs, assets / f'hist_{prefix}.png')}' "
             "alt='score histograms'>"]
    defects = html.per_defect(runs, row[1])
    if defects:
        parts.append("<h3>Per-defect image AUROC (%)</h3>" + defects)
    items = select_images(runs, max_images)
    render_gallery(runs, items, assets, prefix, thumb)
    bars = [colour_bar(r, assets / f"bar_{prefix}_m{m}.png") if r.maps is not None else None
            for m, r in enumerate(runs)]
    n_dis = sum(g.disagreement for g in items)
    parts.append(f"<h3>Gallery ({len(items)} images: {n_dis} where the models disagree first, then the worst "
                 "cases)</h3><p class=note>One run per column (its lowest seed). Heatmaps use one colour scale "
                 "per model for the whole category (bar above each column); the white line is the model's pixel "
                 "threshold, green the ground-truth outline; decisions use the image threshold fitted on "
                 "validation normals.</p>" + html.gallery(runs, items, bars))
    return "\n".join(parts)


def build_report(dirs: Sequence[Path], out: Path, metrics: Sequence[str] = DEFAULT_METRICS,
                 bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0, baseline: Optional[str] = None,
                 max_images: int = 24, thumb: int = 128, cd_metric: str = "image.auroc") -> Dict[str, Any]:
    t0 = time.perf_counter()
    jobs = collect_jobs([Path(d) for d in dirs])
    _check_metrics(jobs, metrics)
    if baseline is None:
        baseline = _best_column(build_table(jobs, [cd_metric]), cd_metric)
    else:
        find_baseline(build_table(jobs, metrics), baseline)  # a bad name fails before any work
    cache = RunCache(bootstrap, seed)
    table = build(jobs, metrics, None, (), bootstrap, seed, baseline, cache=cache)
    out = Path(out)
    assets = out / ASSETS
    if assets.is_dir():
        shutil.rmtree(assets)  # no stale thumbnails of an earlier build
    assets.mkdir(parents=True)
    best: Dict[str, str] = {}
    sections = [("summary", "Summary", ""), ("results", "Results", html.results_table(table) + _legend(table))]
    heat = plot_heatmap(table, assets)
    cds = plot_cd_diagrams(table, assets, cd_metric)
    plots = "".join(f"<img src='{ASSETS}/{p.name}' alt='{p.stem}'>" for p in ([heat] if heat else []) + list(cds.values()))
    sections.append(("rankings", "Rankings and critical differences",
                     plots + html.rankings(rankings(table, cd_metric), cd_metric)))
    for row in table.rows:
        sid = _slug(f"cat_{row[0]}_{row[1]}")
        sections.append((sid, f"{row[0]} / {row[1]}", _category_section(table, cache, row, assets, max_images, thumb)))
    sections.append(("failed", f"Failed or missing jobs ({len(table.problems())})", html.failed_jobs(table.problems())))
    sections[0] = ("summary", "Summary", _summary_text(table, jobs, cd_metric, best))
    index = out / "index.html"
    index.write_text(html.page("Anomaly detection report", sections), encoding="utf-8")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"index": index, "table": table, "seconds": time.perf_counter() - t0, "bytes": size, "best": best}


def _summary_text(table: Table, jobs, metric: str, best: Dict[str, str]) -> str:
    n_ok = sum(j.status == "ok" for j in jobs)
    head = (f"<p>{len(jobs)} jobs ({n_ok} ok, {len(jobs) - n_ok} failed or missing). Metric of the summary: "
            f"{html.escape(metric)}; baseline: {html.escape(table.baseline.label if table.baseline else 'none')} "
            "(the best column overall unless --baseline is given).</p>")
    return head + html.summary(table, metric, best)


def _legend(table: Table) -> str:
    return ("<p class=note>In %. mean ± sample std over seeds; [l, h]: 95 % stratified bootstrap interval over "
            "the test images (normal and anomalous images resampled separately; for several seeds of their mean, "
            "for mean rows of the mean over categories). ▲ / ▼: significantly better / worse than the baseline "
            f"(p < {table.alpha:g}; DeLong for the image AUROC of single runs, paired bootstrap otherwise; hover "
            "for the p-value). †: some runs failed; (n/m): only n of m categories have a value.</p>")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ad-report", description="Static HTML report of sweep directories.")
    p.add_argument("dirs", nargs="+", metavar="SWEEP_DIR", help="sweep directories (searched recursively)")
    p.add_argument("--out", required=True, help="output directory (index.html + assets/)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="table metrics (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                   help="bootstrap resamples for the intervals (0: none; default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    p.add_argument("--baseline", default=None, help="column to test against (default: the best column overall)")
    p.add_argument("--max-images", type=int, default=24, help="gallery images per category (default %(default)s)")
    p.add_argument("--thumb", type=int, default=128, help="thumbnail size in pixels (default %(default)s)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.bootstrap < 0 or args.max_images < 1 or args.thumb < 16:
        print("ad-report: --bootstrap must be >= 0, --max-images >= 1 and --thumb >= 16", file=sys.stderr)
        return 2
    try:
        prepare_out_dir(args.out)
        res = build_report(args.dirs, Path(args.out), [m.strip() for m in args.metrics.split(",") if m.strip()],
                           args.bootstrap, args.seed, args.baseline, args.max_images, args.thumb)
    except (AggregateError, ConfigError) as e:
        print(f"ad-report: {e}", file=sys.stderr)
        return 2
    print(f"ad-report: wrote {res['index']} ({res['bytes'] / 1e6:.1f} MB, {res['seconds']:.1f} s)", file=sys.stderr)
    return 0
