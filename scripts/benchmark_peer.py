#!/usr/bin/env python
"""Side-by-side benchmark of `ad` against anomalib (the peer) on every model both have, at equal budget.

    python scripts/make_pasted_defects.py --out /data/peer                  # real photos, pasted defects, masks
    python scripts/benchmark_peer.py --data /data/peer --out /tmp/peer_runs   # all shared models
    python scripts/benchmark_peer.py --data /data/peer --out /tmp/peer_runs --models reverse_distillation,patchcore

Not part of the test suite. The peer lives in its own virtualenv (`--peer-python`, default
/work/venvs/anomalib/bin/python, made with `python -m venv` + `pip install anomalib`); it is never installed into
the project's environment. Every (model, side) pair runs in its own subprocess, so peak RSS is that run's.

What is equal on both sides:
- data: the same decoded, resized [0,1] tensors (ad's loader, `--image-size` px), the same train split (ad's
  val_fraction=0.1 split; the validation images are not used by the peer), the same test images;
- backbone: the pip EfficientNet-Lite0 ImageNet checkpoint. It is converted once to timm's key names (the
  peer's: anomalib builds its extractors with `timm.create_model`) and the peer's `timm.create_model` is
  patched to load that file (timm's `pretrained_cfg_overlay=dict(file=...)`); any other pretrained request
  fails instead of downloading (HF_HUB_OFFLINE=1 too). Inputs are normalised as the checkpoint expects
  (mean = std = 0.5) on both sides;
- layers and the main hyper-parameters of each model (MODELS below), steps × batch for trained models;
- metrics: both sides' raw scores and maps (before any post-processing) are evaluated here by the same code
  (ad.metrics: image AUROC, pixel AUROC, AUPRO at FPR 0.3 — all rank-based, so per-run normalisation is moot).

Where the peer has no EfficientNet variant of an architecture, MODELS says what is substituted (FastFlow: the
peer's own ResNet code path fed Lite0; Reverse Distillation: the peer's bottleneck/decoder factories are
hard-wired to ResNet widths, so its model gets `ad`'s width-generic OCBE + decoder with the peer's block counts,
and everything else — loss, optimiser, map, score, training loop — is the peer's).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BACKBONE = "tf_efficientnet_lite0"
LITE_MEAN_STD = (0.5, 0.5)
CATEGORY = "bottle_pasted"

#: Each shared model: ad's registered name and keyword overrides, the peer's class and keyword arguments, the
#: budget (steps × batch; memory/statistics models: one pass over the train set). Layers are timm
#: `features_only` indices of Lite0 on both sides (stride 4, 8, 16, 32 for 1, 2, 3, 4).
MODELS: Dict[str, Dict[str, Any]] = {
    "reverse_distillation": {
        "ad": {}, "steps": 100, "batch": 8,
        "peer": ("ReverseDistillation", {"layers": [1, 2, 3], "anomaly_map_mode": "add"}),
        "note": "peer: ad's width-generic OCBE (3 blocks) + decoder (3,4,6) in place of its ResNet-only factories",
    },
    "patchcore": {
        "ad": {"num_neighbors": 9}, "steps": None, "batch": 8,
        "peer": ("Patchcore", {"layers": [2, 3], "coreset_sampling_ratio": 0.1, "num_neighbors": 9}),
    },
    "padim": {
        "ad": {}, "steps": None, "batch": 8,
        "peer": ("Padim", {"layers": [1, 2, 3], "n_features": 100}),
    },
    "dfm": {
        "ad": {}, "steps": None, "batch": 8,
        "peer": ("Dfm", {"layer": 3, "pooling_kernel_size": 4, "pca_level": 0.97, "score_type": "fre"}),
    },
    "stfpm": {
        "ad": {}, "steps": 100, "batch": 8,
        "peer": ("Stfpm", {"layers": [1, 2, 3]}),
    },
    "fastflow": {
        "ad": {}, "steps": 100, "batch": 8,
        "peer": ("Fastflow", {"backbone": "resnet18", "flow_steps": 8, "hidden_ratio": 1.0}),
        "note": "peer: its ResNet code path (features_only out_indices 1,2,3) with Lite0 substituted",
    },
    "cflow": {
        "ad": {}, "steps": 100, "batch": 8,
        "peer": ("Cflow", {"layers": [2, 3, 4]}),
    },
    # {teacher} / {penalty}: the assets both sides share (efficientad_assets): ad's default auto-distilled PDN-S
    # teacher (the peer gets it converted to its key names in place of its download) and one folder of
    # procedural textures as the penalty images (the peer's ImageNette download has no offline substitute;
    # it cannot switch the penalty off, so ad uses the same folder).
    "efficientad": {
        "ad": {"teacher_weights": "{teacher}", "imagenet_dir": "{penalty}"}, "steps": 400, "batch": 1,
        "peer": ("EfficientAd", {"model_size": "small", "imagenet_dir": "{penalty}"}),
        "note": "both: ad's auto-distilled PDN-S teacher and the same procedural-texture penalty folder; "
                "peer map quantiles from ad's validation normals (as ad's)",
    },
}
DEFAULT_ORDER = ["reverse_distillation", "patchcore", "padim", "stfpm", "fastflow", "dfm", "cflow", "efficientad"]


# ----------------------------------------------------------------------------------------------- data (both sides)
def load_split(root: Path, image_size: int, split: str, seed: int = 0):
    """[N,3,S,S] images in [0,1], labels, masks [N,S,S] and paths of one split, through ad's loader."""
    import torch

    from ad.data.mvtec import MVTecAD

    data = MVTecAD(root=str(root), category=CATEGORY, image_size=image_size, val_fraction=0.1, seed=seed)
    items = [data.dataset(split)[i] for i in range(len(data.dataset(split)))]
    images = torch.stack([it["image"] for it in items])
    labels = torch.tensor([int(it["label"]) for it in items])
    masks = torch.stack([torch.as_tensor(it["mask"]) for it in items])
    return images, labels, masks, [str(it["path"]) for it in items]


