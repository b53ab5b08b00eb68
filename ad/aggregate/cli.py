"""`aggregate()` and the `ad-aggregate` command line."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from ad.aggregate.csv_out import write_jobs_csv, write_results_csv
from ad.errors import ConfigError
from ad.io.outdir import prepare_out_dir
from ad.aggregate.intervals import RunCache, annotate
from ad.aggregate.jobs import AggregateError, Job, collect_jobs
from ad.aggregate.latex import render_latex
from ad.aggregate.markdown import render_markdown
from ad.aggregate.plots import HEATMAP_METRIC, plot_bars, plot_cd_diagrams, plot_heatmap, plot_trends
from ad.aggregate.ranking import ranking_section
from ad.aggregate.references import REFERENCE_FILE, Reference, load_references
from ad.aggregate.table import DEFAULT_METRICS, Column, Table, build_table

DEFAULT_BOOTSTRAP = 1000


def _check_metrics(jobs: Sequence[Job], metrics: Sequence[str]) -> None:
    ok = [j for j in jobs if j.status == "ok"]
    if not ok:
        return
    unknown = [m for m in metrics if not any(_path_known(j.results, m) for j in ok)]
    if unknown:
        avail = sorted({k for j in ok for k in _numeric_paths(j.results)})
        raise AggregateError(f"--metrics: {', '.join(unknown)} not in any results.json; available: {', '.join(avail)}")


def find_baseline(table: Table, name: str) -> Column:
    """The column whose label (or model) is `name`; one-line error listing the choices otherwise."""
    exact = [c for c in table.columns if c.label == name]
    by_model = [c for c in table.columns if c.model == name]
    found = exact or by_model
    if len(found) != 1:
        why = "matches several columns" if len(found) > 1 else "matches no column"
        raise AggregateError(f"--baseline {name!r} {why}; choose one of: {', '.join(repr(c.label) for c in table.columns)}")
    return found[0]


def build(jobs: Sequence[Job], metrics: Sequence[str] = DEFAULT_METRICS, group: Optional[Sequence[str]] = None,
          references: Sequence[Reference] = (), bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0,
          baseline: Optional[str] = None, alpha: float = 0.05, cache: Optional[RunCache] = None) -> Table:
    """The table with its intervals and baseline comparisons (bootstrap=0: means only)."""
    table = build_table(jobs, metrics, group, references)
    base = find_baseline(table, baseline) if baseline else None
    if bootstrap > 0:
        annotate(table, cache or RunCache(bootstrap, seed), base, alpha)
    else:
        table.baseline = None
    return table


def _plots(table: Table, out_dir: Path, cd_metric: str) -> Dict[str, Path]:
    paths: Dict[str, Path] = {}
    try:
        hp = plot_heatmap(table, out_dir)
        if hp is not None:
            paths[hp.stem] = hp
        for p in plot_bars(table, out_dir):
            paths[p.stem] = p
        for p in plot_cd_diagrams(table, out_dir, cd_metric).values():
            paths[p.stem] = p
        for p in plot_trends(table, out_dir):
            paths[p.stem] = p
    except ImportError as e:  # matplotlib is a hard dependency, but keep tables when it is broken
        print(f"ad-aggregate: plots skipped ({e})", file=sys.stderr)
    return paths


def aggregate(dirs: Sequence[os.PathLike | str] = ("multirun",), out: Optional[os.PathLike | str] = None,
              metrics: Sequence[str] = DEFAULT_METRICS, group: Optional[Sequence[str]] = None,
              reference: Optional[Sequence[str]] | bool = None, reference_file: Path = REFERENCE_FILE,
              plots: bool = True, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0, baseline: Optional[str] = None,
              cd_metric: str = HEATMAP_METRIC) -> Dict[str, Any]:
    """Read the jobs under `dirs`, write the outputs into `out`; returns {"table", "markdown", "paths"}."""
    dirs = [Path(d) for d in dirs] or [Path("multirun")]
    jobs = collect_jobs(dirs)
    _check_metrics(jobs, metrics)
    refs: List[Reference] = []
    if reference:
        refs = load_references(reference_file, None if reference is True else list(reference))
    table = build(jobs, metrics, group, refs, bootstrap, seed, baseline)
    out_dir = Path(out) if out is not None else dirs[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = _plots(table, out_dir, cd_metric) if plots else {}
    sections = [s for s in [ranking_section(table, cd_metric)] if s]
    md = render_markdown(table, sources=dirs, plots=[p.name for p in paths.values()], extra_sections=sections)
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
        description="Tables (Markdown, CSV, LaTeX) with bootstrap intervals, significance against a baseline, "
                    "rankings and plots from the results of Hydra sweep directories.",
    )
    p.add_argument("dirs", nargs="*", default=["multirun"], metavar="SWEEP_DIR",
                   help="sweep directories (searched recursively; default: multirun/)")
    p.add_argument("--out", default=None, help="output directory (default: the first SWEEP_DIR)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help="comma-separated results.json paths, or mad (default: %(default)s)")
    p.add_argument("--group", default="auto",
                   help="comma-separated keys forming the columns, e.g. model,backbone or model,model.coreset_ratio "
                        "(default auto: model, setting when any run is unified, + parameters varying within a "
                        "category; seeds averaged)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                   help="stratified bootstrap resamples for the 95%% intervals (0: none; default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default %(default)s)")
    p.add_argument("--baseline", default=None, metavar="COLUMN",
                   help="mark cells significantly better (▲) or worse (▼) than this column (a model name or label)")
    p.add_argument("--cd-metric", default=HEATMAP_METRIC,
                   help="metric of the rankings and critical-difference diagrams (default %(default)s)")
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
    if args.bootstrap < 0:
        print("ad-aggregate: --bootstrap must be >= 0 (0 turns the intervals off)", file=sys.stderr)
        return 2
    try:
        if args.out is not None:
            prepare_out_dir(args.out)
        res = aggregate(args.dirs, out=args.out, metrics=_split_list(args.metrics), group=group,
                        reference=reference, reference_file=Path(args.reference_file), plots=not args.no_plots,
                        bootstrap=args.bootstrap, seed=args.seed, baseline=args.baseline, cd_metric=args.cd_metric)
    except (AggregateError, ConfigError) as e:
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
