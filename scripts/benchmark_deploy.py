#!/usr/bin/env python
"""Latency of the deployment paths, per model, batch 1, CPU: torch eager (`ad.predict`'s path: model.pt,
`predict_batch`) vs ONNX Runtime vs OpenVINO (both through `ad.deploy.Inferencer`, preprocessing included
for all three: file decode, resize, scoring).

    python scripts/benchmark_deploy.py --fit all --image-size 128 --out bench_deploy.json   # tiny fitted runs
    python scripts/benchmark_deploy.py --runs runs/patchcore/bottle ...                       # existing runs

Each backend runs in its own process (peak RSS is per process: the ONNX Runtime / OpenVINO processes never
import torch), with `--threads` threads (default 2), after `--warmup` calls, timing `--iters` calls on the
same image. Reports p50/p95 ms per image, peak RSS, model file size and the export's parity error (max over
the run's held-out normals and test images). State the machine load next to the numbers (printed here).
Not part of CI.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _child(backend: str, target: str, image: str, threads: int, warmup: int, iters: int) -> Dict[str, Any]:
    """One backend in this process: timings (ms) and peak RSS (MB)."""
    import numpy as np

    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        from ad.data import ImageTransform, load_image
        from ad.engine.scoring import predict_batch
        from ad.predict import load_run

        model, meta = load_run(target, "cpu")
        transform = ImageTransform(meta["data"]["image_size"] or 256, meta["data"].get("center_crop"))
        device = torch.device("cpu")

        def call():
            return float(predict_batch(model, transform(load_image(image))[0][None], device, False)[0][0])
    else:
        from ad.deploy import Inferencer

        inf = Inferencer(target, threads=threads)

        def call():
            return inf.predict(image).score
    for _ in range(warmup):
        score = call()
    times, cpu = [], []
    for _ in range(iters):
        t, c = time.perf_counter(), time.process_time()
        score = call()
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    # CPU ms per image (all threads) is the load-robust number on a shared machine; wall p50/p95 are what a
    # line PC sees when it is idle
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "cpu_ms": float(np.median(cpu)), "score": score,
            "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process image's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that across fork+exec,
    so a child started by this (torch-loaded) script would report the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _measure(backend: str, target: Path, image: Path, args) -> Dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", backend, str(target), str(image), str(args.threads),
           str(args.warmup), str(args.iters)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fit(name: str, root: Path, size: int) -> Path:
    """A small fitted run of `name` on generated data (random-weight backbones: latency does not depend on
    the weights' values), like the test suite's, at `size` px."""
    from omegaconf import open_dict

    from ad.config import compose
    from ad.train import run
    from tests.test_budget import SMALL

    vit = name in ("dinomaly", "anomalydino")
    side = (size // 14) * 14 if vit else size
    overrides = [f"model={name}", "trainer=smoke", "trainer.limit_train=null", "trainer.limit_test=null",
                 "trainer.limit_val=null", "dataset.num_train=24", "dataset.num_test_good=4",
                 "dataset.num_test_defect=2", f"dataset.generated_size={max(side, 64)}", f"dataset.image_size={side}",
                 "dataset.val_fraction=0.25", "category=syn_disc", "backbone.pretrained=false",
                 f"paths.backbone_dir={root / 'none'}", "evaluation.save_maps=false"]
    overrides += [o for o in SMALL.get(name, []) if not o.startswith("model.image_size")]
    if name == "efficientad":
        overrides.append("model.teacher_weights=random")
    run_dir = root / name / "run"
    cfg = compose(overrides, output_dir=str(run_dir))
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        cfg.paths.root_dir = str(root / name)
        del cfg["hydra"]
    res = run(cfg, run_dir, choices, overrides)
    if res.status != "ok":
        raise RuntimeError(f"{name}: {res.error}")
    return run_dir


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        backend, target, image, threads, warmup, iters = sys.argv[2:8]
        print(json.dumps(_child(backend, target, image, int(threads), int(warmup), int(iters))))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", default=[], help="finished run dirs to benchmark")
    p.add_argument("--fit", nargs="*", default=[], help="model names (or 'all') to fit small synthetic runs for")
    p.add_argument("--fit-dir", default="/tmp/ad_bench_deploy", help="where fitted runs go")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--formats", nargs="*", default=["onnx", "openvino"])
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args()

    from ad.export import export_run
    from ad.registry import MODELS

    names = MODELS.names() if args.fit == ["all"] else args.fit
    # fitted one at a time, each measured as soon as it exists: rows come out while later models still fit
    runs = itertools.chain((Path(r) for r in args.runs),
                           (_fit(name, Path(args.fit_dir), args.image_size) for name in names))
    rows = []
    for run_dir in runs:
        import csv

        with open(run_dir / "predictions.csv", newline="") as f:
            image = Path(next(csv.DictReader(f))["path"])
        row: Dict[str, Any] = {"run": str(run_dir), "load_before": os.getloadavg()[0]}
        row["torch"] = _measure("torch", run_dir, image, args)
        for fmt in args.formats:
            try:
                out = export_run(run_dir, fmt)
            except Exception as exc:  # a model that does not export: its one-line reason is the row
                row[fmt] = {"error": str(exc).splitlines()[0]}
                continue
            manifest = json.loads((out / "deploy.json").read_text())
            row["model"] = manifest["model"]["name"]
            size = sum((out / n).stat().st_size for n in manifest["model"]["sha256"]) / 2**20
            row[fmt] = {**_measure(fmt, out, image, args), "file_mb": size,
                        "parity_score_rel": manifest["parity"]["max_score_rel_error"],
                        "parity_map_rel": manifest["parity"]["max_map_rel_error"]}
        row.setdefault("model", run_dir.parent.name)
        row["load_after"] = os.getloadavg()[0]
        rows.append(row)
        print(_line(row), flush=True)
    print(f"\nthreads {args.threads}, batch 1, {args.iters} timed calls after {args.warmup} warm-up; "
          f"load average now {os.getloadavg()}; {os.cpu_count()} CPUs")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


def _line(row: Dict[str, Any]) -> str:
    def cell(d):
        if not d:
            return "-"
        if "error" in d:
            return f"error: {d['error'][:60]}"
        return f"{d['p50_ms']:.1f}/{d['p95_ms']:.1f} ms (cpu {d['cpu_ms']:.1f}), {d['peak_rss_mb']:.0f} MB"

    t, o, v = row.get("torch"), row.get("onnx"), row.get("openvino")
    speed = ""
    if t and o and "p50_ms" in t and "p50_ms" in (o or {}):
        speed = f" | onnx x{t['p50_ms'] / o['p50_ms']:.2f} (cpu x{t['cpu_ms'] / o['cpu_ms']:.2f})"
    if t and v and "p50_ms" in t and "p50_ms" in (v or {}):
        speed += f" | openvino x{t['p50_ms'] / v['p50_ms']:.2f} (cpu x{t['cpu_ms'] / v['cpu_ms']:.2f})"
    return f"{row['model']:22s} | torch {cell(t)} | onnx {cell(o)} | openvino {cell(v)}{speed}"


if __name__ == "__main__":
    sys.exit(main())
