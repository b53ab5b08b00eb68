"""TensorBoard logging of one run: losses, final metrics, hparams, score histograms, PR curve, overlays."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from ad.engine.visualize import overlay

log = logging.getLogger(__name__)


def flatten_metrics(results: Mapping[str, Any]) -> Dict[str, float]:
    """{"image": {"auroc": .9}} -> {"image/auroc": .9}, numbers only (None/null metrics are skipped)."""
    out: Dict[str, float] = {}
    for section in ("image", "pixel", "validation"):
        values = results.get(section) or {}
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                out[f"{section}/{k}"] = float(v)
    return out


class TensorBoardLogger:
    def __init__(self, log_dir: "str | Path", enabled: bool = True, log_images: bool = True,
                 log_histograms: bool = True, log_pr_curve: bool = True) -> None:
        self.enabled = enabled
        self.log_images, self.log_histograms, self.log_pr_curve = log_images, log_histograms, log_pr_curve
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir = Path(log_dir)
            self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, text: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text)

    def final(self, results: Mapping[str, Any], hparams: Mapping[str, Any], test, normalized_scores: np.ndarray,
              images: Optional[List[Dict[str, Any]]] = None, pixel_range: tuple[float, float] = (0.0, 1.0)) -> None:
        """Everything logged once the run is evaluated. `test` is the test PredictionSet."""
        if self.writer is None:
            return
        metrics = flatten_metrics(results)
        for tag, v in metrics.items():
            self.writer.add_scalar(f"test/{tag}" if not tag.startswith("validation") else tag, v, 0)
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        hp_metrics = {f"hparam/{k}": v for k, v in metrics.items()}
        if hp_metrics:
            # run_name="." keeps the hparams in this run's directory instead of a timestamped sub-run.
            self.writer.add_hparams(hp, hp_metrics, run_name=".")
        labels = test.labels.astype(bool)
        if self.log_histograms:
            if (~labels).any():
                self.writer.add_histogram("test/scores_normal", test.scores[~labels], 0)
            if labels.any():
                self.writer.add_histogram("test/scores_anomalous", test.scores[labels], 0)
        if self.log_pr_curve and labels.any() and (~labels).any():
            self.writer.add_pr_curve("test/pr_curve", torch.from_numpy(labels), torch.from_numpy(np.clip(normalized_scores, 0, 1)), 0)
        if self.log_images and images:
            lo, hi = pixel_range
            tiles = [overlay(it["image"], it["map"], it.get("mask"), lo, hi) for it in images]
            grid = np.stack(tiles).transpose(0, 3, 1, 2)  # NCHW uint8
            self.writer.add_images("test/overlays_best_and_worst", grid, 0, dataformats="NCHW")
            self.writer.add_text("test/overlays_legend", "  \n".join(f"{i}: {it['caption']}" for i, it in enumerate(images)))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def pick_visualizations(labels: np.ndarray, scores: np.ndarray, n: int) -> List[tuple[int, str]]:
    """Indices of a fixed small number of test images: the worst cases (lowest-scored anomalies, highest-scored
    normals) and the best (highest-scored anomalies, lowest-scored normals), each with a caption."""
    if n <= 0:
        return []
    anomalous = np.flatnonzero(labels == 1)
    normal = np.flatnonzero(labels == 0)
    a_sorted = anomalous[np.argsort(scores[anomalous], kind="stable")]
    n_sorted = normal[np.argsort(scores[normal], kind="stable")]
    quarter = max(1, n // 4)
    picks: List[tuple[int, str]] = []
    groups = [
        (a_sorted[:quarter], "worst: anomalous with lowest score"),
        (n_sorted[::-1][:quarter], "worst: normal with highest score"),
        (a_sorted[::-1][:quarter], "best: anomalous with highest score"),
        (n_sorted[:quarter], "best: normal with lowest score"),
    ]
    seen = set()
    for idx, caption in groups:
        for i in idx:
            if int(i) not in seen and len(picks) < n:
                seen.add(int(i))
                picks.append((int(i), f"{caption} ({scores[i]:.4g})"))
    return picks
