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

from ad.errors import ConfigError
from ad.io.cli import parse_key_values, run_tool
from ad.io.outdir import check_out_dir, prepare_out_dir
from ad.values import boolean, positive_int

USAGE = "usage: python -m ad.predict run_dir=<run dir> input=<image or folder> [out=<dir>] [batch_size=16] [device=auto] [overlays=true]"
KEYS = {"run_dir", "input", "out", "batch_size", "device", "overlays"}


def parse_args(argv: Sequence[str]) -> Dict[str, str]:
    return parse_key_values(argv, KEYS, ("run_dir", "input"), USAGE)


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
    from ad.rundir.modelfile import check_model_file

    check_model_file(meta, path)
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


def _device(value: str) -> torch.device:
    from ad.engine.trainer import checked_device

    try:
        return checked_device(value)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("trainer.device", "device")) from None


def write_overlay(path: Path, source: Path, amap: np.ndarray, meta: Dict[str, Any], score: float,
                  decision: Optional[bool]) -> str:
    """The image's overlay PNG at the input's own size (see `ad.predict_overlay`); returns its file name."""
    from ad.data import ImageTransform, load_image
    from ad.visualize import display_map
    from ad.predict_overlay import decision_overlay, map_to_original

    original = np.asarray(load_image(source).convert("RGB"))
    transform = ImageTransform(meta["data"]["image_size"] or 256, meta["data"].get("center_crop"))
    shown = display_map(amap, meta.get("pixel_normalization"))
    full, valid = map_to_original(shown, original.shape[:2], transform.image_size, transform.center_crop)
    level = 0.5 if meta.get("pixel_normalization") else None  # normalisation puts the pixel threshold at 0.5
    Image.fromarray(decision_overlay(original, full, valid, score=score, decision=decision,
                                     image_threshold=meta["image_threshold"], level=level)).save(path)
    return path.name


def summary_lines(rows: List[Dict[str, Any]], threshold: Optional[float], out: Path) -> str:
    """A line per flagged image (score, threshold, path, overlay), then the totals."""
    if threshold is None:
        return (f"{len(rows)} images scored; the run has no threshold (it had no held-out normal image), so no "
                f"decisions; wrote {out / 'predictions.csv'}")
    lines = []
    for r in rows:
        if bool(r["is_anomalous"]):
            shown = f"  -> {out / r['overlay']}" if r.get("overlay") else ""
            lines.append(f"ANOMALOUS  score {r['score']:.4g} >= {threshold:.4g}  {r['path']}{shown}")
    n_bad = len(lines)
    lines.append(f"{len(rows)} images scored: {n_bad} anomalous, {len(rows) - n_bad} normal (image threshold "
                 f"{threshold:.6g}); wrote {out / 'predictions.csv'}")
    return "\n".join(lines)


def _predict(argv: List[str]) -> int:
    from ad.io import image_inputs, write_csv

    args = parse_args(argv)
    batch_size = positive_int(args.get("batch_size", "16"), "batch_size")
    write_overlays = boolean(args.get("overlays", "true"), "overlays")
    device = _device(args.get("device", "auto"))
    # checked before the model loads: a wrong out= costs nothing
    out = check_out_dir(args.get("out") or Path(args["run_dir"]) / "predict", "out=")
    model, meta = load_run(args["run_dir"], device)
    paths = image_inputs(Path(args["input"]), exclude=out)
    out = prepare_out_dir(out, "out=")
    res = predict_paths(model, meta, paths, batch_size, device)
    threshold = meta["image_threshold"]
    rows = []
    for i, p in enumerate(paths):
        row = {"path": str(p), "score": float(res["scores"][i]), "normalized_score": float(res["normalized"][i]),
               "is_anomalous": res["is_anomalous"][i]}
        if write_overlays:
            row["overlay"] = write_overlay(out / f"{i:05d}_{p.stem}.png", p, res["maps"][i], meta,
                                           row["score"], None if threshold is None else bool(row["is_anomalous"]))
        rows.append(row)
    cols = ["path", "score", "normalized_score", "is_anomalous"] + (["overlay"] if write_overlays else [])
    write_csv(out / "predictions.csv", rows, cols)
    print(summary_lines(rows, threshold, out), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(argv, __doc__, USAGE, _predict)


if __name__ == "__main__":
    sys.exit(main())
