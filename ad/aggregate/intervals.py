"""Bootstrap intervals and baseline comparisons for the table, recomputed from each run's saved test outputs
(`predictions.csv` for image metrics, `test_maps.npz` for pixel metrics) with `ad.stats`.

* Every run of one (dataset, category) is resampled with the same stratified resamples (seeded by the row's
  name and `seed`), after sorting its test images by path, so runs scored on the same test images are paired.
* A cell with several runs (seeds): replicate b is the mean over its runs of their replicate-b values, so the
  interval is that of the seed mean under test-set resampling (the seed spread itself is the ± std).
* A mean row: replicate b is the mean over its categories (independent test sets) of their replicates.
* Against `--baseline`: DeLong for image AUROC when both cells hold one run each, otherwise the paired
  bootstrap on the shared replicates. Cells or rows where a run has no saved outputs get no interval.
"""
from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ad.aggregate.jobs import Job
from ad.aggregate.table import Cell, Column, Stat, Table, row_groups
from ad.rundir.maps_store import load_test_maps
from ad.stats import delong_test, paired_bootstrap, stratified_resamples
from ad.stats.bootstrap import PixelHistograms, image_replicates, pixel_replicates

CI_METRICS = ("image.auroc", "image.ap", "image.f1_max", "pixel.auroc", "pixel.aupro")
PREDICTIONS = "predictions.csv"


@dataclass
class RunData:
    """One run's test predictions for one category, sorted by image path."""

    paths: Tuple[str, ...]
    labels: np.ndarray
    scores: np.ndarray
    defect_types: List[str]
    decisions: np.ndarray
    normalized: np.ndarray


def read_predictions(job_dir: Path, category: Optional[str] = None) -> Optional[RunData]:
    """predictions.csv of a run (only `category`'s images when the file has a category column), or None."""
    path = Path(job_dir) / PREDICTIONS
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and category is not None and "category" in rows[0] and any(r["category"] for r in rows):
        rows = [r for r in rows if r["category"] == category]
    if not rows:
        return None
    rows.sort(key=lambda r: r["path"])

    def floats(key: str) -> np.ndarray:
        return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])

    return RunData(tuple(r["path"] for r in rows), np.array([int(r["label"]) for r in rows]), floats("score"),
                   [r.get("defect_type", "") for r in rows], floats("is_anomalous") > 0.5, floats("normalized_score"))


class RunCache:
    """Predictions, maps and bootstrap replicates of runs, each read or computed once."""

    def __init__(self, n_boot: int = 1000, seed: int = 0, max_fpr: float = 0.3) -> None:
        self.n_boot, self.seed, self.max_fpr = int(n_boot), int(seed), max_fpr
        self._pred: Dict[Tuple[Path, str], Optional[RunData]] = {}
        self._reps: Dict[Tuple[Path, str, str], Optional[np.ndarray]] = {}
        self._resamples: Dict[Tuple[str, Tuple[str, ...]], np.ndarray] = {}

    def predictions(self, job: Job, category: str) -> Optional[RunData]:
        key = (job.path, category)
        if key not in self._pred:
            self._pred[key] = read_predictions(job.path, category if job.unified else None)
        return self._pred[key]

    def resamples(self, row_name: str, data: RunData) -> np.ndarray:
        key = (row_name, data.paths)
        if key not in self._resamples:
            seed = (zlib.crc32(row_name.encode()) + self.seed) % 2**32
            self._resamples[key] = stratified_resamples(data.labels, self.n_boot, seed)
        return self._resamples[key]

    def replicates(self, job: Job, row: Tuple[str, str], metric: str) -> Optional[np.ndarray]:
        key = (job.path, row[1], metric)
        if key not in self._reps:
            self._reps[key] = self._compute(job, row, metric)
        return self._reps[key]

    def _compute(self, job: Job, row: Tuple[str, str], metric: str) -> Optional[np.ndarray]:
        data = self.predictions(job, row[1])
        if data is None or data.labels.min() == data.labels.max() or not np.isfinite(data.scores).all():
            return None
        idx = self.resamples(f"{row[0]}/{row[1]}", data)
        section, _, name = metric.partition(".")
        if section == "image":
            reps = image_replicates(data.labels, data.scores, idx)
            for m, v in reps.items():  # one pass gives all three image metrics
                self._reps[(job.path, row[1], f"image.{m}")] = v
            return reps[name]
        hist = self.pixel_histograms(job, row[1], data)
        if hist is None:
            return None
        reps = pixel_replicates(hist, idx, self.max_fpr)
        for m, v in reps.items():
            self._reps[(job.path, row[1], f"pixel.{m}")] = v
        return reps[name]

    def pixel_histograms(self, job: Job, category: str, data: RunData) -> Optional[PixelHistograms]:
        saved = load_test_maps(job.path, category if job.unified else None)
        if saved is None or saved.masks is None:
            return None
        where = saved.index()
        if any(p not in where for p in data.paths):
            return None
        order = np.array([where[p] for p in data.paths])
        if not saved.has_mask[order][data.labels == 1].all():
            return None  # an anomalous image without annotation: pixel metrics were not computed either
        return PixelHistograms(saved.masks[order], saved.maps[order])


