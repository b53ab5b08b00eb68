"""Export proves itself: the exported file, read through `ad.deploy` (its own decoding and preprocessing, no
torch), must score images as `ad.predict` does with the run's model.pt."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

SCORE_RTOL = 1e-4  # image scores: relative to the reference score
MAP_RTOL = 1e-3  # maps: relative to the reference map's largest magnitude


@dataclass
class Parity:
    images: int
    max_score_error: float  # relative
    max_map_error: float  # relative
    max_score_abs: float
    worst_image: str

    @property
    def ok(self) -> bool:
        return self.max_score_error <= SCORE_RTOL and self.max_map_error <= MAP_RTOL

    def to_dict(self) -> Dict[str, Any]:
        return {"images": self.images, "max_score_rel_error": self.max_score_error,
                "max_map_rel_error": self.max_map_error, "max_score_abs_error": self.max_score_abs,
                "tolerances": {"score_rel": SCORE_RTOL, "map_rel": MAP_RTOL},
                "reference": "ad.predict (model.pt, torch) vs this file through ad.deploy (no torch)"}


def score_errors(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """|got − ref| / |ref| per image, with |ref| floored at 1e-3 of the set's largest |score| (a score near 0
    has no meaningful relative error of its own)."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    floor = max(1e-3 * float(np.abs(ref).max(initial=0.0)), 1e-12)
    return np.abs(got - ref) / np.maximum(np.abs(ref), floor)


def map_error(ref: np.ndarray, got: np.ndarray) -> float:
    """max |got − ref| over the map, relative to the reference map's largest magnitude."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        return float("inf")
    return float(np.abs(got - ref).max(initial=0.0) / max(float(np.abs(ref).max(initial=0.0)), 1e-12))


def check(model: Any, meta: Mapping[str, Any], export_dir: Path, paths: Sequence[Path]) -> Parity:
    """Score `paths` both ways and compare (the reference runs on the CPU in fp32, as a line PC would)."""
    import torch

    from ad.deploy import Inferencer
    from ad.predict import predict_paths

    ref = predict_paths(model, meta, list(paths), batch_size=8, device=torch.device("cpu"))
    inf = Inferencer(export_dir)
    results = [inf.predict(p) for p in paths]
    got_scores = np.array([r.score for r in results])
    errs = score_errors(ref["scores"], got_scores)
    map_errs = [map_error(ref["maps"][i], r.anomaly_map) for i, r in enumerate(results)]
    worst = int(np.argmax(np.maximum(errs / SCORE_RTOL, np.array(map_errs) / MAP_RTOL)))
    return Parity(images=len(paths), max_score_error=float(errs.max()), max_map_error=float(max(map_errs)),
                  max_score_abs=float(np.abs(got_scores - ref["scores"]).max()), worst_image=str(paths[worst]))


def parity_images(run_dir: Path, meta: Mapping[str, Any], extra: Optional[Path] = None,
                  n_val: int = 8, n_test: int = 4) -> List[Path]:
    """The run's held-out validation normals (up to `n_val`, from its dataset config) and a few of its test
    images (from predictions.csv, normal and anomalous), plus every image in `extra`; those that still exist."""
    from ad.io.images import IMAGE_EXTENSIONS, find_images

    paths: List[Path] = list(_val_normals(meta))[:n_val]
    paths += _test_images(run_dir / "predictions.csv", n_test)
    if extra is not None:
        paths += [extra] if extra.is_file() and extra.suffix.lower() in IMAGE_EXTENSIONS else find_images(extra)
    seen, out = set(), []
    for p in paths:
        if p.is_file() and p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _val_normals(meta: Mapping[str, Any]) -> List[Path]:
    """Validation normals as the run split them (same dataset config and seed); none if the data moved."""
    try:
        from hydra.utils import instantiate

        dataset = dict((meta.get("config") or {}).get("dataset") or {})
        root = Path(str(dataset.get("root")))
        category = dataset.get("category")
        # only read data that is still there: a generated dataset would otherwise be generated anew
        if "_target_" not in dataset or not root.is_dir() or (isinstance(category, str) and not (root / category).exists()):
            return []
        dm = instantiate(dataset)
        dm.setup()
        return [Path(s.path) for s in dm.samples("val")]
    except Exception:  # data no longer where it was: parity falls back to the test images / images=
        return []


def _test_images(csv_path: Path, n: int) -> List[Path]:
    """Up to n test images from predictions.csv, alternating normal and anomalous."""
    if not csv_path.is_file():
        return []
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    good = [Path(r["path"]) for r in rows if r.get("label") == "0"]
    bad = [Path(r["path"]) for r in rows if r.get("label") != "0"]
    mixed = [p for pair in zip(good, bad) for p in pair] + good[len(bad):] + bad[len(good):]
    return mixed[:n]
