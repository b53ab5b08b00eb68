"""TensorBoard logging of one run: losses, final metrics, hparams, score histograms, PR curve, overlays."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from ad.visualize import captioned, overlay, pick_visualizations  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def flatten_metrics(record: Any) -> Dict[str, float]:
    """{"image/auroc": .9, "pixel/aupro": .8, "mad": .85, ...} from a RunRecord or CategoryRecord: finite
    numbers only (a null metric is left out, never plotted as 0)."""
    out: Dict[str, float] = {}
    for section in ("image", "pixel", "validation"):
        values = getattr(record, section, None)
        if values is None:
            continue
        for k, v in dataclasses.asdict(values).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                out[f"{section}/{k}"] = float(v)
    if getattr(record, "mad", None) is not None:
        out["mad"] = float(record.mad)
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

    def log_test(self, prefix: str, record: Any, test: Any, normalized_scores: np.ndarray,
                 images: Optional[List[Dict[str, Any]]] = None, pixel_range: tuple[float, float] = (0.0, 1.0)) -> None:
        """One category's test results (`prefix` "" for a single-class run, "<category>/" for unified):
        final metrics, score histograms, PR curve, best/worst overlays. `test` is its PredictionSet."""
        if self.writer is None:
            return
        if prefix:  # a unified run's categories; a single run's final metrics are the HPARAMS metrics (log_final)
            for tag, v in flatten_metrics(record).items():
                self.writer.add_scalar(f"test/{prefix}{tag}", v, 0)
        labels = test.labels.astype(bool)
        if self.log_histograms:
            if (~labels).any():
                self.writer.add_histogram(f"test/{prefix}scores_normal", test.scores[~labels], 0)
            if labels.any():
                self.writer.add_histogram(f"test/{prefix}scores_anomalous", test.scores[labels], 0)
        if self.log_pr_curve and labels.any() and (~labels).any():
            self.writer.add_pr_curve(f"test/{prefix}pr_curve", torch.from_numpy(labels),
                                     torch.from_numpy(np.clip(np.nan_to_num(normalized_scores), 0, 1)), 0)
        if self.log_images and images:
            lo, hi = pixel_range
            tiles = [captioned(overlay(it["image"], it["map"], it.get("mask"), lo, hi), _caption(it)) for it in images]
            tall = max(x.shape[0] for x in tiles)  # captions wrap to different heights: pad with black
            tiles = [np.pad(x, ((0, tall - x.shape[0]), (0, 0), (0, 0))) for x in tiles]
            grid = np.stack(tiles).transpose(0, 3, 1, 2)  # NCHW uint8
            self.writer.add_images(f"test/{prefix}overlays_best_and_worst", grid, 0, dataformats="NCHW")
            self.writer.add_text(f"test/{prefix}overlays_legend", "  \n".join(f"{i}: {it['caption']}" for i, it in enumerate(images)))
        self.writer.flush()

    def log_final(self, record: Any, hparams: Mapping[str, Any]) -> None:
        """The run's summary metrics (for unified runs: the means over categories) and the HPARAMS entry."""
        if self.writer is None:
            return
        # Each final metric is written once, by add_hparams, under the tag the charts show (test/..., or
        # test/mean/... for a unified run): no second single-point hparam/... chart of the same number.
        head = "test/mean/" if record.categories is not None else "test/"
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        hp_metrics = {(k if k.startswith("validation") else head + k): v for k, v in flatten_metrics(record).items()}
        if hp_metrics:
            # run_name="." keeps the hparams in this run's directory instead of a timestamped sub-run.
            self.writer.add_hparams(hp, hp_metrics, run_name=".")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _caption(item: Mapping[str, Any]) -> List[str]:
    """[image name, "score s  label -> decision OK|WRONG"] (the caption text alone for older callers)."""
    if "score" not in item:
        return [str(item.get("caption", ""))[:40]]
    truth = "anomalous" if item["label"] else "normal"
    if item["decision"] is None:  # the run has no threshold (a single training image)
        return [str(item["name"])[:40], f"score {item['score']:.4g}", f"{truth}, no threshold"]
    said = "anomalous" if item["decision"] else "normal"
    verdict = "OK" if bool(item["label"]) == item["decision"] else "WRONG"
    return [str(item["name"])[:40], f"score {item['score']:.4g}", f"{truth} -> {said} {verdict}"]
