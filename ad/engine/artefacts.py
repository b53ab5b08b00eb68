"""What a run leaves in its directory besides results.json: predictions.csv, history.csv, model.pt.

Each file is written atomically (`ad.io`) in the formats of `ad.rundir`; the run pipeline first removes whatever an earlier run
left in the directory (`clear_previous`), so a run dir never mixes the files of two runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from ad.engine.evaluation import Calibration
from ad.engine.scoring import PredictionSet, decide
from ad.engine.settings import RunSpec
from ad.rundir.layout import RUN_FILES
from ad.rundir.modelfile import save_model_file



def prediction_rows(test: PredictionSet, cal: Calibration, category: str) -> List[Dict[str, Any]]:
    normalized, anomalous = decide(test.scores, cal.image_threshold, cal.image_normalization)
    return [
        {"path": p, "category": category, "defect_type": d, "label": int(l), "score": float(s),
         "normalized_score": float(n), "is_anomalous": a}
        for p, d, l, s, n, a in zip(test.paths, test.defect_types, test.labels, test.scores, normalized, anomalous)
    ]


def maps_writer(run_dir: Path, evaluation: Any) -> Any:
    """The test_maps.npz writer (`ad.rundir.maps_store`), or None when evaluation.save_maps=false."""
    if not evaluation.save_maps:
        return None
    from ad.rundir.maps_store import MapsWriter

    return MapsWriter(run_dir, evaluation.save_maps_max_side)


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


def clear_previous(run_dir: Path) -> None:
    """Remove an earlier run's outputs (not its checkpoints, which resume decides about)."""
    import shutil

    for name in RUN_FILES:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
    for tmp in run_dir.glob(".*.tmp"):  # temporaries of an interrupted earlier write
        tmp.unlink(missing_ok=True)


def test_images(dataset: Any, indices: Sequence[int]) -> List[np.ndarray]:
    return [dataset[i]["image"].numpy() for i in indices]
