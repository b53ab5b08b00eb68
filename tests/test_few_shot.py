"""Few-shot categories: 1, 2 and 4 training images run; thresholds come from held-out normals when there are
enough, from cross-fitted training normals otherwise, and are absent (said so) for a single image."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.test_run import run_in_process


def _tiny(n_train: int, root, model: str = "patchcore"):
    return [f"model={model}", "category=syn_disc", f"dataset.root={root}", "backbone.pretrained=false",
            "trainer=smoke", "trainer.limit_test=null", "trainer.limit_train=null", "trainer.limit_val=null",
            f"dataset.num_train={n_train}", "dataset.num_test_good=4", "dataset.num_test_defect=2",
            "dataset.generated_size=64"]


@pytest.mark.parametrize("model", ["patchcore", "padim", "dfm", "spade"])
def test_one_training_image_runs_without_inventing_a_threshold(model, tmp_path):
    res, run_dir = run_in_process(tmp_path, _tiny(1, tmp_path / "data", model))
    assert res.status == "ok", res.error
    assert res.counts.train == 1 and res.counts.val == 0
    assert res.image.auroc is not None and res.image.threshold is None and res.image.f1 is None
    assert res.thresholds.image is None and res.thresholds.source == "no held-out normals"
    assert any("no threshold" in n for n in res.notes)
    # the summary at the operating point says there is none instead of printing an ordinary block
    from ad.train import format_summary

    assert res.operating_point.no_threshold and res.operating_point.image is None
    text = format_summary(res, run_dir)
    assert "decisions   none: no threshold" in text and "precision" not in text
    with open(run_dir / "predictions.csv") as f:
        assert all(r["is_anomalous"] == "" for r in csv.DictReader(f))


def test_cross_fitted_threshold_equals_an_independent_out_of_fold_computation(tmp_path):
    """2 normals (1 train + 1 val): each is scored by a model fitted on the other; threshold = mean + 3 std."""
    from hydra.utils import instantiate

    from ad import metrics
    from ad.config import compose
    from ad.data.folds import FoldData
    from ad.engine.trainer import seed_everything

    res, run_dir = run_in_process(tmp_path, _tiny(2, tmp_path / "data"))
    assert res.status == "ok", res.error
    assert res.thresholds.source.startswith("cross-fitted training normals") and res.validation.count == 2
    cfg = compose(_tiny(2, tmp_path / "data") + [f"paths.root_dir={tmp_path}"])
    data = instantiate(cfg.dataset).setup()
    normals = data.samples("train") + data.samples("val")
    from ad.engine.trainer import Trainer

    trainer = Trainer(**instantiate(cfg.trainer).loop())  # as ad.train builds it from TrainerSettings
    scores = []
    for held in normals:
        seed_everything(0)  # the run's seed: fold models start from the run's initial weights
        model = instantiate(cfg.model)
        fold = FoldData(data.transform, [s for s in normals if s != held], [held])
        trainer.fit(model, fold)
        scores.append(float(trainer.predict(model, fold.dataloader("heldout", 4)).scores[0]))
    want = metrics.fit_threshold(np.array(scores), method="mean_std", k=3.0)
    assert res.thresholds.image == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("n_train", [4, 8])
def test_few_shot_trained_model_runs(n_train, tmp_path):
    res, _ = run_in_process(tmp_path, _tiny(n_train, tmp_path / "data", "stfpm"))
    assert res.status == "ok", res.error
    assert res.thresholds.image is not None and res.image.f1 is not None