def lite0_timm_file(out_dir: Path) -> Path:
    """The pip Lite0 checkpoint converted to timm's full-model key names (what the peer's timm loads)."""
    import timm
    import torch

    from ad.backbones import BackboneConfig
    from ad.backbones._weights import load_pretrained_weights

    path = out_dir / f"{BACKBONE}.timm.pth"
    if not path.is_file():
        model = timm.create_model(BACKBONE, pretrained=False)
        load_pretrained_weights(model, BackboneConfig(name=BACKBONE))
        tmp = path.with_suffix(".partial")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return path


def efficientad_assets(out_dir: Path, image_size: int, textures: int = 200) -> Dict[str, str]:
    """What both EfficientAD sides share: ad's default auto-distilled teacher (distilled once into
    `out_dir/teacher`, exactly as `teacher_weights=auto` would) plus the same file in the peer's PDN key names,
    and a folder of procedural textures for the penalty term (an ImageFolder: one class subfolder)."""
    import numpy as np
    import torch
    from PIL import Image

    from ad.config import compose
    from ad.models._anomaly_synthesis import procedural_texture
    from ad.models.distillation._pdn import TeacherRecipe, cached_teacher, load_teacher

    recipe_options = compose(["model=efficientad"]).model.teacher_distill
    recipe = TeacherRecipe.from_config("s", image_size, dict(recipe_options))
    teacher, _ = cached_teacher(recipe, out_dir / "teacher")
    peer_teacher = out_dir / "teacher" / "efficientad_pretrained_weights" / "pretrained_teacher_small.pth"
    if not peer_teacher.is_file():
        pdn, _ = load_teacher(teacher, "s")
        convs = [i for i, m in enumerate(pdn) if isinstance(m, torch.nn.Conv2d)]
        state = {f"conv{n + 1}.{k}": v for n, i in enumerate(convs) for k, v in pdn[i].state_dict().items()}
        peer_teacher.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, peer_teacher)
    penalty = out_dir / "penalty_textures"
    if not (penalty / "textures").is_dir():
        (penalty / "partial").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(textures):
            img = procedural_texture((image_size, image_size), rng)
            Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
                penalty / "partial" / f"{i:04d}.png")
        os.replace(penalty / "partial", penalty / "textures")
    channels = [v for k, v in torch.load(peer_teacher).items() if k.endswith(".bias")][-1].numel()
    return {"teacher": str(teacher), "peer_teacher_dir": str(peer_teacher.parent.parent), "penalty": str(penalty),
            "teacher_channels": str(channels)}


