"""Time and memory of the pixel metrics on MVTec-size and VisA-size synthetic inputs.

    python scripts/benchmark_metrics.py [--repeats 3] [--sklearn]

Inputs mimic a real category at 256x256: a third of the test images are normal, anomalous images have 1-4
elliptic defect regions of very different sizes, maps are smooth float32 noise raised inside the defects
(so positives and negatives overlap, as with real models). Times are the best of `--repeats` runs, single
process; peak memory is numpy's traced allocation peak during the call (tracemalloc) on top of the inputs.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ad.metrics import (SaturationRule, au_spro, aupro, defects_from_channels, evaluate, pixel_ap,  # noqa: E402
                        pixel_auroc, pixel_f1_max, segf1, segf1_threshold)


def synthetic(n_images: int, size: int = 256, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_normal = n_images // 3
    labels = np.r_[np.zeros(n_normal, bool), np.ones(n_images - n_normal, bool)]
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n_images, size, size), bool)
    for i in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 5)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.uniform(2, size / 6, 2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    noise = rng.standard_normal((n_images, size // 8, size // 8)).astype(np.float32)
    maps = ndimage.zoom(noise, (1, 8, 8), order=1)  # smooth background, like upsampled patch scores
    maps += masks * rng.uniform(0.5, 2.5, (n_images, 1, 1)).astype(np.float32)
    maps = ndimage.gaussian_filter(maps, sigma=(0, 2, 2)).astype(np.float32)
    scores = maps.reshape(n_images, -1).max(axis=1)
    types = ["good" if not l else f"defect{i % 3}" for i, l in enumerate(labels)]
    return labels, scores, types, masks, maps


def loco_defects(masks: np.ndarray):
    """Each 8-connected region one LOCO defect (many defects: the costly case), alternating relative/absolute."""
    rules = (SaturationRule("rel", 255, 1.0, True), SaturationRule("abs", 1, 200, False))
    channels, image_rules = [], []
    for m in masks:
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        channels.append([lab == k for k in range(1, n + 1)])
        image_rules.append([rules[k % 2] for k in range(n)])
    return defects_from_channels(channels, image_rules)


def best_time(fn, repeats: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds of this process, all threads): CPU time is robust to other jobs
    sharing the cores; wall time is what a user waits when the cores are free."""
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def peak_mb(fn) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sklearn", action="store_true", help="also time sklearn's roc_auc_score/average_precision_score")
    args = ap.parse_args()
    print(f"cpus available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.1f}; "
          f"numpy {np.__version__}")
    for name, n in (("MVTec-size", 100), ("VisA-size", 200)):
        labels, scores, types, masks, maps = synthetic(n)
        print(f"\n{name}: {n} images x 256x256 = {maps.size / 1e6:.1f} M pixels "
              f"({masks.mean() * 100:.1f}% defect pixels, inputs {(maps.nbytes + masks.nbytes) / 2**20:.0f} MiB)")
        jobs = {
            "pixel_auroc": lambda: pixel_auroc(masks, maps),
            "pixel_ap": lambda: pixel_ap(masks, maps),
            "pixel_f1_max": lambda: pixel_f1_max(masks, maps),
            "aupro": lambda: aupro(masks, maps),
            "aupro@0.05 (MVTec AD 2)": lambda: aupro(masks, maps, max_fpr=0.05),
            "segf1 (threshold from 1/3 of the maps + pooled F1)": lambda: segf1(
                masks, maps, segf1_threshold(maps[: n // 3])),
            "au_spro, 5 limits, one defect per region (LOCO)": lambda: au_spro(maps, loco_defects(masks)),
            "evaluate (all image+pixel metrics, shared sort)": lambda: evaluate(
                labels, scores, types, masks, maps, image_threshold=0.5, pixel_threshold=1.0
            ),
        }
        for label, fn in jobs.items():
            wall, cpu = best_time(fn, args.repeats)
            print(f"  {label:<50s} wall {wall:6.3f} s   cpu {cpu:6.3f} s")
        print(f"  {'evaluate peak extra memory (tracemalloc)':<50s} {peak_mb(jobs[list(jobs)[-1]]):6.0f} MiB")
        if args.sklearn:
            from sklearn.metrics import average_precision_score, roc_auc_score

            y, s = masks.ravel(), maps.ravel()
            for label, fn in (("sklearn roc_auc_score (reference)", lambda: roc_auc_score(y, s)),
                              ("sklearn average_precision_score (reference)", lambda: average_precision_score(y, s))):
                wall, cpu = best_time(fn, 1)
                print(f"  {label:<50s} wall {wall:6.3f} s   cpu {cpu:6.3f} s")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess max RSS: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
