#!/usr/bin/env python
"""Checks and timings of the statistics on a real sweep (not a unit test):

    python scripts/bench_report_stats.py SWEEP_DIR... [--fake-jobs 1000]

* intervals of every run's image AUROC vs an independent percentile bootstrap (plain loop, other seed,
  sklearn's roc_auc_score): the largest difference of the bounds (Monte-Carlo error ~0.01 at 1000 resamples);
* DeLong p-values of every pair of runs on the same test images vs the O(m n) definition (DeLong 1988);
* aggregation time of N generated job dirs (results.json + .hydra + predictions.csv of 100 images each).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ad.aggregate import build, collect_jobs  # noqa: E402
from ad.aggregate.intervals import RunCache  # noqa: E402
from ad.stats import delong_test  # noqa: E402


def delong_definition(y, a, b):
    pos, neg = y == 1, y == 0
    comps = []
    for s in (a, b):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        comps.append((psi.mean(1), psi.mean(0), psi.mean()))
    cov = np.cov(np.stack([c[0] for c in comps])) / pos.sum() + np.cov(np.stack([c[1] for c in comps])) / neg.sum()
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    return 2 * stats.norm.sf(abs((comps[0][2] - comps[1][2]) / np.sqrt(var))) if var > 0 else 1.0


def check_real(dirs, n_boot):
    jobs = [j for j in collect_jobs(dirs) if j.status == "ok"]
    cache = RunCache(n_boot)
    t0 = time.process_time()
    table = build(jobs, ["image.auroc", "image.ap", "pixel.auroc", "pixel.aupro"], bootstrap=n_boot, cache=cache)
    print(f"table with intervals ({n_boot} resamples, {len(jobs)} runs): {time.process_time() - t0:.1f} s CPU")
    worst, n_runs = 0.0, 0
    rng = np.random.default_rng(2024)
    for j in jobs:
        for row in j.rows:
            reps = cache.replicates(j, row, "image.auroc")
            if reps is None:
                continue
            ci = np.percentile(reps, [2.5, 97.5])
            d = cache.predictions(j, row[1])
            neg, pos = np.flatnonzero(d.labels == 0), np.flatnonzero(d.labels == 1)
            vals = [roc_auc_score(d.labels[i], d.scores[i]) for i in
                    (np.r_[rng.choice(neg, neg.size), rng.choice(pos, pos.size)] for _ in range(n_boot))]
            lo, hi = np.percentile(vals, [2.5, 97.5])
            worst = max(worst, abs(lo - ci[0]), abs(hi - ci[1]))
            n_runs += 1
    print(f"run image-AUROC interval bounds vs an independent bootstrap ({n_runs} runs): max |diff| = {worst:.4f}")
    by_row = {}
    for j in jobs:
        for _, cat in j.rows:
            d = cache.predictions(j, cat)
            by_row.setdefault((j.get("dataset"), cat), []).append(d)
    worst_p, n = 0.0, 0
    for runs in by_row.values():
        for a, b in itertools.combinations(runs, 2):
            if a.paths != b.paths:
                continue
            p = delong_test(a.labels, a.scores, b.scores).p
            worst_p = max(worst_p, abs(p - delong_definition(a.labels, a.scores, b.scores)))
            n += 1
    print(f"DeLong p vs the O(mn) definition over {n} pairs: max |diff| = {worst_p:.2e}")


def fake_jobs(root: Path, n: int) -> None:
    import json

    import yaml

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(60, int), np.ones(40, int)]
    for i in range(n):
        model, cat, seed = f"m{i % 5}", f"cat{(i // 5) % 20}", i // 100
        job = root / f"{i}_{model}_{cat}_seed={seed}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model={model}", f"category={cat}",
                                                                        f"seed={seed}"]))
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "dataset": {"category": cat}}))
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
            {"hydra": {"runtime": {"choices": {"model": model, "dataset": "synthetic"}}}}))
        scores = rng.standard_normal(100) + labels * (1 + i % 5 * 0.2)
        auroc = roc_auc_score(labels, scores)
        (job / "results.json").write_text(json.dumps({"status": "ok", "model": model, "dataset": "synthetic",
                                                      "category": cat, "seed": seed, "image": {"auroc": auroc}}))
        lines = ["path,category,defect_type,label,score,normalized_score,is_anomalous"]
        lines += [f"/d/{cat}/{k:03d}.png,{cat},x,{l},{s:.6f},{s:.6f},{int(s > 1)}" for k, (l, s) in
                  enumerate(zip(labels, scores))]
        (job / "predictions.csv").write_text("\n".join(lines) + "\n")


def time_fake(n: int) -> None:
    from ad.aggregate import aggregate

    with tempfile.TemporaryDirectory() as tmp:
        fake_jobs(Path(tmp) / "sw", n)
        for boot in (0, 1000):
            t0, c0 = time.perf_counter(), time.process_time()
            aggregate([Path(tmp) / "sw"], out=Path(tmp) / f"out{boot}", metrics=["image.auroc"], bootstrap=boot,
                      baseline="m0")
            print(f"aggregate {n} job dirs, --bootstrap {boot}: {time.perf_counter() - t0:.1f} s wall, "
                  f"{time.process_time() - c0:.1f} s CPU")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="*")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--fake-jobs", type=int, default=0)
    a = ap.parse_args()
    if a.dirs:
        check_real([Path(d) for d in a.dirs], a.bootstrap)
    if a.fake_jobs:
        time_fake(a.fake_jobs)
