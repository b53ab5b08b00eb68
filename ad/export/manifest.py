"""deploy.json: everything a line PC needs besides the model file, in one versioned JSON document."""
from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from ad.deploy.bundle import DEPLOY_FORMAT_VERSION, sha256_file
from ad.export.graph import INPUT_NAME, OPSET, OUTPUT_NAMES


def _pair(v: Any) -> Optional[list]:
    if v is None:
        return None
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def preprocess_recipe(data: Mapping[str, Any]) -> Dict[str, Any]:
    """Training's transform (`ad.data.ImageTransform`) as data: what `ad.deploy.images` reproduces."""
    resize = _pair(data.get("image_size") or 256)
    crop = _pair(data.get("center_crop")) if data.get("center_crop") else None
    return {
        "decode": "RGB; grey and palette images -> 3 equal channels; 16/32-bit grey scaled to 8 bit by the image maximum",
        "resize": resize,  # [height, width]
        "interpolation": "bilinear",
        "resampler": "Pillow Image.resize (antialiased when shrinking)",
        "center_crop": crop,  # [height, width] after resizing, or null
        "scale": "uint8 / 255 in float32 -> [0, 1]",
        "layout": "NCHW, RGB, batch 1",
        "normalize": "none outside the graph: the backbone's mean/std is part of the exported model",
        "input_size": crop or resize,
    }


def build_manifest(fmt: str, files: Sequence[str], export_dir: Path, run_dir: Path, meta: Mapping[str, Any],
                   record: Any, opset: Optional[int] = OPSET) -> Dict[str, Any]:
    import ad
    import torch

    from ad.registry import current_target

    recipe = preprocess_recipe(meta["data"])
    h, w = recipe["input_size"]
    run = dataclasses.asdict(record.run)
    cats = run.get("categories") or ([run["category"]] if run.get("category") else [])
    metrics = {
        "image": dataclasses.asdict(record.image) if record.image else None,
        "pixel": dataclasses.asdict(record.pixel) if record.pixel else None,
        "mad": record.mad,
        "per_category": {k: {"image_auroc": c.image.auroc if c.image else None,
                             "pixel_auroc": c.pixel.auroc if c.pixel else None}
                         for k, c in (record.categories or {}).items()} or None,
    }
    return {
        "format_version": DEPLOY_FORMAT_VERSION,
        "format": fmt,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "ad_version": ad.__version__,
        "exported_with": {"torch": torch.__version__.split("+")[0], "onnx_opset": opset},
        "model": {
            "name": meta.get("model_name"),
            "class": current_target(str(dict(meta["model_config"]).get("_target_"))),
            "backbone": run.get("backbone"),
            "file": files[0],
            "sha256": {name: sha256_file(export_dir / name) for name in files},
        },
        "input": {"name": INPUT_NAME, "shape": [1, 3, h, w], "dtype": "float32", "range": [0.0, 1.0]},
        "outputs": {"score": {"name": OUTPUT_NAMES[0], "shape": [1], "meaning": "raw image anomaly score (higher = more anomalous)"},
                    "anomaly_map": {"name": OUTPUT_NAMES[1], "shape": [1, h, w], "meaning": "raw pixel anomaly map"}},
        "preprocess": recipe,
        "thresholds": {
            "image": meta.get("image_threshold"),
            "pixel": meta.get("pixel_threshold"),
            "per_category": meta.get("category_thresholds") or None,
            "source": record.thresholds.source if record.thresholds else None,
            "rule": "is_anomalous = score >= image threshold (raw score scale); change it without re-exporting",
        },
        "normalization": {
            "image": meta.get("normalization"),
            "pixel": meta.get("pixel_normalization"),
            "formula": "normalized = 0.5 * (x - min) / (threshold - min): the threshold maps to 0.5",
        },
        "categories": cats,
        "setting": meta.get("setting") or run.get("setting"),
        "run": {**run, "dir": str(Path(run_dir).resolve())},
        "metrics": metrics,
    }