def _resolve(kwargs: Dict[str, Any], assets: Dict[str, str]) -> Dict[str, Any]:
    return {k: v.format(**assets) if isinstance(v, str) else v for k, v in kwargs.items()}


# ------------------------------------------------------------------------------------------------------ ad worker
def run_ad(model_name: str, root: Path, image_size: int, threads: int, seed: int,
           assets: Dict[str, str]) -> Dict[str, Any]:
    import inspect

    import torch

    from ad.backbones import BackboneConfig
    from ad.engine.trainer import Trainer, seed_everything
    from ad.models import MODELS as REGISTRY
    from scripts.benchmark_trained import CachedMVTec

    spec = MODELS[model_name]
    torch.set_num_threads(threads)
    seed_everything(seed)
    data = CachedMVTec(root=str(root), category=CATEGORY, image_size=image_size, val_fraction=0.1, seed=seed)
    for split in ("train", "val", "test"):
        data.dataset(split)
    t0 = time.perf_counter()
    cls = REGISTRY.get(model_name)
    kwargs = _resolve(spec["ad"], assets)
    if "backbone" in inspect.signature(cls.__init__).parameters:
        kwargs["backbone"] = BackboneConfig(name=BACKBONE)
    model = cls(**kwargs)
    trainer = Trainer(max_steps=spec["steps"], max_epochs=None if spec["steps"] else 1, batch_size=spec["batch"],
                      eval_batch_size=16, device="cpu", progress_bar=False, seed=seed,
                      early_stopping={"enabled": False})
    trainer.fit(model, data)
    preds = trainer.predict(model, data.dataloader("test", 16))
    return {"scores": preds.scores, "maps": preds.maps, "paths": list(preds.paths), "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------- peer worker
def patch_peer_weights(weights: Path) -> None:
    """Make every `timm.create_model` of the peer build Lite0 and load the converted checkpoint; never download."""
    import timm

    os.environ["HF_HUB_OFFLINE"] = "1"
    original = timm.create_model

    def create_model(name, pretrained=False, **kw):
        if name not in (BACKBONE, "resnet18"):  # resnet18: FastFlow's only accepted CNN name, fed Lite0 instead
            raise RuntimeError(f"benchmark_peer: the peer asked timm for {name!r}; only {BACKBONE} is offline")
        if pretrained:
            kw["pretrained_cfg_overlay"] = {"file": str(weights)}
        return original(BACKBONE, pretrained=pretrained, **kw)

    timm.create_model = create_model
    import anomalib.models.components.feature_extractors.timm as afe
    import anomalib.models.image.fastflow.torch_model as aff

    afe.timm.create_model = create_model  # modules imported `timm`, so the attribute patch reaches them
    aff.timm.create_model = create_model


def patch_peer_rd() -> None:
    """The peer's RD factories only know ResNet widths; give them ad's width-generic blocks for Lite0."""
    import anomalib.models.image.reverse_distillation.torch_model as rd

    from ad.backbones import FeatureExtractor
    from ad.models.distillation._distillation import MirroredDecoder, OneClassBottleneck

    probe = FeatureExtractor(BACKBONE, (1, 2, 3), frozen=True)  # channels / strides only (weights unused)
    ch, red = probe.channels, probe.reductions
    emb = 2 * ch[-1]
    rd.get_bottleneck_layer = lambda backbone: OneClassBottleneck(ch, red, emb, oce_blocks=3)
    rd.get_decoder = lambda backbone: MirroredDecoder(ch, red, emb, (3, 4, 6), out_relu=False)


def patch_peer_teacher(folder: str) -> None:
    """The peer's EfficientAd loads `<pretrained dir>/efficientad_pretrained_weights/...` and downloads it when
    absent: point it at the converted ad teacher."""
    import anomalib.models.image.efficient_ad.lightning_model as eff

    eff.get_pretrained_weights_dir = lambda: Path(folder)


def run_peer(model_name: str, root: Path, image_size: int, threads: int, seed: int, weights: Path,
             assets: Dict[str, str]) -> Dict[str, Any]:
    import logging

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    patch_peer_weights(weights)
    if model_name == "reverse_distillation":
        patch_peer_rd()
    if model_name == "efficientad":
        patch_peer_teacher(assets["peer_teacher_dir"])
    import anomalib.models as amodels
    from anomalib.data import ImageBatch
    from anomalib.engine import Engine
    from anomalib.pre_processing import PreProcessor
    from lightning.pytorch import seed_everything
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    spec = MODELS[model_name]
    torch.set_num_threads(threads)
    seed_everything(seed)
    train_x, _, _, _ = load_split(root, image_size, "train", seed)
    val_x, _, _, _ = load_split(root, image_size, "val", seed)
    test_x, _, _, test_paths = load_split(root, image_size, "test", seed)
    t0 = time.perf_counter()
    cls_name, kwargs = spec["peer"]
    kwargs = {"backbone": BACKBONE, **_resolve(kwargs, assets)}
    if model_name == "efficientad":  # the teacher's width (ad's auto teacher regresses Lite0 levels, not 384)
        kwargs["teacher_out_channels"] = int(assets["teacher_channels"])
    cls = getattr(amodels, cls_name)
    if "backbone" not in cls.__init__.__code__.co_varnames:
        kwargs.pop("backbone")
    # Resize is a no-op on the already resized tensors; models such as RD read their input size from it
    steps = [Resize((image_size, image_size), antialias=True)]
    if model_name != "efficientad":  # EfficientAd normalises inside (ImageNet statistics, as ad) and refuses one here
        steps.append(Normalize(mean=[LITE_MEAN_STD[0]] * 3, std=[LITE_MEAN_STD[1]] * 3))
    pre = PreProcessor(transform=Compose(steps))
    model = cls(pre_processor=pre, post_processor=False, evaluator=False, visualizer=False, **kwargs)

    def collate(items):
        x = torch.stack([i[0] for i in items])
        return ImageBatch(image=x, gt_label=torch.zeros(len(x), dtype=torch.long))

    loader = DataLoader(TensorDataset(train_x), batch_size=spec["batch"], shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(seed))
    engine = Engine(max_steps=spec["steps"] or -1, max_epochs=None if spec["steps"] else 1, accelerator="cpu",
                    devices=1, barebones=True, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, limit_val_batches=0,
                    default_root_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / "benchmark_peer"))
    if model_name == "efficientad":
        # EfficientAd reads its batch size and loaders from a datamodule; its map quantiles come from the same
        # validation normals ad uses (the peer's own datamodule would take them from test images)
        from lightning.pytorch import LightningDataModule

        val_loader = DataLoader(TensorDataset(val_x), batch_size=16, collate_fn=collate)

        class Data(LightningDataModule):
            name, category, train_batch_size = "pasted", CATEGORY, spec["batch"]  # what the peer's Engine reads

            def train_dataloader(self):
                return loader

            def val_dataloader(self):
                return val_loader

        engine.fit(model=model, datamodule=Data())
        model.eval()
        model.model.quantiles.update(model.map_norm_quantiles(val_loader))
    else:
        engine.fit(model=model, train_dataloaders=loader)
    model.eval()
    scores, maps = [], []
    with torch.no_grad():
        for i in range(0, len(test_x), 16):
            out = model(test_x[i:i + 16])
            amap = out.anomaly_map.reshape(len(out.anomaly_map), *out.anomaly_map.shape[-2:])
            if amap.shape[-2:] != test_x.shape[-2:]:
                amap = torch.nn.functional.interpolate(amap[:, None], size=test_x.shape[-2:], mode="bilinear")[:, 0]
            scores.append(out.pred_score.reshape(-1).float())
            maps.append(amap.float())
    return {"scores": torch.cat(scores).numpy(), "maps": torch.cat(maps).numpy(), "paths": test_paths,
            "seconds": time.perf_counter() - t0}


