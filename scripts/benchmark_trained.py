#!/usr/bin/env python
"""Fit one trained model on real MVTec AD images with a short schedule; report image AUROC and wall time.

    python scripts/benchmark_trained.py --model stfpm
    python scripts/benchmark_trained.py --model fastflow --max-steps 60 --threads 2 --json out.json
    python scripts/benchmark_trained.py --model efficientad --set teacher_weights=backbones/pdn_s.pth
    python scripts/benchmark_trained.py --model draem --max-steps 2000 --set recon_base_width=64

Defaults: MVTec AD bottle from ../shared/data/mvtec_ad, 256 px, pretrained tf_efficientnet_lite0 for the models
that take a backbone, the model's short CPU schedule from SCHEDULES below (`--max-steps`, `--batch-size`,
`--set KEY=VALUE` change it), the generic Trainer (no early stopping, final weights scored).
Images are decoded and resized once and kept in memory, so the timings measure the model, not PNG decoding.
The image AUROC is computed with scikit-learn on the 83 test images (the runner's metrics are not involved).
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import resource
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402
import yaml  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from ad.backbones import BackboneConfig  # noqa: E402
from ad.data.mvtec import MVTecAD  # noqa: E402
from ad.engine.trainer import Trainer, seed_everything  # noqa: E402
from ad.models import MODELS  # noqa: E402

#: Short but sensible CPU schedules per model: a budget of optimisation steps, the train batch size and model
#: keyword overrides. Paper schedules (hundreds of epochs) are what the models declare for real runs; these are
#: for a quick check. The backbone-free networks work at 128 px internally (data and maps stay at --image-size).
SCHEDULES: Dict[str, Dict[str, Any]] = {
    # Student from scratch: needs the most updates; smaller batches give more of them per image seen.
    "stfpm": {"max_steps": 100, "batch_size": 8},
    "reverse_distillation": {"max_steps": 100, "batch_size": 8},
    "fastflow": {"max_steps": 100, "batch_size": 8},
    "ae": {"max_steps": 300, "batch_size": 8, "model": {"image_size": 128}},
    "vae": {"max_steps": 300, "batch_size": 8, "model": {"image_size": 128}},
    "beta_vae": {"max_steps": 300, "batch_size": 8, "model": {"image_size": 128}},
    "unet_ae": {"max_steps": 300, "batch_size": 8, "model": {"image_size": 128, "widths": [16, 32, 64, 128, 128]}},
    "efficientad": {"max_steps": 400, "batch_size": 1,
                    "model": {"image_size": 128, "teacher_weights": "backbones/pdn_s.pth"}},
    "draem": {"max_steps": 400, "batch_size": 4, "model": {"image_size": 128, "recon_base_width": 16, "disc_base_width": 16}},
    # Teachers distilled 100 steps each (paper: 50k on ImageNet) before 60 student steps, at 128 px internally:
    # what a loaded shared 2-core machine finishes in ~30 min.
    "uninformed_students": {"max_steps": 60, "batch_size": 4, "model": {"teacher_steps": 100}},
    "feature_ae": {"max_steps": 200, "batch_size": 4},
    "wae": {"max_steps": 300, "batch_size": 8, "model": {"image_size": 128}},
    # Flow/discriminator models on frozen features (paper budgets: 160-200 epochs). DifferNet: each image is seen
    # under 4 rotations at 3 scales, and 4 instead of 64 test rotations (each costs a forward and a backward pass).
    "simplenet": {"max_steps": 100, "batch_size": 8},
    "cflow": {"max_steps": 100, "batch_size": 8},
    "differnet": {"max_steps": 40, "batch_size": 4, "model": {"test_transforms": 4}},
}


class _InMemory(Dataset):
    def __init__(self, dataset: Dataset) -> None:
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class CachedMVTec(MVTecAD):
    """MVTec AD whose decoded, resized images stay in memory across epochs."""

    @lru_cache(maxsize=None)
    def dataset(self, split: str, limit: Optional[int] = None):  # type: ignore[override]
        return _InMemory(super().dataset(split, limit))


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, choices=sorted(SCHEDULES), help="registered model name")
    shared = Path(os.environ.get("AD_SHARED_DATA", REPO.parent / "shared" / "data"))
    p.add_argument("--root", default=str(shared / "mvtec_ad"), help="MVTec AD root (default: $AD_SHARED_DATA/mvtec_ad)")
    p.add_argument("--category", default="bottle")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone init (for pipeline checks only)")
    p.add_argument("--max-steps", type=int, default=None, help="override the schedule's step budget")
    p.add_argument("--batch-size", type=int, default=None, help="override the schedule's train batch size")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model keyword overrides (YAML values)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    schedule = dict(SCHEDULES[args.model])
    if args.max_steps is not None:
        schedule["max_steps"] = args.max_steps
    if args.batch_size is not None:
        schedule["batch_size"] = args.batch_size
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)

    t0 = time.perf_counter()
    data = CachedMVTec(root=args.root, category=args.category, image_size=args.image_size, val_fraction=0.1, seed=args.seed)
    for split in ("train", "val", "test"):
        data.dataset(split)
    load_s = time.perf_counter() - t0

    kwargs = dict(schedule.get("model", {}))
    kwargs.update({k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)})
    cls = MODELS.get(args.model)
    takes_backbone = "backbone" in inspect.signature(cls.__init__).parameters
    if takes_backbone:
        kwargs.setdefault("backbone", BackboneConfig(name=args.backbone, pretrained=not args.no_pretrained))
    model = cls(**kwargs)
    trainer = Trainer(max_steps=schedule["max_steps"], max_epochs=schedule.get("max_epochs"),
                      batch_size=schedule["batch_size"], eval_batch_size=16, device=args.device,
                      progress_bar=False, seed=args.seed, early_stopping={"enabled": False})
    fit = trainer.fit(model, data)
    preds = trainer.predict(model, data.dataloader("test", 16))
    total_s = time.perf_counter() - t0

    result = {
        "model": args.model,
        "category": args.category,
        "backbone": (args.backbone + ("" if not args.no_pretrained else " (random init)")) if takes_backbone else None,
        "model_kwargs": {k: v for k, v in kwargs.items() if k != "backbone"},
        "image_size": args.image_size,
        "steps": fit.steps,
        "epochs": fit.epochs,
        "batch_size": schedule["batch_size"],
        "train_images": len(data.samples("train")),
        "test_images": len(preds.scores),
        "image_auroc": float(roc_auc_score(preds.labels, preds.scores)),
        "image_ap": float(average_precision_score(preds.labels, preds.scores)),
        "final_train_loss": fit.train_losses[-1] if fit.train_losses else None,
        "final_val_loss": fit.val_losses[-1] if fit.val_losses else None,
        "load_s": round(load_s, 1),
        "fit_s": round(fit.fit_s, 1),
        "predict_s": round(preds.seconds, 1),
        "predict_ms_per_image": round(1000 * preds.seconds / len(preds.scores), 1),
        "total_s": round(total_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "device": str(trainer.device),
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=2))
    print(
        f"| {args.model} | {result['backbone'] or '-'} | {args.image_size} | {fit.steps} x {schedule['batch_size']} | "
        f"{result['image_auroc']:.3f} | {result['fit_s']:.0f} s | {result['total_s']:.0f} s |"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
