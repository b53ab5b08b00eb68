#!/usr/bin/env python
"""How a big sweep's report behaves in a browser (not a unit test):

    python scripts/bench_report_scale.py [--categories 15] [--models 5] [--out DIR] [--screenshot PNG]

Generates a synthetic sweep (real image files, predictions.csv, test_maps.npz for every job: C categories x M
models), builds the report, and opens it in headless Chromium: page height (px at 1400 px width) and load time
(performance.now() at the load event), with the categories closed (the default for more than 3) and all open.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ad.rundir.maps_store import save_test_maps  # noqa: E402
from ad.metrics import image_auroc  # noqa: E402
from ad.report import build_report  # noqa: E402
from tests._fake_sweep import fake_results, make_job, write_predictions  # noqa: E402

N_NORM, N_ANOM, SIZE = 10, 10, 128


def fake_sweep(root: Path, n_cat: int, n_models: int) -> Path:
    sw = root / "sweep"
    k = 0
    for c in range(n_cat):
        cat = f"cat{c:02d}"
        rng = np.random.default_rng(zlib.crc32(cat.encode()))
        labels = np.r_[np.zeros(N_NORM, int), np.ones(N_ANOM, int)]
        paths = []
        for i, lab in enumerate(labels):
            p = root / "data" / cat / ("good" if lab == 0 else "scratch") / f"{i:03d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            yy, xx = np.mgrid[:SIZE, :SIZE]
            base = 0.5 + 0.3 * np.sin(xx / (6 + c)) * np.cos(yy / 9)
            img = np.stack([base, base * 0.9, base * 0.8], -1) + 0.05 * rng.standard_normal((SIZE, SIZE, 3))
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(p)
            paths.append(str(p))
        masks = np.zeros((labels.size, SIZE, SIZE), np.uint8)
        for i in np.flatnonzero(labels):
            y, x = rng.integers(10, SIZE - 40, 2)
            masks[i, y:y + 24, x:x + 30] = 1
        for m in range(n_models):
            model = f"model{m}"
            sep = 0.4 + 0.4 * m
            scores = rng.standard_normal(labels.size) + sep * labels
            res = fake_results(model, "synthetic", cat, 0, image_auroc(labels, scores), 0.9, 0.7)
            res["thresholds"] = {"image": 1.0, "pixel": 0.9}
            job = make_job(sw, f"{k}_{model}_{cat}", [f"model={model}", f"category={cat}"], res, model=model,
                           dataset="synthetic", category=cat)
            write_predictions(job, paths, labels, scores, threshold=1.0)
            amaps = rng.random(masks.shape).astype(np.float32) * 0.6 + sep * masks
            save_test_maps(job, paths, labels, amaps, masks, labels == 1)
            k += 1
    return sw


def measure(chromium: str, index: Path, profile: Path, shot: "Path | None") -> dict:
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--window-size=1400,1000"]
    t0 = time.perf_counter()
    dom = subprocess.run(flags + ["--dump-dom", index.resolve().as_uri()], capture_output=True, text=True,
                         timeout=300).stdout
    wall = time.perf_counter() - t0
    tag = re.search(r'<p id="img-status"[^>]*>', dom).group(0)
    out = {"height_px": int(re.search(r'data-height="(\d+)"', tag).group(1)),
           "load_ms": int(re.search(r'data-load-ms="(\d+)"', tag).group(1)),
           "broken_images": int(re.search(r'data-broken="(\d+)"', tag).group(1)), "chromium_wall_s": wall}
    if shot is not None:
        subprocess.run(flags[:-1] + ["--window-size=1400,2400", f"--screenshot={shot}", index.resolve().as_uri()],
                       capture_output=True, timeout=300)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--categories", type=int, default=15)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--out", default=None, help="keep the sweep and reports here (default: a temporary folder)")
    ap.add_argument("--screenshot", default=None, help="PNG of the top 1400x2400 px of the default report")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="report_scale_"))
    sw = fake_sweep(root, args.categories, args.models)
    for label, open_n in (("default (categories closed)", None), ("all categories open", 10**6)):
        out = root / ("report" if open_n is None else "report_open")
        t0 = time.perf_counter()
        res = build_report([sw], out, bootstrap=200, open_categories=open_n)
        build_s = time.perf_counter() - t0
        m = measure(chromium, res["index"], root / "profile", Path(args.screenshot) if args.screenshot and open_n is None else None)
        print(f"{args.categories} categories x {args.models} models, {label}: page height {m['height_px']} px at "
              f"1400 px width, load {m['load_ms']} ms in the page ({m['chromium_wall_s']:.1f} s chromium wall), "
              f"{m['broken_images']} broken images; build {build_s:.1f} s, {res['bytes'] / 1e6:.1f} MB")
    print(f"outputs under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
