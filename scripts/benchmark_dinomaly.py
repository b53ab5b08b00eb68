#!/usr/bin/env python
"""Dinomaly step time and memory: training steps (forward + backward + StableAdamW) and prediction, on random
images at the paper's crop size. A speed/memory measurement only — never a quality number.

    python scripts/benchmark_dinomaly.py --device cuda                       # ViT-B/14-reg4, 392 px, batch 16, AMP
    python scripts/benchmark_dinomaly.py --device cpu --backbone vit_small_patch14_reg4_dinov2 --image-size 224 --batch-size 4

Random backbone weights unless `--pretrained` (then the weight file must be in --backbone-dir): the timing
does not depend on the values. Prints one JSON line (and writes it to --json).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    from ad.io import peak_rss_mb
    from ad.models.base import Budget
    from ad.models.foundation.dinomaly import Dinomaly

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", default="vit_base_patch14_reg4_dinov2")
    ap.add_argument("--pretrained", action="store_true", help="load the backbone weights (backbones/...)")
    ap.add_argument("--backbone-dir", default="backbones")
    ap.add_argument("--image-size", type=int, default=392)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="auto: on for CUDA (like the trainer)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = args.amp == "on" or (args.amp == "auto" and device.type == "cuda")
    torch.manual_seed(0)
    model = Dinomaly(backbone={"name": args.backbone, "pretrained": args.pretrained, "weights_dir": args.backbone_dir})
    model.to(device)
    total = args.warmup + args.steps
    spec = model.configure_optimizers(Budget(max_epochs=None, max_steps=total, batch_size=args.batch_size, steps_per_epoch=total))
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    times, cpu_times = [], []
    for i in range(total):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast(device.type, enabled=amp):
            loss = model.training_step({"image": x})
        spec.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(spec.optimizer)
        scaler.update()
        spec.scheduler.step()
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, enabled=amp):
        model.predict(x)
        _sync(device)
        t0 = time.perf_counter()
        model.predict(x)
        _sync(device)
    predict_s = time.perf_counter() - t0
    result = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "backbone": args.backbone, "pretrained": args.pretrained, "image_size": args.image_size,
        "batch_size": args.batch_size, "amp": amp, "threads": torch.get_num_threads(), "timed_steps": len(times),
        "step_s_median": sorted(times)[len(times) // 2] if times else None,
        "step_s_min": min(times) if times else None,
        "step_cpu_s_median": sorted(cpu_times)[len(cpu_times) // 2] if cpu_times else None,
        "predict_ms_per_image": 1000 * predict_s / args.batch_size,
        "final_loss": float(loss.detach()),
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")
    return result


if __name__ == "__main__":
    main()
