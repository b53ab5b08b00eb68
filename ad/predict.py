"""`python -m ad.predict run_dir=<run> input=<image or folder> [out=<dir>]` — score new images with a saved run.

Rebuilds the model from `<run>/model.pt` (fitted state, thresholds, normalisation, input size), writes
`<out>/predictions.csv` and one heatmap overlay PNG per image (default out: `<run>/predict/`).
Other keys: batch_size=16, device=auto, overlays=true.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ad.errors import ADError, ConfigError
from ad.values import positive_int

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
    _require_ok_run(Path(run_dir))
    if not path.is_file():
        raise ConfigError(f"{path} not found: the run did not finish (see its results.json / train.log) or run_dir is wrong")
    try:
        meta = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or corrupt: RuntimeError / EOFError / UnpicklingError
        raise ConfigError(f"{path} is unreadable ({exc.__class__.__name__}); re-run the training into this dir") from None
    from ad.registry import current_target

    cfg = dict(meta["model_config"])
    cfg["_target_"] = current_target(str(cfg.get("_target_", "")))  # model.pt written before the family layout
    if isinstance(cfg.get("backbone"), dict):
        # The fitted weights are in the state dict: don't require the pretrained files on this machine.
        cfg["backbone"] = {**cfg["backbone"], "pretrained": False}

    def build(cfg: Dict[str, Any]):
        # Models that need other files to build (EfficientAD's teacher) say how to rebuild from the state dict.
        cls = get_class(cfg["_target_"])
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


def _require_ok_run(run_dir: Path) -> None:
    """Only a finished, successful run may score images: a failed re-run must not lend its dir's old model."""
    from ad.rundir.records import RecordError, load_record

    res = run_dir / "results.json"
    if not res.is_file():
        raise ConfigError(f"{res} not found: {run_dir} is not a finished ad.train run")
    try:
        record = load_record(res)
    except RecordError as exc:
        raise ConfigError(str(exc)) from None
    if record.status != "ok":
        raise ConfigError(f"run {run_dir} has status {record.status!r} ({record.error}); predict only with a run "
                          "whose results.json says ok")


def predict_paths(model, meta: Dict[str, Any], paths: List[Path], batch_size: int, device) -> Dict[str, np.ndarray]:
    """Score image files exactly as the run scored its test set: same transform, same prediction path
    (`ad.engine.scoring.predict_batch`, same precision), same calibration (`decide`)."""
    from ad.data import ImageTransform, load_image
    from ad.engine.scoring import decide, predict_batch

    transform = ImageTransform(meta["data"]["image_size"] or 256, meta["data"].get("center_crop"))
    use_amp = meta.get("precision") == "amp" and torch.device(device).type == "cuda"
    model.to(device).eval()
    scores, maps, images = [], [], []
    for i in range(0, len(paths), batch_size):
        batch = torch.stack([transform(load_image(p))[0] for p in paths[i:i + batch_size]])
        s, m = predict_batch(model, batch, torch.device(device), use_amp)
        scores.append(s)
        maps.append(m)
        images.append(batch.numpy())
    scores_ = np.concatenate(scores)
    normalized, anomalous = decide(scores_, meta["image_threshold"], meta.get("normalization"))
    return {"scores": scores_, "normalized": normalized, "is_anomalous": anomalous,
            "maps": np.concatenate(maps), "images": np.concatenate(images)}


def gather_inputs(inp: Path, exclude: Optional[Path] = None) -> List[Path]:
    """Image files to score; `exclude` (the output folder) is skipped, so outputs inside the input folder are
    never scored as inputs on a second call."""
    from ad.data import IMAGE_EXTENSIONS

    if inp.is_file():
        return [inp]
    if inp.is_dir():
        skip = exclude.resolve() if exclude is not None else None
        files = sorted(p for p in inp.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and (skip is None or skip not in p.resolve().parents))
        if not files:
            raise ConfigError(f"input folder {inp} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    raise ConfigError(f"input {inp} does not exist; pass an image file or a folder of images")


def _flag(key: str, value: str) -> bool:
    v = value.lower()
    if v not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ConfigError(f"{key}={value!r} is not a boolean; use {key}=true or {key}=false")
    return v in ("1", "true", "yes", "on")


def _device(value: str) -> torch.device:
    from ad.engine.trainer import resolve_device

    try:
        device = resolve_device(value)
    except RuntimeError:
        raise ConfigError(f"device={value!r} is not a device; use device=auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={value} but no CUDA GPU is available here; use device=cpu or device=auto")
    return device


def main(argv: Sequence[str] | None = None) -> int:
    from ad.io import write_csv
    from ad.visualize import display_map, overlay

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    try:
        args = parse_args(argv)
        batch_size = positive_int(args.get("batch_size", "16"), "batch_size")
        write_overlays = _flag("overlays", args.get("overlays", "true"))
        device = _device(args.get("device", "auto"))
        out = Path(args.get("out") or Path(args["run_dir"]) / "predict")
        model, meta = load_run(args["run_dir"], device)
        paths = gather_inputs(Path(args["input"]), exclude=out)
        out.mkdir(parents=True, exist_ok=True)
        res = predict_paths(model, meta, paths, batch_size, device)
        threshold = meta["image_threshold"]
        rows = []
        for i, p in enumerate(paths):
            row = {"path": str(p), "score": float(res["scores"][i]), "normalized_score": float(res["normalized"][i]),
                   "is_anomalous": res["is_anomalous"][i]}
            if write_overlays:
                name = f"{i:05d}_{p.stem}.png"
                Image.fromarray(overlay(res["images"][i], display_map(res["maps"][i], meta.get("pixel_normalization")))).save(out / name)
                row["overlay"] = name
            rows.append(row)
        cols = ["path", "score", "normalized_score", "is_anomalous"] + (["overlay"] if write_overlays else [])
        write_csv(out / "predictions.csv", rows, cols)
        if threshold is None:
            print(f"{len(rows)} images scored; the run has no threshold (it had no held-out normal image), so "
                  f"no decisions; wrote {out / 'predictions.csv'}")
        else:
            n_bad = sum(bool(r["is_anomalous"]) for r in rows)
            print(f"{len(rows)} images scored, {n_bad} anomalous (threshold {threshold:.6g}); wrote {out / 'predictions.csv'}")
        return 0
    except ADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