def worker(a: argparse.Namespace) -> None:
    import numpy as np

    if a.steps and MODELS[a.model]["steps"]:
        MODELS[a.model]["steps"] = a.steps
    assets = json.loads(a.assets) if a.assets else {}
    if a.worker == "ad":
        out = run_ad(a.model, a.data, a.image_size, a.threads, a.seed, assets)
    else:
        out = run_peer(a.model, a.data, a.image_size, a.threads, a.seed, a.weights, assets)
    a.result.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.result.with_suffix(".partial.npz")
    np.savez_compressed(tmp, scores=np.asarray(out["scores"], np.float32), maps=np.asarray(out["maps"], np.float16),
                        paths=np.asarray(out["paths"]), seconds=out["seconds"],
                        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    os.replace(tmp, a.result)


# --------------------------------------------------------------------------------------------------------- driver
def evaluate(result: Path, truth: Dict[str, Any]) -> Dict[str, float]:
    import numpy as np

    from ad.metrics import aupro, image_auroc, pixel_auroc

    r = np.load(result)
    order = {p: i for i, p in enumerate(r["paths"])}
    idx = np.array([order[p] for p in truth["paths"]])
    scores, maps = r["scores"][idx].astype(np.float64), r["maps"][idx].astype(np.float32)
    defective = truth["labels"] == 1
    return {
        "image_auroc": image_auroc(truth["labels"], scores),
        "pixel_auroc": pixel_auroc(truth["masks"], maps),
        "aupro": aupro(truth["masks"][defective], maps[defective]),
        "seconds": float(r["seconds"]), "peak_rss_mb": float(r["peak_rss_mb"]),
    }


def run_side(a: argparse.Namespace, side: str, model: str, weights: Path, assets: Dict[str, str]) -> Path:
    result = a.out / f"{model}.{side}.npz"
    if result.is_file() and not a.force:
        return result
    python = sys.executable if side == "ad" else a.peer_python
    cmd = ["nice", "-n", str(a.nice), python, str(Path(__file__).resolve()), "--worker", side, "--model", model,
           "--data", str(a.data), "--image-size", str(a.image_size), "--threads", str(a.threads),
           "--seed", str(a.seed), "--weights", str(weights), "--result", str(result), "--assets", json.dumps(assets)]
    if a.steps:
        cmd += ["--steps", str(a.steps)]
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    log = a.out / f"{model}.{side}.log"
    print(f"[{time.strftime('%H:%M:%S')}] {model} / {side} ... (log {log})", flush=True)
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"{model} / {side} failed (exit {rc}): {' | '.join(tail)}")
    return result


