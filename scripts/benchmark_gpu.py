#!/usr/bin/env python
"""Every model on one device, fp32 vs mixed precision: fit/predict time, images/s, peak memory, metric drift.

    python scripts/benchmark_gpu.py                                   # CUDA, all models, real bottle, short budgets
    python scripts/benchmark_gpu.py --models patchcore,stfpm --steps 200 --json gpu.json
    python scripts/benchmark_gpu.py --device cpu --models patchcore,stfpm --steps 2 --limit 24 --image-size 128

For each model and precision (`trainer.precision=fp32`, then `amp` — autocast + GradScaler on CUDA, bfloat16
autocast on CPU) the real configs are composed (`conf/model/<name>.yaml`, the default backbone), trained with
`--steps` optimisation steps (memory models: their one feature pass), and scored on the test split. Reported per
row: fit seconds, train images/s, predict ms/image and images/s, peak device memory (CUDA: max allocated; CPU:
the process' peak RSS so far), image AUROC (and pixel AUROC when the category has masks); per model the AMP
minus fp32 AUROC difference and the Spearman correlation of the two runs' test scores. Images are decoded once
(memory cache) before any timing. Prints a Markdown table; `--json` writes every number.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _overrides(args, name: str, precision: str) -> List[str]:
    out = [f"model={name}", f"trainer.device={args.device}", f"trainer.precision={precision}",
           "trainer.progress_bar=false", "trainer.early_stopping.enabled=false", f"trainer.max_steps={args.steps}",
           f"trainer.eval_batch_size={args.eval_batch_size}", f"seed={args.seed}"]
    if args.batch_size:
        out.append(f"trainer.batch_size={args.batch_size}")
    if args.threads:
        out.append(f"trainer.num_threads={args.threads}")
    if name == "efficientad" and not (REPO / "backbones" / "pdn_s.pth").is_file():
        out.append("model.teacher_weights=random")  # no distilled teacher here: times are still representative
    return out + list(args.set)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(args, name: str, precision: str, data) -> Dict:
    from hydra.utils import instantiate
    from sklearn.metrics import roc_auc_score

    from ad.config import compose
    from ad.engine.trainer import Trainer, seed_everything

    cfg = compose(_overrides(args, name, precision))
    seed_everything(args.seed)
    trainer = Trainer(**instantiate(cfg.trainer).loop())
    trainer.limit_train = trainer.limit_val = args.limit
    model = instantiate(cfg.model)
    dev = trainer.device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    fit = trainer.fit(model, data)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    test = trainer.predict(model, data.dataloader("test", trainer.eval_batch_size, limit=args.limit))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    n_train = len(data.dataset("train", args.limit))
    seen = fit.steps * fit.budget.batch_size if fit.steps else n_train * max(1, fit.epochs)
    row = {
        "model": name, "precision": precision, "amp": bool(trainer.use_amp), "device": str(dev),
        "steps": fit.steps, "batch_size": fit.budget.batch_size, "fit_s": round(fit.fit_s, 3),
        "train_images_per_s": round(seen / max(fit.fit_s, 1e-9), 1),
        "predict_ms_per_image": round(1000 * test.seconds / len(test.scores), 2),
        "predict_images_per_s": round(len(test.scores) / max(test.seconds, 1e-9), 1),
        "peak_memory_mb": round(_peak_memory_mb(dev)),
        "image_auroc": float(roc_auc_score(test.labels, test.scores)) if len(set(test.labels)) == 2 else None,
        "pixel_auroc": None, "scores": test.scores.tolist(),
    }
    if data.has_masks and test.has_mask.all():
        from ad.metrics import pixel_auroc

        row["pixel_auroc"] = float(pixel_auroc(test.masks, test.maps))
    return row


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def main(argv=None) -> int:
    from ad.models import MODELS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = Path(os.environ.get("AD_SHARED_DATA", REPO.parent / "shared" / "data"))
    p.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu")
    p.add_argument("--models", default="all", help="comma-separated, or all: " + ",".join(MODELS.names()))
    p.add_argument("--root", default=str(shared / "mvtec_ad"), help="MVTec-layout root")
    p.add_argument("--category", default="bottle")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=200, help="optimisation steps of trained models")
    p.add_argument("--batch-size", type=int, default=None, help="train batch (default: each model's own)")
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="at most N train / val / test images (quick checks)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--precisions", default="fp32,amp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides for every run")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device visible: run with --device cpu (or on a GPU machine)")
    from ad.data.mvtec import MVTecAD

    names = MODELS.names() if args.models == "all" else [m.strip() for m in args.models.split(",")]
    data = MVTecAD(root=args.root, category=args.category, image_size=args.image_size, val_fraction=0.1,
                   seed=args.seed, cache="memory")
    for split in ("train", "val", "test"):  # decode once, outside every timing
        for _ in data.dataloader(split, 32, limit=args.limit):
            pass
    rows, summary = [], []
    for name in names:
        per = {}
        for precision in args.precisions.split(","):
            t = time.perf_counter()
            try:
                per[precision] = run_one(args, name, precision, data)
            except Exception as exc:  # one model failing on a device must not hide the others' numbers
                per[precision] = {"model": name, "precision": precision, "error": f"{type(exc).__name__}: {exc}"}
            per[precision]["wall_s"] = round(time.perf_counter() - t, 2)
            rows.append(per[precision])
            print(json.dumps({k: v for k, v in per[precision].items() if k != "scores"}), flush=True)
        a, b = per.get("fp32", {}), per.get("amp", {})
        if a.get("scores") and b.get("scores"):
            d_img = None if a["image_auroc"] is None or b["image_auroc"] is None else b["image_auroc"] - a["image_auroc"]
            d_pix = None if a["pixel_auroc"] is None or b["pixel_auroc"] is None else b["pixel_auroc"] - a["pixel_auroc"]
            summary.append({"model": name, "delta_image_auroc": d_img, "delta_pixel_auroc": d_pix,
                            "score_spearman": _spearman(a["scores"], b["scores"]),
                            "fit_speedup": a["fit_s"] / max(b["fit_s"], 1e-9),
                            "predict_speedup": a["predict_ms_per_image"] / max(b["predict_ms_per_image"], 1e-9)})
    _print_table(rows, summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "amp_vs_fp32": summary,
                                               "torch": torch.__version__, "cuda": torch.version.cuda,
                                               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
                                              indent=2) + "\n")
    return 0


def _print_table(rows, summary) -> None:
    f = lambda v, fmt: "—" if v is None else format(v, fmt)  # noqa: E731
    print("\n| model | precision | fit s | train img/s | predict ms/img | predict img/s | peak MB | image AUROC |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['precision']} | failed: {r['error'][:80]} | | | | | |")
            continue
        print(f"| {r['model']} | {r['precision']}{'' if r['amp'] or r['precision'] == 'fp32' else ' (off)'} | "
              f"{r['fit_s']:.2f} | {r['train_images_per_s']:.1f} | {r['predict_ms_per_image']:.2f} | "
              f"{r['predict_images_per_s']:.1f} | {r['peak_memory_mb']} | {f(r['image_auroc'], '.4f')} |")
    if summary:
        print("\n| model | Δ image AUROC (amp − fp32) | Δ pixel AUROC | score Spearman | fit speed-up | predict speed-up |")
        print("|---|---|---|---|---|---|")
        for s in summary:
            print(f"| {s['model']} | {f(s['delta_image_auroc'], '+.4f')} | {f(s['delta_pixel_auroc'], '+.4f')} | "
                  f"{s['score_spearman']:.4f} | {s['fit_speedup']:.2f}× | {s['predict_speedup']:.2f}× |")


if __name__ == "__main__":
    raise SystemExit(main())
