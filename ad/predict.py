"""`python -m ad.predict run_dir=<run> input=<image or folder> [out=<dir>]` — score new images with a saved run.

Rebuilds the model from `<run>/model.pt` (fitted state, thresholds, normalisation, input size), writes
`<out>/predictions.csv` and one heatmap overlay PNG per image (default out: `<run>/predict/`).
Other keys: batch_size=16, device=auto, overlays=true.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from PIL import Image

from ad.errors import ADError, ConfigError

USAGE = "usage: python -m ad.predict run_dir=<run dir> input=<image or folder> [out=<dir>] [batch_size=16] [device=auto] [overlays=true]"
KEYS = {"run_dir", "input", "out", "batch_size", "device", "overlays"}


def parse_args(argv: Sequence[str]) -> Dict[str, str]:
    args: Dict[str, str] = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in KEYS:
            raise ConfigError(f"unknown argument '{a}'; {USAGE}")
        args[key] = value
    for key in ("run_dir", "input"):
        if key not in args:
            raise ConfigError(f"missing {key}=...; {USAGE}")
    return args


def load_run(run_dir: "str | Path", device: "str | torch.device" = "cpu"):
    """Rebuild a fitted model from `<run_dir>/model.pt`. Returns (model, meta)."""
    from hydra.utils import get_class, instantiate

    path = Path(run_dir) / "model.pt"
    if not Path(run_dir).is_dir():
        raise ConfigError(f"run_dir {run_dir} does not exist; pass the output directory of an ad.train run")
    if not path.is_file():
        raise ConfigError(f"{path} not found: the run did not finish (see its results.json / train.log) or run_dir is wrong")
    meta = torch.load(path, map_location="cpu", weights_only=False)
    cfg = dict(meta["model_config"])
    if isinstance(cfg.get("backbone"), dict):
        # The fitted weights are in the state dict: don't require the pretrained files on this machine.
        cfg["backbone"] = {**cfg["backbone"], "pretrained": False}

    def build(cfg: Dict[str, Any]):
        # Models that need other files to build (EfficientAD's teacher) say how to rebuild from the state dict.
        cls = get_class(cfg["_target_"])
        if hasattr(cls, "config_for_state_dict"):
            cfg = cls.config_for_state_dict(cfg, meta["state_dict"])
        model = instantiate(cfg)
        model.load_state_dict(meta["state_dict"])
        return model

    candidates = [cfg]
    backbone = cfg.get("backbone")
    if isinstance(backbone, dict) and backbone.get("fold_batchnorm", True):
        # written with BatchNorm tensors (before BN folding, or with it off): rebuild the backbone unfolded
        candidates.append({**cfg, "backbone": {**backbone, "fold_batchnorm": False}})
    first = None
    for candidate in candidates:
        try:
            return build(candidate).to(device).eval(), meta
        except (RuntimeError, KeyError, TypeError, ImportError, ValueError) as exc:
            first = first or exc
    raise ConfigError(f"{path} does not match the code's model '{meta.get('model_name')}': "
                      f"{str(first).splitlines()[0]}") from None


def predict_paths(model, meta: Dict[str, Any], paths: List[Path], batch_size: int, device) -> Dict[str, np.ndarray]:
    from ad.data import ImageTransform, load_image
    from ad import metrics

    transform = ImageTransform(meta["data"]["image_size"] or 256, meta["data"].get("center_crop"))
    scores, maps, images = [], [], []
    with torch.no_grad():
        for i in range(0, len(paths), batch_size):
            batch = torch.stack([transform(load_image(p))[0] for p in paths[i:i + batch_size]])
            out = model.predict(batch.to(device))
            scores.append(out.scores.float().cpu().numpy())
            maps.append(out.maps.float().cpu().numpy())
            images.append(batch.numpy())
    scores_ = np.concatenate(scores)
    return {
        "scores": scores_,
        "normalized": metrics.normalize(scores_, meta["normalization"]) if meta.get("normalization") else np.full(len(scores_), np.nan),
        "maps": np.concatenate(maps),
        "images": np.concatenate(images),
    }


def display_map(amap: np.ndarray, pixel_normalization) -> np.ndarray:
    """Map for an overlay: on the validation scale (pixel threshold -> 0.5) when calibrated, else its own range."""
    from ad import metrics

    if pixel_normalization:
        return metrics.normalize(amap, pixel_normalization, clip=True)
    return (amap - amap.min()) / max(float(amap.max() - amap.min()), 1e-12)


def gather_inputs(inp: Path) -> List[Path]:
    from ad.data import IMAGE_EXTENSIONS

    if inp.is_file():
        return [inp]
    if inp.is_dir():
        files = sorted(p for p in inp.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ConfigError(f"input folder {inp} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    raise ConfigError(f"input {inp} does not exist; pass an image file or a folder of images")


def main(argv: Sequence[str] | None = None) -> int:
    from ad.engine.outputs import write_predictions_csv
    from ad.engine.trainer import resolve_device
    from ad.engine.visualize import overlay

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    try:
        args = parse_args(argv)
        device = resolve_device(args.get("device", "auto"))
        model, meta = load_run(args["run_dir"], device)
        paths = gather_inputs(Path(args["input"]))
        out = Path(args.get("out") or Path(args["run_dir"]) / "predict")
        out.mkdir(parents=True, exist_ok=True)
        res = predict_paths(model, meta, paths, int(args.get("batch_size", 16)), device)
        threshold = meta["image_threshold"]
        rows = []
        write_overlays = args.get("overlays", "true").lower() in ("1", "true", "yes")
        for i, p in enumerate(paths):
            row = {"path": str(p), "score": float(res["scores"][i]), "normalized_score": float(res["normalized"][i]),
                   "is_anomalous": bool(res["scores"][i] >= threshold)}
            if write_overlays:
                name = f"{i:05d}_{p.stem}.png"
                Image.fromarray(overlay(res["images"][i], display_map(res["maps"][i], meta.get("pixel_normalization")))).save(out / name)
                row["overlay"] = name
            rows.append(row)
        cols = ["path", "score", "normalized_score", "is_anomalous"] + (["overlay"] if write_overlays else [])
        write_predictions_csv(out / "predictions.csv", rows, cols)
        n_bad = sum(r["is_anomalous"] for r in rows)
        print(f"{len(rows)} images scored, {n_bad} anomalous (threshold {threshold:.6g}); wrote {out / 'predictions.csv'}")
        return 0
    except ADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