def _cell_replicates(cache: RunCache, cell: Cell, row: Tuple[str, str], metric: str
                     ) -> Optional[Tuple[Tuple[str, ...], np.ndarray]]:
    """(test image paths, [B] replicates of the cell's mean) when every run of the cell has saved outputs on
    the same test images."""
    if not cell.runs:
        return None
    reps, paths = [], None
    for job, cat in cell.runs:
        data = cache.predictions(job, cat)
        r = cache.replicates(job, row, metric)
        if data is None or r is None or (paths is not None and data.paths != paths):
            return None
        paths = data.paths
        reps.append(r)
    return paths, np.mean(reps, axis=0)


def _percentile_ci(reps: np.ndarray) -> Tuple[float, float]:
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(lo), float(hi)


def _significance(stat: Stat, est: float, reps: np.ndarray, base_est: float, base_reps: np.ndarray,
                  alpha: float) -> None:
    r = paired_bootstrap(est, reps, base_est, base_reps)
    stat.p, stat.test = r.p, "paired bootstrap"
    stat.sign = (1 if r.diff > 0 else -1) if r.p < alpha else 0


def annotate(table: Table, cache: RunCache, baseline: Optional[Column] = None, alpha: float = 0.05) -> None:
    """Fill every cell's and mean row's `Stat` (interval, and p-value against `baseline`) in place."""
    table.baseline, table.alpha = baseline, alpha
    metrics = [m for m in table.metrics if m in CI_METRICS]
    reps: Dict[Tuple[Tuple[str, str], Tuple, str], Tuple[Tuple[str, ...], np.ndarray]] = {}
    for m in metrics:
        for row in table.rows:
            for col in table.columns:
                cell = table.cell(row, col, m)
                got = _cell_replicates(cache, cell, row, m)
                if got is not None:
                    reps[(row, col.key, m)] = got
                    cell.stat.ci = _percentile_ci(got[1])
        for _, _, rows in row_groups(table):
            for col in table.columns:
                per_row = [reps.get((r, col.key, m)) for r in rows if table.cell(r, col, m).values]
                if per_row and all(p is not None for p in per_row) and len(per_row) == len(rows):
                    mean_reps = np.mean([p[1] for p in per_row], axis=0)
                    table.mean_stats[(tuple(rows), col.key, m)] = Stat(ci=_percentile_ci(mean_reps))
                    reps[(tuple(rows), col.key, m)] = ((), mean_reps)  # type: ignore[index]
    if baseline is None:
        return
    for m in metrics:
        _compare_cells(table, cache, baseline, m, reps, alpha)
        for _, _, rows in row_groups(table):
            base = reps.get((tuple(rows), baseline.key, m))  # type: ignore[arg-type]
            for col in table.columns:
                got = reps.get((tuple(rows), col.key, m))  # type: ignore[arg-type]
                if col is baseline or base is None or got is None:
                    continue
                a, b = table.mean_cell(rows, col, m), table.mean_cell(rows, baseline, m)
                _significance(table.mean_stats[(tuple(rows), col.key, m)], a.mean, got[1], b.mean, base[1], alpha)


def _compare_cells(table: Table, cache: RunCache, baseline: Column, m: str, reps: Dict, alpha: float) -> None:
    for row in table.rows:
        base = reps.get((row, baseline.key, m))
        if base is None:
            continue
        b_cell = table.cell(row, baseline, m)
        for col in table.columns:
            got = reps.get((row, col.key, m))
            if col is baseline or got is None or got[0] != base[0]:
                continue
            cell = table.cell(row, col, m)
            if m == "image.auroc" and cell.n == 1 and b_cell.n == 1:
                a = cache.predictions(*cell.runs[0])
                b = cache.predictions(*b_cell.runs[0])
                r = delong_test(a.labels, a.scores, b.scores)
                cell.stat.p, cell.stat.test = r.p, "DeLong"
                cell.stat.sign = (1 if r.diff > 0 else -1) if r.p < alpha else 0
            else:
                _significance(cell.stat, cell.mean, got[1], b_cell.mean, base[1], alpha)
