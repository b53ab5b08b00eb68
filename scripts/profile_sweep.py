#!/usr/bin/env python
"""Where a PatchCore sweep's CPU-seconds go beyond its decode + forward floor (not a test).

    python scripts/make_mvtec_like.py --out /tmp/mvtec3 --categories bottle,cable,zipper
    python scripts/profile_sweep.py --root /tmp/mvtec3 --out /tmp/profile.json

Runs the categories one after another in this process, exactly as the basic launcher runs a `-m` sweep
(`ad.train.run` per job, one cold cache dir), under cProfile, and then the floor in the same process: every
image decoded once plus PatchCore's backbone forwards over all of them. CPU-seconds (process time) are reported
because they hardly depend on other processes' load; wall seconds and the load average are recorded beside them.
The profile is cut into buckets by the functions that own the work (cumulative time, outermost call only).
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# bucket -> (file name, function) pairs that own its work (matched on the file's base name, so the profile of
# an older package layout reads the same); nested calls inside a bucket are counted once.
BUCKETS = {
    "decode images": [("_base.py", "decode_sample")],
    "backbone forward": [("__init__.py", "forward")],  # ad/backbones: the feature extractor
    "coreset": [("_coreset.py", "greedy_coreset")],
    "k-NN search": [("_memory.py", "search")],
    "anomaly map upsampling + blur": [("_maps.py", "upsample_maps"), ("_memory.py", "upsample_maps")],
    "thresholds + metrics": [("evaluation.py", "calibrate"), ("evaluation.py", "evaluate_category")],
    "write outputs": [("artefacts.py", "write_predictions"), ("artefacts.py", "save_model"),
                      ("artefacts.py", "write_history"), ("maps_store.py", "add"), ("maps_store.py", "close")],
    "tensorboard + visualisations": [("tensorboard.py", "log_test"), ("tensorboard.py", "log_final"),
                                     ("tensorboard.py", "__init__"), ("tensorboard.py", "close"),
                                     ("pipeline.py", "visualizations")],
}


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def _timer():
    return time.process_time(), time.perf_counter()


def sweep(root: str, categories: List[str], threads: int, work: str) -> Dict:
    from omegaconf import open_dict

    from ad.config import compose
    from ad.train import run

    jobs = []
    for cat in categories:
        overrides = ["model=patchcore", "dataset=mvtec", f"dataset.root={root}", f"category={cat}",
                     f"trainer.num_threads={threads}", "trainer.progress_bar=false"]
        cfg = compose(overrides, output_dir=f"{work}/{cat}")
        choices = dict(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            cfg.paths.root_dir = work
            del cfg["hydra"]
        c0, w0 = _timer()
        record = run(cfg, Path(work) / cat, choices, overrides)
        c1, w1 = _timer()
        assert record.status == "ok", record.error
        jobs.append({"category": cat, "cpu_s": round(c1 - c0, 1), "wall_s": round(w1 - w0, 1),
                     "fit_s": round(record.timing.fit_s, 1), "predict_s": round(record.timing.predict_s, 1)})
    return {"jobs": jobs}


def floor(root: str, categories: List[str], size: int) -> Dict:
    """Decode once (one thread, no cache) + backbone forwards (batch 32): what no sweep can go below."""
    import torch

    from ad.data.mvtec import MVTecAD
    from ad.models import create_model

    model = create_model("patchcore").eval()
    decode = backbone = 0.0
    n = 0
    for cat in categories:
        data = MVTecAD(root=root, category=cat, image_size=size, val_fraction=0.1, seed=0, cache="off", decode_threads=0)
        for s in ("train", "val", "test"):
            c0, _ = _timer()
            batches = [b["image"] for b in data.dataloader(s, 32)]
            c1, _ = _timer()
            with torch.no_grad():
                for images in batches:
                    model.feature_extractor(images, channels_last=True)
            c2, _ = _timer()
            decode += c1 - c0
            backbone += c2 - c1
            n += sum(b.shape[0] for b in batches)
    return {"images": n, "decode_cpu_s": round(decode, 1), "backbone_cpu_s": round(backbone, 1),
            "floor_cpu_s": round(decode + backbone, 1)}


def buckets(stats: pstats.Stats, total: float) -> Dict[str, float]:
    """CPU-s per bucket: the cumulative time of its functions, outermost calls only."""
    raw = stats.stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    out: Dict[str, float] = {}
    for bucket, keys in BUCKETS.items():
        owned = {k for k in raw if (Path(k[0]).name, k[2]) in keys and "/ad/" in k[0]}
        top = [k for k in owned if not any(c in owned for c in raw[k][4])]
        out[bucket] = round(sum(raw[k][3] for k in top), 1)
    out["other (per-job setup, scoring glue, ...)"] = round(total - sum(out.values()), 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True)
    p.add_argument("--categories", default=None, help="comma-separated (default: every category under --root)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--top", type=int, default=40, help="functions listed by own time")
    p.add_argument("--from-prof", type=Path, default=None, help="only print the buckets of a saved profile")
    args = p.parse_args(argv)
    if args.from_prof:
        stats = pstats.Stats(str(args.from_prof))
        total = max(v[3] for v in stats.stats.values())
        print(json.dumps(buckets(stats, total), indent=1))
        stats.sort_stats("tottime").print_stats(args.top)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    cats = args.categories.split(",") if args.categories else sorted(
        d.name for d in Path(args.root).iterdir() if (d / "train").is_dir())
    result: Dict = {"root": args.root, "categories": cats, "load_before": load()}
    prof = cProfile.Profile(time.process_time)  # CPU time of this process (all its threads)
    c0, w0 = _timer()
    with tempfile.TemporaryDirectory() as work:
        prof.enable()
        result.update(sweep(args.root, cats, args.threads, work))
        prof.disable()
    c1, w1 = _timer()
    result["sweep_cpu_s"], result["sweep_wall_s"] = round(c1 - c0, 1), round(w1 - w0, 1)
    if args.out:  # the sweep's profile first: it is the long part
        prof.dump_stats(str(args.out.with_suffix(".prof")))
    result["floor"] = floor(args.root, cats, args.size)
    result["cpu_ratio"] = round(result["sweep_cpu_s"] / result["floor"]["floor_cpu_s"], 3)
    result["load_after"] = load()
    stats = pstats.Stats(prof)
    result["buckets_cpu_s"] = buckets(stats, result["sweep_cpu_s"])
    print(json.dumps(result, indent=1))
    stats.sort_stats("tottime").print_stats(args.top)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        stats.dump_stats(str(args.out.with_suffix(".prof")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
