"""A real run saves test_maps.npz in predictions.csv order; pixel metrics recomputed from it match
results.json up to float16 rounding; evaluation.save_maps=false turns it off."""
from __future__ import annotations

import csv

import pytest

import ad.metrics as M
from ad.rundir.maps_store import MAPS_FILE, load_test_maps
from tests.test_run import FAST, run_in_process


def test_run_saves_maps_that_reproduce_pixel_metrics(synthetic_root, tmp_path):
    res, run_dir = run_in_process(tmp_path, ["model=padim", "category=syn_disc", f"dataset.root={synthetic_root}",
                                             "backbone.pretrained=false", *FAST])
    assert res.status == "ok", res.error
    saved = load_test_maps(run_dir)
    with open(run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert saved.paths == [r["path"] for r in rows]
    assert saved.labels.tolist() == [int(r["label"]) for r in rows]
    assert saved.masks is not None and saved.factor == 1
    assert M.pixel_auroc(saved.masks, saved.raw()) == pytest.approx(res.pixel.auroc, abs=2e-3)
    assert M.aupro(saved.masks, saved.raw()) == pytest.approx(res.pixel.aupro, abs=5e-3)

    res2, run_dir2 = run_in_process(tmp_path, ["model=padim", "category=syn_disc", f"dataset.root={synthetic_root}",
                                               "backbone.pretrained=false", "evaluation.save_maps=false", *FAST], "off")
    assert res2.status == "ok" and not (run_dir2 / MAPS_FILE).exists()
    assert not list(run_dir2.glob(".*.tmp"))