def table(rows: List[Dict[str, Any]], trail: float) -> str:
    head = ("| model | ad img AUROC | peer img AUROC | Δ img | ad px AUROC | peer px AUROC | Δ px | ad AUPRO | "
            "peer AUPRO | Δ AUPRO | ad s | peer s | ad RSS MB | peer RSS MB | flag |")
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | " + " | ".join(["–"] * 13) + f" | not run: {r['error'][:80]} |")
            continue
        a, p = r["ad"], r["peer"]
        d = {k: a[k] - p[k] for k in ("image_auroc", "pixel_auroc", "aupro")}
        flag = ", ".join(k for k, v in d.items() if v < -trail) or "ok"
        lines.append(
            f"| {r['model']} | {a['image_auroc']:.3f} | {p['image_auroc']:.3f} | {d['image_auroc']:+.3f} | "
            f"{a['pixel_auroc']:.3f} | {p['pixel_auroc']:.3f} | {d['pixel_auroc']:+.3f} | {a['aupro']:.3f} | "
            f"{p['aupro']:.3f} | {d['aupro']:+.3f} | {a['seconds']:.0f} | {p['seconds']:.0f} | "
            f"{a['peak_rss_mb']:.0f} | {p['peak_rss_mb']:.0f} | {'**trails: ' + flag + '**' if flag != 'ok' else 'ok'} |")
    return "\n".join(lines)


