"""`Inferencer(export_dir).predict(image)`: score one image with an exported model, without torch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

from ad.deploy import images
from ad.deploy.bundle import Bundle, read_bundle
from ad.deploy.overlay import display_map, overlay
from ad.deploy.runtime import runner
from ad.errors import ConfigError


def normalize_score(score: float, normalization: Optional[Mapping[str, float]]) -> float:
    """0.5 · (s − min) / (threshold − min) in float64 — `ad.metrics.normalize`'s formula (a test holds them
    equal), here without importing ad.metrics (scipy) on a line PC. NaN without a calibration."""
    if not normalization:
        return float("nan")
    mn, t = float(normalization["min"]), float(normalization["threshold"])
    return float((np.float64(score) - mn) / (2.0 * (t - mn)))


@dataclass
class Result:
    score: float  # raw image score: the same number as `score` in the run's predictions.csv
    normalized_score: float  # threshold -> 0.5 on the run's validation scale (NaN when uncalibrated)
    is_anomalous: Optional[bool]  # score >= threshold; None when the run has no threshold
    threshold: Optional[float]  # the raw image threshold the decision used
    anomaly_map: np.ndarray  # float32 [H,W] raw map at the model's input size
    pixels: np.ndarray  # uint8 [H,W,3]: the preprocessed image the model saw
    pixel_normalization: Optional[Mapping[str, float]] = None

    def overlay(self) -> np.ndarray:
        """uint8 [H,W,3] heat-map overlay (the map on the validation scale when calibrated), as ad.predict draws."""
        return overlay(self.pixels, display_map(self.anomaly_map, self.pixel_normalization))

    def to_dict(self) -> Dict[str, Any]:
        return {"score": self.score, "normalized_score": None if np.isnan(self.normalized_score) else self.normalized_score,
                "is_anomalous": self.is_anomalous, "threshold": self.threshold}


class Inferencer:
    """An export folder loaded for scoring. `threshold` overrides the calibrated image threshold for decisions
    (the raw and normalised scores do not change); `threads` caps the runtime's CPU threads."""

    def __init__(self, path: "str | Path", threshold: Optional[float] = None, threads: Optional[int] = None,
                 max_pixels: Optional[int] = None) -> None:
        self.bundle: Bundle = read_bundle(path)
        self._run = runner(self.bundle.format, str(self.bundle.model_path), threads)
        self.max_pixels = max_pixels
        self.threshold = self.bundle.image_threshold if threshold is None else _finite(threshold)

    @property
    def manifest(self) -> Dict[str, Any]:
        return self.bundle.manifest

    def preprocess(self, source: images.ImageInput, name: str = "upload") -> np.ndarray:
        """uint8 [H,W,3] at the model's input size, as training's data pipeline makes it."""
        return images.resize(images.load(source, self.max_pixels, name), self.bundle.preprocess)

    def predict(self, source: images.ImageInput, threshold: Optional[float] = None, name: str = "upload") -> Result:
        """Score one image: a path, encoded bytes (`name` labels them in errors), a PIL image or a uint8 array."""
        pixels = self.preprocess(source, name)
        score_arr, maps = self._run(images.to_input(pixels))
        score = float(score_arr[0])
        t = self.threshold if threshold is None else _finite(threshold)
        return Result(score=score, normalized_score=normalize_score(score, self.bundle.image_normalization),
                      is_anomalous=None if t is None else bool(np.float64(score) >= np.float64(t)), threshold=t,
                      anomaly_map=maps[0], pixels=pixels, pixel_normalization=self.bundle.pixel_normalization)


def _finite(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold={v!r} is not a number") from None
    if not np.isfinite(f):
        raise ConfigError(f"threshold={v!r} must be a finite number")
    return f
