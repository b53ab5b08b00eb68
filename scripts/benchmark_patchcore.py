#!/usr/bin/env python
"""PatchCore speed/accuracy/memory benchmark (not part of the test suite).

    # accuracy + time on the real MVTec AD bottle images (209 train / 83 test), 256 px, lite0, 2 threads
    python scripts/benchmark_patchcore.py --mode speed --root ../shared/data/mvtec_ad
    # peak memory on a generated category with 1000 training images at 256 px (bounded: --feature-budget-mb 128)
    python scripts/benchmark_patchcore.py --mode memory --train-images 1000 --feature-budget-mb 0

Speed mode decodes and resizes every image once (timed separately: "data"), then alternates, `--repeats`
times, (a) the backbone forward passes alone over all train+test images and (b) the full PatchCore
fit + predict over the same in-memory images, and reports image AUROC (sklearn), the phase times and the
ratio (PatchCore fit+predict) / (backbone forwards). The minimum over repeats is the least disturbed by other
processes sharing the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _load(data, split: str, batch: int):
    t0 = time.perf_counter()
    xs, ys = [], []
    for b in data.dataloader(split, batch):
        xs.append(b["image"])
        ys.append(b["label"])
    return torch.cat(xs), torch.cat(ys), time.perf_counter() - t0


def _batches(x: torch.Tensor, bs: int):
    for s in range(0, x.shape[0], bs):
        yield x[s : s + bs]


def _model(args):
    from ad.backbones import BackboneConfig
    from ad.models.memory.patchcore import PatchCore

    return PatchCore(backbone=BackboneConfig(name=args.backbone, pretrained=True), layers=tuple(args.layers),
                     coreset_ratio=args.coreset_ratio, coreset_cell_size=args.cell_size,
                     target_embed_dim=args.target_embed_dim, search=args.search,
                     feature_budget_mb=args.feature_budget_mb or None)


def _fit_predict(model, train, test, bs):
    c0, t0 = time.process_time(), time.perf_counter()
    model.on_fit_start()
    with torch.no_grad():
        for x in _batches(train, bs):
            model.training_step({"image": x})
    t1 = time.perf_counter()
    model.on_fit_end(None)
    t2 = time.perf_counter()
    scores = []
    for x in _batches(test, bs):
        scores.append(model.predict(x).scores)
    t3 = time.perf_counter()
    times = dict(features_train_s=t1 - t0, coreset_s=t2 - t1, predict_s=t3 - t2, total_s=t3 - t0,
                 total_cpu_s=time.process_time() - c0)
    return torch.cat(scores).numpy(), times


def speed(args) -> dict:
    from sklearn.metrics import roc_auc_score

    from ad.data.mvtec import MVTecAD

    data = MVTecAD(root=args.root, category=args.category, image_size=args.size, val_fraction=0.0)
    train, _, t_train = _load(data, "train", args.batch)
    test, labels, t_test = _load(data, "test", args.batch)
    model = _model(args).eval()
    fe = model.feature_extractor
    everything = torch.cat([train, test])
    runs = []
    for r in range(args.repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            for x in _batches(everything, args.batch):
                fe(x)
        backbone_s, backbone_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        scores, times = _fit_predict(model, train, test, args.batch)
        runs.append({"backbone_s": backbone_s, "backbone_cpu_s": backbone_cpu_s, **times,
                     "ratio": times["total_s"] / backbone_s, "cpu_ratio": times["total_cpu_s"] / backbone_cpu_s})
        print(json.dumps({"repeat": r, **{k: round(v, 3) for k, v in runs[-1].items()}}), flush=True)
    best_backbone = min(r["backbone_s"] for r in runs)
    best_total = min(r["total_s"] for r in runs)
    return {
        "category": args.category, "train_images": int(train.shape[0]), "test_images": int(test.shape[0]),
        "image_size": args.size, "threads": torch.get_num_threads(), "backbone": args.backbone,
        "memory_bank": list(model.memory_bank.shape),
        "image_auroc": float(roc_auc_score(labels.numpy(), scores)),
        "target_embed_dim": args.target_embed_dim, "search": args.search,
        "data_decode_resize_s": round(t_train + t_test, 2),
        "backbone_forward_s_min": round(best_backbone, 2), "patchcore_fit_predict_s_min": round(best_total, 2),
        "ratio_of_minima": round(best_total / best_backbone, 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
    }


def memory(args) -> dict:
    from ad.data.synthetic import Synthetic, generate_synthetic

    root = Path(args.data_dir or tempfile.mkdtemp(prefix="ad_bench_"))
    t0 = time.perf_counter()
    generate_synthetic(root, categories=[args.synthetic_category], num_train=args.train_images, num_test_good=20,
                       num_test_defect=10, size=args.size, seed=0)
    gen_s = time.perf_counter() - t0
    data = Synthetic(root=str(root), category=args.synthetic_category, num_train=args.train_images, num_test_good=20,
                     num_test_defect=10, generated_size=args.size, image_size=args.size, val_fraction=0.0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = _model(args).eval()
    t0 = time.perf_counter()
    model.on_fit_start()
    n = 0
    with torch.no_grad():
        for b in data.dataloader("train", args.batch):  # streamed: images are never all in memory
            model.training_step(b)
            n += b["image"].shape[0]
        t1 = time.perf_counter()
        n_patches = n * model.embed(b["image"][:1]).shape[1:3].numel()
    model.on_fit_end(None)
    t2 = time.perf_counter()
    from sklearn.metrics import roc_auc_score

    scores, labels = [], []
    for b in data.dataloader("test", args.batch):
        scores.append(model.predict(b["image"]).scores)
        labels.append(b["label"])
    t3 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "category": args.synthetic_category, "train_images": n, "image_size": args.size,
        "train_patches": n_patches, "feature_dim": model.embed_dim, "memory_bank": list(model.memory_bank.shape),
        "generate_s": round(gen_s, 1), "fit_features_s": round(t1 - t0, 1), "coreset_s": round(t2 - t1, 1),
        "predict_s": round(t3 - t2, 1),
        "image_auroc": float(roc_auc_score(torch.cat(labels).numpy(), torch.cat(scores).numpy())),
        "peak_rss_mb": round(peak, 1), "rss_before_model_mb": round(rss_before, 1),
        "feature_budget_mb": args.feature_budget_mb, "notes": list(model.notes),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="PatchCore benchmark")
    ap.add_argument("--mode", choices=["speed", "memory"], default="speed")
    shared = Path(os.environ.get("AD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--root", default=str(shared / "mvtec_ad"), help="MVTec AD root (default: $AD_SHARED_DATA/mvtec_ad)")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--coreset-ratio", type=float, default=0.1)
    ap.add_argument("--cell-size", type=int, default=256)
    ap.add_argument("--target-embed-dim", type=int, default=None, help="PatchCore target_embed_dim (default: keep all channels)")
    ap.add_argument("--search", choices=["exact", "flat", "ivf"], default="exact", help="PatchCore nearest-neighbour search")
    ap.add_argument("--feature-budget-mb", type=int, default=4096,
                    help="PatchCore feature_budget_mb (training patches held at once; 0 = no bound)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=1000)
    ap.add_argument("--synthetic-category", default="syn_tiles")
    ap.add_argument("--data-dir", default=None, help="where to generate the memory-mode category (default: a temp dir)")
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = speed(args) if args.mode == "speed" else memory(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
