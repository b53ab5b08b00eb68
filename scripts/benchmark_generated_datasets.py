"""Official benchmark metrics of a few models on generated MVTec AD 2 / MVTec LOCO / Real-IAD layouts,
single-class vs unified (the numbers of docs/benchmark_datasets.md's generated-set table).

    python scripts/benchmark_generated_datasets.py [--models patchcore,padim,stfpm] [--out /tmp/gen_bench]

Each dataset gets two generated categories (tests/layouts.py: tiny 48-64 px textures with pasted defects), so
the numbers check that everything runs and is reported, not how good a model is on the real data. Random
backbone weights (offline); STFPM trains 20 steps.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.layouts import mvtec_ad2, mvtec_loco, real_iad  # noqa: E402

DATASETS = {"mvtec_ad2": (mvtec_ad2, ("can", "vial"), ("aupro_fpr5", "segf1")),
            "mvtec_loco": (mvtec_loco, ("box_like", "jar_like"), ("au_spro_fpr5_mean", "image_auroc_mean")),
            "real_iad": (real_iad, ("toy9", "toy8"), ("sample_auroc",))}
TRAIN = {"stfpm": ["trainer.max_steps=20", "trainer.max_epochs=20"]}


def run(tmp: Path, name: str, overrides):
    from omegaconf import open_dict

    from ad.config import compose
    from ad.train import run as train_run

    run_dir = tmp / name
    cfg = compose(overrides, output_dir=str(run_dir))
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp)
        del cfg["hydra"]
    return train_run(cfg, run_dir, choices, list(overrides))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="patchcore,padim,stfpm")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--out", default="/tmp/ad_generated_benchmarks")
    args = ap.parse_args()
    out = Path(args.out)
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| dataset | model | setting | image AUROC | official metrics | wall s |")
    print("|---|---|---|---|---|---|")
    for dataset in args.datasets.split(","):
        build, cats, keys = DATASETS[dataset]
        root = out / "data" / dataset
        if not root.exists():
            build(root, category=cats[0])
            build(root, seed=11, category=cats[1])
        for model in args.models.split(","):
            base = [f"model={model}", "trainer=smoke", "backbone.pretrained=false", "dataset.image_size=48",
                    "trainer.limit_test=null", "trainer.limit_val=null", "trainer.limit_train=null",
                    f"dataset={dataset}", f"dataset.root={root}", *TRAIN.get(model, [])]
            for setting, extra in (("single", [f"dataset.category={cats[0]}"]),
                                   ("unified", ["setting=unified", f"setting.categories=[{cats[0]},{cats[1]}]"])):
                t = time.perf_counter()
                res = run(out / "runs", f"{dataset}_{model}_{setting}", base + extra)
                wall = time.perf_counter() - t
                if res.status != "ok":
                    print(f"| {dataset} | {model} | {setting} | failed: {res.error} | | |")
                    continue
                b = res.benchmark or {}
                vals = ", ".join(f"{k} {b.get(k):.3f}" if b.get(k) is not None else f"{k} n/a" for k in keys)
                print(f"| {dataset} | {model} | {setting} | {res.image.auroc:.3f} | {vals} | {wall:.0f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
