#!/usr/bin/env python
"""Short benchmark of a trained model on the real MVTec AD bottle images: fit, then image AUROC and wall time.

    python scripts/benchmark_trained2.py --model ae
    python scripts/benchmark_trained2.py --model efficientad --set teacher_weights=backbones/pdn_s.pth
    python scripts/benchmark_trained2.py --model draem --steps 2000 --set recon_base_width=64

Each model has a short CPU schedule below (steps, batch size, model overrides); `--steps` / `--set` change it.
Images are decoded and resized once and kept in memory. The loop follows the model contract exactly as the
trainer does (on_fit_start, configure_optimizers, training_step, scheduler, on_fit_end on the validation
normals, predict). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from ad.data._base import ImageTransform, Sample, collate, list_images, load_image, split_validation  # noqa: E402
from ad.models import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("AD_SHARED_DATA", ROOT.parent / "shared" / "data")) / "mvtec_ad"

# Short CPU schedules: a few minutes each on 2 shared CPU cores, so the networks work at 128 px internally
# (data and maps stay 256 px) with small batches. Paper budgets are far longer (each model's defaults).
SCHEDULES = {
    "ae": dict(steps=300, batch_size=8, model={"image_size": 128}),
    "vae": dict(steps=300, batch_size=8, model={"image_size": 128}),
    "beta_vae": dict(steps=300, batch_size=8, model={"image_size": 128}),
    "unet_ae": dict(steps=300, batch_size=8, model={"image_size": 128, "widths": [16, 32, 64, 128, 128]}),
    "efficientad": dict(steps=400, batch_size=1, model={"image_size": 128, "teacher_weights": "backbones/pdn_s.pth"}),
    "draem": dict(steps=400, batch_size=4, model={"image_size": 128, "recon_base_width": 16, "disc_base_width": 16}),
}


def bottle_samples(root: Path):
    cat = root / "bottle"
    train = [Sample(str(p), 0, "good", split="train") for p in list_images(cat / "train" / "good")]
    test = []
    for d in sorted(p for p in (cat / "test").iterdir() if p.is_dir()):
        test += [Sample(str(p), int(d.name != "good"), d.name) for p in list_images(d)]
    return train, test


def load_all(samples, size: int) -> torch.Tensor:
    tf = ImageTransform(size)
    return torch.stack([tf(load_image(s.path))[0] for s in samples])


def batches(images: torch.Tensor, bs: int):
    for i in range(0, len(images), bs):
        yield {"image": images[i:i + bs], "path": [str(j) for j in range(i, min(i + bs, len(images)))]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, choices=sorted(SCHEDULES))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="MVTec AD root containing bottle/")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model kwargs (YAML values)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    sched = SCHEDULES[a.model]
    steps = a.steps or sched["steps"]
    bs = a.batch_size or sched["batch_size"]
    kwargs = dict(sched["model"])
    kwargs.update({k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)})

    t0 = time.time()
    train_s, test_s = bottle_samples(Path(a.data))
    train_s, val_s = split_validation(train_s, 0.1, a.seed)
    train, val, test = (load_all(s, a.image_size) for s in (train_s, val_s, test_s))
    labels = np.array([s.label for s in test_s])
    load_s = time.time() - t0

    model = create_model(a.model, **kwargs)
    model.planned_max_steps = steps
    model.planned_max_epochs = max(1, int(np.ceil(steps * bs / len(train))))
    t0 = time.time()
    model.train()
    if inspect.signature(model.on_fit_start).parameters:  # models that take the train loader (EfficientAD)
        model.on_fit_start(batches(train, 16))
    else:
        model.on_fit_start()
    spec = model.configure_optimizers()
    g = torch.Generator().manual_seed(a.seed)
    step, losses, epoch = 0, [], 0
    while step < steps:
        order = torch.randperm(len(train), generator=g)
        for i in range(0, len(order) - bs + 1, bs):
            idx = order[i:i + bs]
            loss = model.training_step({"image": train[idx], "path": [str(j) for j in idx.tolist()]})
            spec.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            spec.optimizer.step()
            if spec.scheduler is not None and spec.scheduler_interval == "step":
                spec.scheduler.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % 100 == 0:
                print(f"step {step}/{steps} loss {np.mean(losses[-100:]):.4f} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
            if step >= steps:
                break
        epoch += 1
        if spec.scheduler is not None and spec.scheduler_interval == "epoch":
            spec.scheduler.step()
    model.eval()
    with torch.no_grad():
        val_loss = float(np.mean([float(model.validation_step(b)) for b in batches(val, 8)]))
    model.on_fit_end(batches(val, 8))
    fit_s = time.time() - t0
    t0 = time.time()
    scores = torch.cat([model.predict(b["image"]).scores for b in batches(test, 8)]).numpy()
    predict_s = time.time() - t0
    result = {
        "model": a.model, "category": "bottle", "image_size": a.image_size, "steps": steps, "batch_size": bs,
        "epochs": epoch, "model_kwargs": kwargs, "image_auroc": round(float(roc_auc_score(labels, scores)), 4),
        "train_loss_first100": round(float(np.mean(losses[:100])), 5), "train_loss_last100": round(float(np.mean(losses[-100:])), 5),
        "val_loss": round(val_loss, 5), "fit_s": round(fit_s, 1), "predict_s_per_image": round(predict_s / len(test), 4),
        "load_s": round(load_s, 1), "params_M": round(sum(q.numel() for q in model.parameters()) / 1e6, 2),
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "threads": a.threads,
        "device": "cpu",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
