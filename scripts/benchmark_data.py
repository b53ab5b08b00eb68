#!/usr/bin/env python
"""Data-path benchmarks: how close runs get to the compute limit once images are decoded once (not a test).

    python scripts/benchmark_data.py epoch --models stfpm,fastflow        # trained models: epoch wall vs pre-loaded
    python scripts/benchmark_data.py sweep                                # 4 memory models: sweep wall vs decode + compute
    python scripts/benchmark_data.py patchcore                            # one PatchCore process vs decode + backbone
    python scripts/benchmark_data.py scale --root /data/mvtec_like        # PatchCore over 15 generated categories

Every mode measures "before" (`dataset.cache=off dataset.decode_threads=0`: every epoch and job decodes every
PNG, what the loader did before the decode cache) and "after" (the defaults: memory + disk cache, one decode
thread) in the same invocation, so the ratios share the machine's load; `uptime` is recorded with each result.
Real data: MVTec AD bottle from $AD_SHARED_DATA/mvtec_ad (default ../shared/data/mvtec_ad).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from ad.data import collate  # noqa: E402
from ad.data._cache import clear_memory_cache  # noqa: E402
from ad.data.mvtec import MVTecAD  # noqa: E402
from ad.engine.trainer import Trainer, seed_everything, set_num_threads  # noqa: E402

BEFORE = {"cache": "off", "decode_threads": 0}
AFTER: Dict[str, object] = {}  # the defaults
MEMORY_MODELS = ("patchcore", "padim", "spade", "dfm")


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0] if Path("/proc/loadavg").exists() else "?"


class Preloaded:
    """A data module whose splits are decoded up front into float tensors: the loader's cost floor."""

    def __init__(self, data: MVTecAD) -> None:
        self.data = data
        self.items = {s: [data.dataset(s)[i] for i in range(len(data.samples(s)))] for s in ("train", "val", "test")}

    def samples(self, split):
        return self.data.samples(split)

    @property
    def has_masks(self):
        return self.data.has_masks

    def dataset(self, split, limit=None):
        return self.items[split]

    def dataloader(self, split, batch_size, shuffle=False, num_workers=0, limit=None, generator=None, drop_last=False):
        items = self.items[split]
        return DataLoader(items, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate,
                          drop_last=drop_last and len(items) > batch_size)


class _EpochClock:
    """Trainer callback: process CPU seconds (all threads, decode threads included) of each epoch."""

    def __init__(self) -> None:
        self.cpu: List[float] = []

    def start(self) -> None:
        self._last = time.process_time()

    def on_epoch_end(self, trainer, model, epoch, train_loss, val_loss) -> None:
        now = time.process_time()
        self.cpu.append(round(now - self._last, 2))
        self._last = now


class _Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _data(args, **kw) -> MVTecAD:
    return MVTecAD(root=args.root, category=args.category, image_size=args.size, val_fraction=0.1, seed=0, **kw)


def _model(name: str):
    from ad.models import create_model

    return create_model(name)


def epoch(args) -> Dict:
    """Trained models: wall of each epoch (train steps + validation loss) from the trainer's history."""
    out = {}
    for name in args.models.split(","):
        rows = {}
        for variant in ("preloaded", "before", "after"):
            clear_memory_cache()
            seed_everything(0)
            cache_dir = tempfile.mkdtemp(prefix="adcache-")
            base = _data(args, **(BEFORE if variant == "before" else {"cache_dir": cache_dir}))
            t = time.perf_counter()
            data = Preloaded(base) if variant == "preloaded" else base
            prep = time.perf_counter() - t
            clock = _EpochClock()
            set_num_threads(args.threads)
            trainer = Trainer(max_epochs=args.epochs, eval_batch_size=16, progress_bar=False, seed=0,
                              early_stopping={"enabled": False}, callbacks=[clock])
            clock.start()
            fit = trainer.fit(_model(name), data)
            secs = [round(h.seconds, 2) for h in fit.history]
            rows[variant] = {"epoch_s": secs, "first_s": secs[0], "later_min_s": min(secs[1:] or secs),
                             "epoch_cpu_s": clock.cpu, "first_cpu_s": clock.cpu[0],
                             "later_min_cpu_s": min(clock.cpu[1:] or clock.cpu),
                             "preload_s": round(prep, 2), "load": load()}
            print(name, variant, rows[variant], flush=True)
        floor, floor_cpu = rows["preloaded"]["later_min_s"], rows["preloaded"]["later_min_cpu_s"]
        for v in ("before", "after"):
            rows[v]["ratio_first"] = round(rows[v]["first_s"] / floor, 3)
            rows[v]["ratio_later"] = round(rows[v]["later_min_s"] / floor, 3)
            rows[v]["cpu_ratio_first"] = round(rows[v]["first_cpu_s"] / floor_cpu, 3)
            rows[v]["cpu_ratio_later"] = round(rows[v]["later_min_cpu_s"] / floor_cpu, 3)
        out[name] = rows
    return out


