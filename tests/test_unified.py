"""Unified (multi-class) setting: one model on the union of 3 categories, evaluated per category.

Independent expectations: per-category counts of the generated layout, sklearn AUROC recomputed from
predictions.csv per category, means/mAD recomputed from the per-category records, `ad.predict` scores.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.test_run import FAST, run_in_process

CATS = ("syn_disc", "syn_tiles", "syn_weave")


@pytest.fixture(scope="module")
def unified_run(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unified")
    res, run_dir = run_in_process(tmp, ["setting=unified", "dataset=synthetic", "model=padim",
                                        f"dataset.root={synthetic_root}", "backbone.pretrained=false", *FAST])
    assert res.status == "ok", res.error
    return res, run_dir


def test_counts_per_category_and_one_model_file(unified_run):
    res, run_dir = unified_run
    assert res.run.setting == "unified" and res.run.categories == list(CATS) and res.run.category == "unified"
    for c in CATS:
        cnt = res.categories[c].counts
        # 12 generated train normals, 25 % held out per category; 4 good + 2 x 4 defect types in test
        assert (cnt.train, cnt.val, cnt.test, cnt.test_anomalous) == (9, 3, 12, 8), c
    assert (res.counts.train, res.counts.val, res.counts.test, res.counts.test_anomalous) == (27, 9, 36, 24)
    assert (run_dir / "model.pt").is_file() and not list(run_dir.glob("*/model.pt"))
    saved = json.loads((run_dir / "results.json").read_text())
    from ad.rundir.records import validate

    validate(saved)


def test_per_category_metrics_match_predictions_and_means_are_consistent(unified_run):
    res, run_dir = unified_run
    with open(run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36 and [r["category"] for r in rows] == [c for c in CATS for _ in range(12)]
    for c in CATS:
        mine = [r for r in rows if r["category"] == c]
        auroc = roc_auc_score([int(r["label"]) for r in mine], [float(r["score"]) for r in mine])
        assert res.categories[c].image.auroc == pytest.approx(auroc, abs=1e-6)
        assert all(Path(r["path"]).parts[-4] == c for r in mine)
    for name in ("auroc", "ap", "f1_max", "precision", "recall", "f1"):
        want = np.mean([getattr(res.categories[c].image, name) for c in CATS])
        assert getattr(res.image, name) == pytest.approx(want)
    assert res.pixel.aupro == pytest.approx(np.mean([res.categories[c].pixel.aupro for c in CATS]))
    seven = [res.image.auroc, res.image.ap, res.image.f1_max, res.pixel.auroc, res.pixel.ap, res.pixel.f1_max, res.pixel.aupro]
    assert res.mad == pytest.approx(np.mean([res.categories[c].mad for c in CATS])) == pytest.approx(np.mean(seven))
    # one global threshold decides every category; per-category thresholds are reported beside it
    thr = res.thresholds.image
    assert all(res.categories[c].image.threshold == thr for c in CATS)
    assert all((float(r["score"]) >= thr) == bool(int(r["is_anomalous"])) for r in rows)
    per_cat = {res.categories[c].image_at_category_threshold.threshold for c in CATS}
    assert len(per_cat) == 3 and thr not in per_cat


def test_training_batches_never_carry_the_category(synthetic_root):
    from ad.data.mvtec import MVTecAD
    from ad.data.unified import UnifiedData

    data = UnifiedData({c: MVTecAD(root=str(synthetic_root), category=c, image_size=32, val_fraction=0.25)
                        for c in CATS}).setup()
    batch = next(iter(data.dataloader("train", 27)))
    assert "category" not in batch and len(batch["path"]) == 27
    assert {Path(p).parts[-4] for p in batch["path"]} == set(CATS)
    val = next(iter(data.dataloader("val", 9)))
    assert val["category"] == [c for c in CATS for _ in range(3)]


def test_predict_reproduces_per_category_scores(unified_run, tmp_path):
    from ad.predict import main as predict_main

    res, run_dir = unified_run
    with open(run_dir / "predictions.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] == "syn_tiles"]
    folder = Path(rows[0]["path"]).parents[1]  # syn_tiles/test
    assert predict_main([f"run_dir={run_dir}", f"input={folder}", f"out={tmp_path / 'p'}", "overlays=false"]) == 0
    with open(tmp_path / "p" / "predictions.csv") as f:
        pred = {r["path"]: float(r["score"]) for r in csv.DictReader(f)}
    assert len(pred) == 12
    for r in rows:
        assert pred[r["path"]] == pytest.approx(float(r["score"]), rel=1e-5, abs=1e-6)


def test_tensorboard_has_scalars_per_category(unified_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir = unified_run
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {f"test/{c}/image/auroc" for c in CATS} <= scalars and "test/mean/mad" in scalars


def test_same_image_scores_the_same_through_test_objective_and_predict(unified_run, tmp_path):
    """The one prediction path: test scoring, the validation objective's scorer and ad.predict agree."""
    import torch

    from ad.data import ImageTransform, load_image
    from ad.engine.scoring import score_function
    from ad.predict import load_run, main as predict_main

    res, run_dir = unified_run
    with open(run_dir / "predictions.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["label"] == "1")
    model, meta = load_run(run_dir)
    image = ImageTransform(meta["data"]["image_size"], meta["data"]["center_crop"])(load_image(row["path"]))[0]
    objective_score = float(score_function(model, torch.device("cpu"), False)(image[None])[0])
    assert predict_main([f"run_dir={run_dir}", f"input={row['path']}", f"out={tmp_path / 'one'}", "overlays=false"]) == 0
    with open(tmp_path / "one" / "predictions.csv") as f:
        predicted = float(next(csv.DictReader(f))["score"])
    assert objective_score == pytest.approx(float(row["score"]), rel=1e-6, abs=1e-6)
    assert predicted == pytest.approx(float(row["score"]), rel=1e-6, abs=1e-6)


def test_aggregator_shows_unified_beside_single(unified_run, synthetic_root, tmp_path):
    from ad import aggregate as agg

    _, run_dir = unified_run
    single, single_dir = run_in_process(tmp_path, ["model=padim", "category=syn_tiles", f"dataset.root={synthetic_root}",
                                                   "backbone.pretrained=false", *FAST], "single")
    assert single.status == "ok"
    jobs = agg.collect_jobs([run_dir, single_dir])
    table = agg.build_table(jobs, metrics=["image.auroc", "mad"])
    md = agg.render_markdown(table)
    header = next(l for l in md.splitlines() if l.startswith("| dataset | category |"))
    assert "setting=unified" in header and "setting=single" in header, header
    tiles = next(l for l in md.splitlines() if l.startswith("| synthetic | syn_tiles |"))
    cells = [c.strip() for c in tiles.strip("|").split("|")][2:]
    assert f"{100 * single.image.auroc:.1f}" in cells
