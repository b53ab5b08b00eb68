"""The one prediction path: test scoring, the validation objective and `ad.predict` all call `predict_batch`
(same device placement, same autocast/precision, same output checks), and `decide` turns scores into
normalised scores and decisions with the run's calibration. A saved run therefore scores a new image exactly
as it scored its test set.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ad.engine.progress import DEFAULT_INTERVAL_S
from ad.models.base import AnomalyModel


@torch.no_grad()
def predict_batch(model: AnomalyModel, images: torch.Tensor, device: torch.device,
                  use_amp: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Scores [B] and maps [B,H,W] (float32 numpy, at the input size) of a batch of [0,1] images."""
    x = images.to(device, non_blocking=True)
    with torch.autocast(device.type, enabled=use_amp):
        out = model.predict(x)
    if out.maps.shape[-2:] != x.shape[-2:]:
        raise RuntimeError(f"{type(model).__name__}.predict returned maps of size {tuple(out.maps.shape[-2:])}, "
                           f"expected {tuple(x.shape[-2:])}")
    return out.scores.float().cpu().numpy().reshape(-1), out.maps.float().cpu().numpy()


def score_function(model: AnomalyModel, device: torch.device, use_amp: bool):
    """`images -> scores` over the one prediction path (for the validation objective)."""
    model.to(device).eval()
    return lambda images: predict_batch(model, images, device, use_amp)[0]


@dataclass
class PredictionSet:
    """Model outputs over a split, on CPU, in dataset order."""

    scores: np.ndarray  # [N]
    maps: np.ndarray  # [N,H,W] float32
    labels: np.ndarray  # [N]
    masks: np.ndarray  # [N,H,W] uint8
    has_mask: np.ndarray  # [N] bool
    paths: List[str]
    defect_types: List[str]
    seconds: float = 0.0
    categories: List[str] = field(default_factory=list)  # per image; filled for unified runs


def score_loader(model: AnomalyModel, loader: Iterable[Mapping[str, Any]], device: torch.device, use_amp: bool,
                 progress: bool = False, desc: str = "predicting", interval: float = DEFAULT_INTERVAL_S) -> PredictionSet:
    from ad.engine.progress import track

    model.to(device).eval()
    t0 = time.perf_counter()
    scores, maps, labels, masks, has_mask, paths, defects, cats = [], [], [], [], [], [], [], []
    for batch in track(loader, desc, bar=progress, interval=interval):
        s, m = predict_batch(model, batch["image"], device, use_amp)
        scores.append(s)
        maps.append(m)
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"].numpy().astype(np.uint8))
        # A normal image's mask is known to be empty even when no mask file exists for it.
        has_mask.append(batch["has_mask"].numpy() | (batch["label"].numpy() == 0))
        paths += batch["path"]
        defects += batch["defect_type"]
        cats += list(batch.get("category", []))
    if not scores:
        empty = np.zeros((0,), np.float32)
        return PredictionSet(empty, np.zeros((0, 0, 0), np.float32), np.zeros((0,), np.int64),
                             np.zeros((0, 0, 0), np.uint8), np.zeros((0,), bool), [], [], 0.0, [])
    return PredictionSet(
        scores=np.concatenate(scores), maps=np.concatenate(maps), labels=np.concatenate(labels),
        masks=np.concatenate(masks), has_mask=np.concatenate(has_mask), paths=paths, defect_types=defects,
        seconds=time.perf_counter() - t0, categories=cats,
    )


def decide(scores: np.ndarray, threshold: Optional[float],
           normalization: Optional[Mapping[str, float]]) -> Tuple[np.ndarray, List[Optional[bool]]]:
    """(normalised scores, is_anomalous) with a run's image threshold and normalisation.

    Constant validation scores leave no scale to normalise with: the normalised score is then NaN, said so
    rather than invented. A run without a threshold (no held-out normal existed) decides nothing: None.
    """
    from ad import metrics

    scores = np.asarray(scores, dtype=np.float64)
    normalized = metrics.normalize(scores, normalization) if normalization else np.full(len(scores), np.nan)
    if threshold is None:
        return normalized, [None] * len(scores)
    return normalized, [bool(v) for v in np.greater_equal(scores, np.float64(threshold))]
