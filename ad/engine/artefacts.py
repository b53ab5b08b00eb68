"""What a run leaves in its directory besides results.json: predictions.csv, test_maps.npz, history.csv,
model.pt, and the logger's view of the test set. Each file is written atomically (`ad.io`) in the formats of
`ad.rundir`; `TestOutputs` collects each category's predictions before the pipeline drops them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from ad.engine.evaluation import Calibration
from ad.engine.scoring import PredictionSet, decide
from ad.engine.settings import RunSpec
from ad.rundir import layout
from ad.rundir.modelfile import save_model_file



def prediction_rows(test: PredictionSet, cal: Calibration, category: str) -> List[Dict[str, Any]]:
    normalized, anomalous = decide(test.scores, cal.image_threshold, cal.image_normalization)
    return [
        {"path": p, "category": category, "defect_type": d, "label": int(l), "score": float(s),
         "normalized_score": float(n), "is_anomalous": a}
        for p, d, l, s, n, a in zip(test.paths, test.defect_types, test.labels, test.scores, normalized, anomalous)
    ]


def save_model(run_dir: Path, model: Any, spec: RunSpec, cal: Calibration, use_amp: bool) -> None:
    """model.pt: fitted state + calibration + what `ad.predict` needs to score new images the same way."""
    save_model_file(run_dir / "model.pt", model, spec.model_config, {
        "model_name": spec.model,
        "setting": spec.setting,
        "image_threshold": cal.image_threshold,
        "pixel_threshold": cal.pixel_threshold,
        "normalization": cal.image_normalization,
        "pixel_normalization": cal.pixel_normalization,
        "category_thresholds": {c: k.image_threshold for c, k in cal.per_category.items()},
        "data": dict(spec.data_config),
        "precision": "amp" if use_amp else "fp32",  # the test set was scored like this: predict does the same
        "config": spec.config,
    })


class TestOutputs:
    """Where each category's test predictions go before they are dropped (predictions.csv rows, test_maps.npz,
    the logger), and the logger itself. A context manager: on the way out the logger is closed and a maps file
    that was not finished (a failed run) is discarded."""

    def __init__(self, run_dir: Path, logger: Any, evaluation: Any, unified: bool) -> None:
        self.logger = logger
        self.unified = unified
        self.rows: List[Dict[str, Any]] = []
        self.maps = None
        if evaluation.save_maps:
            from ad.rundir.maps_store import MapsWriter

            self.maps = MapsWriter(run_dir, evaluation.save_maps_max_side)

    def __enter__(self) -> "TestOutputs":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.logger.close()
        finally:
            if self.maps is not None:
                self.maps.abort()  # a no-op once closed; drops a partial file when the run failed

    def add(self, name: str, test: PredictionSet, rec: Any, cal: Calibration, dataset: Any, n_visual: int) -> None:
        if self.maps is not None:  # test_maps.npz: this category's maps, before they are dropped
            self.maps.add(name, test.paths, test.labels, test.maps, test.masks, test.has_mask)
        rows = prediction_rows(test, cal, name)
        self.rows += rows
        normalized = np.array([r["normalized_score"] for r in rows])
        self.logger.log_test(f"{name}/" if self.unified else "", rec, test, normalized,
                             visualizations(dataset, test, cal, n_visual))

    def finish(self, run_dir: Path, history: Sequence[Any]) -> None:
        """predictions.csv, test_maps.npz and history.csv, once every category is in."""
        layout.write_predictions(run_dir, self.rows)
        if self.maps is not None:
            self.maps.close()
        layout.write_history(run_dir, history)


def visualizations(dataset: Any, test: PredictionSet, cal: Calibration, n: int) -> List[Dict[str, Any]]:
    """The few test images the logger shows (worst and best cases), with their maps and decisions."""
    from ad.visualize import display_map, pick_visualizations

    picks = pick_visualizations(test.labels, test.scores, n)
    return [{"image": dataset[i]["image"].numpy(), "map": display_map(test.maps[i], cal.pixel_normalization),
             "mask": test.masks[i] if test.has_mask[i] else None, "caption": f"{Path(test.paths[i]).name} {cap}",
             "name": Path(test.paths[i]).name, "score": float(test.scores[i]), "label": int(test.labels[i]),
             "decision": None if cal.image_threshold is None else bool(test.scores[i] >= cal.image_threshold)}
            for i, cap in picks]