def driver(a: argparse.Namespace) -> None:
    import numpy as np

    models = DEFAULT_ORDER if a.models == "all" else [m.strip() for m in a.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        sys.exit(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    if not (a.data / CATEGORY / "test").is_dir():
        sys.exit(f"--data {a.data}: no {CATEGORY}/test; make it with scripts/make_pasted_defects.py --out {a.data}")
    if not Path(a.peer_python).is_file():
        sys.exit(f"--peer-python {a.peer_python} does not exist; python -m venv it and pip install anomalib there")
    a.out.mkdir(parents=True, exist_ok=True)
    weights = lite0_timm_file(a.out)
    assets = efficientad_assets(a.out, a.image_size) if "efficientad" in models else {}
    _, labels, masks, paths = load_split(a.data, a.image_size, "test", a.seed)
    truth = {"labels": labels.numpy(), "masks": (masks.numpy() > 0).astype(np.uint8), "paths": paths}
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()
    # (model, side) runs in the listed order, `--jobs` at a time (2: a model's two sides side by side)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futures = {(m, s): pool.submit(run_side, a, s, m, weights, assets) for m in models for s in ("ad", "peer")}
        rows = []
        for m in models:
            try:
                rows.append({"model": m, **{s: evaluate(futures[m, s].result(), truth) for s in ("ad", "peer")}})
            except Exception as exc:  # noqa: BLE001 - one failing side must not lose the other rows
                rows.append({"model": m, "error": str(exc)})
                print(f"  {m}: {exc}", flush=True)
            print(table(rows[-1:], a.trail), flush=True)
    peer_version = subprocess.run([a.peer_python, "-c", "import anomalib; print(anomalib.__version__)"],
                                  capture_output=True, text=True).stdout.strip() or "?"
    meta = {
        "date": started, "peer": f"anomalib {peer_version}", "data": str(a.data / CATEGORY),
        "test_images": int(len(paths)), "defective": int(labels.sum()), "image_size": a.image_size,
        "backbone": f"{BACKBONE} (pip ImageNet checkpoint)", "threads": a.threads, "nice": a.nice,
        "budget": {m: (f"{a.steps or MODELS[m]['steps']} steps x batch {MODELS[m]['batch']}" if MODELS[m]["steps"]
                       else "1 pass over the train set") for m in models},
        "notes": {m: MODELS[m]["note"] for m in models if "note" in MODELS[m]},
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "jobs": a.jobs,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    text = table(rows, a.trail)
    print("\n" + json.dumps(meta, indent=2) + "\n\n" + text)
    (a.out / "peer_table.md").write_text(text + "\n")
    (a.out / "peer_results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="root given to make_pasted_defects.py --out")
    p.add_argument("--out", type=Path, default=Path("/tmp/benchmark_peer"), help="results, logs, converted weights")
    p.add_argument("--models", default="all", help="comma-separated subset of: " + ",".join(DEFAULT_ORDER))
    p.add_argument("--peer-python", default="/work/venvs/anomalib/bin/python", help="python of the anomalib venv")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads on both sides (1: on a loaded machine more threads only spin)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (wall times are only comparable at 1)")
    p.add_argument("--nice", type=int, default=10, help="niceness of the runs (the machine is shared)")
    p.add_argument("--trail", type=float, default=0.005, help="flag a metric where ad trails by more than this")
    p.add_argument("--force", action="store_true", help="rerun sides whose results already exist")
    p.add_argument("--steps", type=int, default=None, help="override the trained models' step budget (smoke tests)")
    p.add_argument("--worker", choices=("ad", "peer"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--assets", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    worker(a) if a.worker else driver(a)


if __name__ == "__main__":
    main()
