"""Turn sweep directories into paper-ready tables, intervals, significance marks and plots.

    ad-aggregate [SWEEP_DIR ...] [--out DIR] [--metrics image.auroc,pixel.auroc,pixel.aupro]
                 [--group model,backbone] [--reference [NAMES]] [--bootstrap N] [--baseline MODEL]

Every job directory below the given directories (a directory with `.hydra/` or `results.json`) is read:
`results.json` through the typed run records (`ad.rundir.records`), `.hydra/overrides.yaml`,
`.hydra/config.yaml` and `.hydra/hydra.yaml`. Rows are (dataset, category) — a unified run contributes one row
per evaluated category; columns are the groups of `--group` (default: the model, the setting when any run is
unified, plus every parameter that varies between jobs of the same category, seeds excepted) × the chosen
metrics. Jobs that fall in the same cell (seeds, or parameters left out of `--group`) are averaged: mean ±
sample standard deviation, with a 95 % stratified bootstrap interval recomputed from the runs' saved
predictions.csv / test_maps.npz.

A job whose `results.json` says `status: failed`, or that has no `results.json` (crashed, killed, still
running), is listed explicitly and never enters a mean. Outputs in `--out` (default: the first sweep dir):
results.md, results.csv (the table), jobs.csv (one row per job and category), results.tex, bars_<column>.png,
heatmap_image_auroc.png, cd_<dataset>_<metric>.png.

Modules: `jobs` (finding and reading job dirs), `references` (published numbers), `table` (the table model and
the printed rows), `intervals` (bootstrap intervals, baseline tests), `ranking` (Friedman / Wilcoxon),
`markdown`, `csv_out`, `latex` (renderers), `plots`, `cli`.
"""
from ad.aggregate.cli import DEFAULT_BOOTSTRAP, aggregate, build, build_parser, find_baseline, main
from ad.aggregate.csv_out import write_jobs_csv, write_results_csv
from ad.aggregate.intervals import RunCache, annotate, read_predictions
from ad.aggregate.jobs import (
    MISSING_NOTE,
    AggregateError,
    Job,
    _dotted,
    _parse_override_value,
    collect_jobs,
    find_job_dirs,
    format_value,
    load_job,
)
from ad.aggregate.latex import latex_escape, render_latex
from ad.aggregate.markdown import render_markdown
from ad.aggregate.plots import HEATMAP_METRIC, plot_bars, plot_cd_diagrams, plot_heatmap, plot_trends, trend_series
from ad.aggregate.references import REFERENCE_FILE, Reference, dataset_size, load_references
from ad.aggregate.table import (
    DEFAULT_METRICS,
    Cell,
    Column,
    MeanCell,
    PrintedRow,
    Table,
    Value,
    _std,
    build_table,
    cell_text,
    fmt_number,
    is_fraction,
    mean_text,
    metric_label,
    printed_rows,
)

__all__ = [n for n in dir() if not n.startswith("__")]