def _decode_all(args) -> _Timer:
    """Time to decode and resize every image of the category once (the sweep's unavoidable data cost)."""
    data = _data(args, **BEFORE)
    with _Timer() as t:
        for s in ("train", "val", "test"):
            for _ in data.dataloader(s, 32):
                pass
    return t


def _compute(args, name: str, pre: Preloaded) -> _Timer:
    """Fit + score validation and test on pre-loaded tensors: what the model itself costs."""
    seed_everything(0)
    set_num_threads(args.threads)
    trainer = Trainer(eval_batch_size=16, progress_bar=False, seed=0)
    model = _model(name)
    with _Timer() as t:
        trainer.fit(model, pre)
        trainer.predict(model, trainer.val_loader(pre))
        trainer.predict(model, pre.dataloader("test", 16))
    return t


def _cli(args, overrides: List[str], ad_root: str) -> Dict:
    """Run `python -m ad.train` and return its wall time and peak RSS (the child's ru_maxrss)."""
    env = dict(os.environ, AD_ROOT=ad_root, CI="1", PYTHONPATH=str(REPO))
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
             "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
             "print(rc, time.perf_counter() - t, u.ru_utime + u.ru_stime, u.ru_maxrss)")
    flags = [o for o in overrides if o.startswith("-")]  # Hydra's flags (-m) go before the overrides
    cmd = [sys.executable, "-c", probe, sys.executable, "-m", "ad.train", *flags, f"dataset.root={args.root}",
           f"trainer.num_threads={args.threads}", "trainer.progress_bar=false",
           *[o for o in overrides if not o.startswith("-")]]
    res = subprocess.run(cmd, cwd=ad_root, env=env, capture_output=True, text=True)
    rc, wall, cpu, rss = res.stdout.split()[-4:]
    if rc != "0":
        print(res.stderr[-3000:], file=sys.stderr)
    return {"rc": int(rc), "wall_s": round(float(wall), 1), "cpu_s": round(float(cpu), 1),
            "peak_rss_mb": round(int(rss) / 1024), "load": load()}


def _against(r: Dict, limit: float, limit_cpu: float) -> Dict:
    """A CLI result with its wall and CPU seconds as ratios to the limit."""
    r["ratio"] = round(r["wall_s"] / limit, 3)
    r["cpu_ratio"] = round(r["cpu_s"] / limit_cpu, 3)
    return r


def _flags(variant: str) -> List[str]:
    return [f"dataset.{k}={v}" for k, v in (BEFORE if variant == "before" else AFTER).items()]


def sweep(args) -> Dict:
    decode = _decode_all(args)
    pre = Preloaded(_data(args, cache="memory"))
    compute = {m: _compute(args, m, pre) for m in MEMORY_MODELS}
    limit = decode.wall + sum(c.wall for c in compute.values())
    limit_cpu = decode.cpu + sum(c.cpu for c in compute.values())
    out = {"decode_once_s": round(decode.wall, 2), "decode_once_cpu_s": round(decode.cpu, 2),
           "compute_s": {m: round(c.wall, 2) for m, c in compute.items()},
           "compute_cpu_s": {m: round(c.cpu, 2) for m, c in compute.items()},
           "limit_s": round(limit, 2), "limit_cpu_s": round(limit_cpu, 2)}
    for variant in ("before", "after"):
        with tempfile.TemporaryDirectory() as root:
            r = _cli(args, ["-m", f"model={','.join(MEMORY_MODELS)}", f"category={args.category}", *_flags(variant)],
                     root)
        out[variant] = _against(r, limit, limit_cpu)
        print(variant, r, flush=True)
    return out


def patchcore(args) -> Dict:
    from ad.models import create_model

    decode = _decode_all(args)
    pre = Preloaded(_data(args, cache="memory"))
    model = create_model("patchcore").eval()
    images = torch.cat([torch.stack([it["image"] for it in pre.items[s]]) for s in ("train", "val", "test")])
    with torch.no_grad(), _Timer() as backbone:
        for i in range(0, images.shape[0], 32):
            model.feature_extractor(images[i:i + 32], channels_last=True)
    limit, limit_cpu = decode.wall + backbone.wall, decode.cpu + backbone.cpu
    out = {"decode_once_s": round(decode.wall, 2), "decode_once_cpu_s": round(decode.cpu, 2),
           "backbone_s": round(backbone.wall, 2), "backbone_cpu_s": round(backbone.cpu, 2),
           "limit_s": round(limit, 2), "limit_cpu_s": round(limit_cpu, 2), "images": int(images.shape[0])}
    with tempfile.TemporaryDirectory() as root:
        for variant in ("before", "after", "after_warm"):
            r = _cli(args, ["model=patchcore", f"category={args.category}", *_flags(variant.split("_")[0])], root)
            out[variant] = _against(r, limit, limit_cpu)
            print(variant, r, flush=True)
    return out


def _scale_limit(args) -> Dict:
    """The sweep's compute floor: every image of every category decoded once (one thread) plus PatchCore's
    backbone forwards over all of them (batch 32), timed separately; PatchCore's own search/coreset excluded."""
    from ad.models import create_model

    model = create_model("patchcore").eval()
    decode, backbone, n = [0.0, 0.0], [0.0, 0.0], 0
    for cat in sorted(p.name for p in Path(args.root).iterdir() if (p / "train").is_dir()):
        data = MVTecAD(root=args.root, category=cat, image_size=args.size, val_fraction=0.1, seed=0, **BEFORE)
        for s in ("train", "val", "test"):
            with _Timer() as t:
                batches = [b["image"] for b in data.dataloader(s, 32)]
            decode[0] += t.wall
            decode[1] += t.cpu
            with torch.no_grad(), _Timer() as t:
                for images in batches:
                    model.feature_extractor(images, channels_last=True)
            backbone[0] += t.wall
            backbone[1] += t.cpu
            n += sum(b.shape[0] for b in batches)
    return {"images": n, "decode_once_s": round(decode[0], 1), "decode_once_cpu_s": round(decode[1], 1),
            "backbone_s": round(backbone[0], 1), "backbone_cpu_s": round(backbone[1], 1),
            "limit_s": round(decode[0] + backbone[0], 1), "limit_cpu_s": round(decode[1] + backbone[1], 1),
            # both cores busy all the time: the floor no overlap of decode and backbone can beat on this machine
            "floor_2_cores_s": round((decode[1] + backbone[1]) / max(1, os.cpu_count() or 1), 1)}


def scale(args) -> Dict:
    out = {"root": args.root}
    if args.limit:
        out["limit"] = _scale_limit(args)
        print("limit", out["limit"], flush=True)
    for variant in args.variants.split(","):
        with tempfile.TemporaryDirectory() as root:
            r = _cli(args, ["-m", "+sweep=mvtec", "model=patchcore", *_flags(variant)], root)
        out[variant] = r
        print(variant, r, flush=True)
    return out


def decodes(args) -> Dict:
    """How many PNG decodes a sequence of in-process runs (`ad.train.run`, as the basic launcher runs a sweep)
    performs, before vs after, and their CPU cost: load-independent counts. `--models` (default: the four
    memory models), `--set` extra overrides (e.g. a random-init backbone to keep the compute small)."""
    import ad.data._base as base
    from omegaconf import open_dict

    from ad.config import compose
    from ad.train import run

    calls = {"n": 0}
    real = base.decode_sample

    def counting(sample, transform):
        calls["n"] += 1
        return real(sample, transform)

    base.decode_sample = counting
    models = args.models.split(",") if args.models != "stfpm,fastflow" else list(MEMORY_MODELS)
    out: Dict[str, object] = {"models": models}
    for variant in ("before", "after"):
        clear_memory_cache()
        calls["n"] = 0
        with tempfile.TemporaryDirectory() as root, _Timer() as t:
            for m in models:
                overrides = [f"model={m}", f"category={args.category}", f"dataset.root={args.root}",
                             f"dataset.image_size={args.size}", f"trainer.num_threads={args.threads}",
                             "trainer.progress_bar=false", *_flags(variant), *args.set]
                cfg = compose(overrides, output_dir=f"{root}/{m}")
                choices = dict(cfg.hydra.runtime.choices)
                with open_dict(cfg):
                    cfg.paths.root_dir = root
                    del cfg["hydra"]
                res = run(cfg, Path(root) / m, choices, overrides)
                assert res["status"] == "ok", res["error"]
        out[variant] = {"decodes": calls["n"], "cpu_s": round(t.cpu, 1), "wall_s": round(t.wall, 1), "load": load()}
        print(variant, out[variant], flush=True)
    base.decode_sample = real
    data = _data(args, **BEFORE)
    n = sum(len(data.samples(s)) for s in ("train", "val", "test"))
    one = _decode_all(args)
    out["images"] = n
    out["decode_cpu_ms_per_image"] = round(1000 * one.cpu / n, 1)
    out["decodes_saved"] = out["before"]["decodes"] - out["after"]["decodes"]  # type: ignore[index]
    out["decode_cpu_saved_s"] = round(out["decodes_saved"] * one.cpu / n, 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["epoch", "sweep", "patchcore", "scale", "decodes"])
    shared = Path(os.environ.get("AD_SHARED_DATA", REPO.parent / "shared" / "data"))
    p.add_argument("--root", default=str(shared / "mvtec_ad"))
    p.add_argument("--category", default="bottle")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="stfpm,fastflow", help="epoch mode: trained models")
    p.add_argument("--epochs", type=int, default=3, help="epoch mode: epochs per variant")
    p.add_argument("--variants", default="before,after", help="scale mode")
    p.add_argument("--limit", action="store_true", help="scale mode: also time one decode + the backbone forwards")
    p.add_argument("--set", nargs="*", default=[], help="decodes mode: extra overrides for every run")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    result = {"mode": args.mode, "uptime_load_start": load(), **globals()[args.mode](args)}
    result["uptime_load_end"] = load()
    result["bench_wall_s"] = round(time.perf_counter() - t, 1)
    result["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
