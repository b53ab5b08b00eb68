"""Every model option end to end (`trainer=smoke`) on every kind of category layout, on a machine with nothing
in backbones/: a grey-scale MVTec-like category, a BTAD-like one with mixed extensions, a raw VisA-like one
and a 3-image few-shot one (thresholds cross-fitted). The default suite runs every model on the few-shot
layout and every layout with PatchCore; `-m slow` runs the full cross product."""
from __future__ import annotations

import csv

import pytest

from ad.registry import MODELS
from tests.layouts import LAYOUTS
from tests.test_budget import SMALL
from tests.test_run import run_in_process

# A model's speed-ups from the budget test, plus what a patch-14 ViT model needs (a multiple of 14).
VIT_MODELS = ("dinomaly", "anomalydino")


def _run(name, layout_name, tmp_path):
    layout = LAYOUTS[layout_name](tmp_path / "data")
    size = 56 if name in VIT_MODELS else 48
    overrides = [f"model={name}", "trainer=smoke", "backbone.pretrained=false", *layout.overrides,
                 f"dataset.image_size={size}", "trainer.limit_test=null", f"paths.backbone_dir={tmp_path / 'none'}",
                 *SMALL.get(name, [])]
    if name == "efficientad":
        overrides.append("model.teacher_weights=random")
    res, run_dir = run_in_process(tmp_path, overrides)
    assert res.status == "ok", f"{name} on {layout_name}: {res.error}"
    assert res.counts.test == layout.n_test and res.counts.test_anomalous == layout.n_test_bad
    assert res.image.auroc is not None and 0.0 <= res.image.auroc <= 1.0
    with open(run_dir / "predictions.csv") as f:
        assert len(list(csv.DictReader(f))) == layout.n_test
    assert (run_dir / "model.pt").is_file()
    return res


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_on_a_three_image_category(name, tmp_path):
    res = _run(name, "few_shot", tmp_path)
    assert res.thresholds.image is not None and "cross-fitted" in res.thresholds.source


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_with_patchcore(layout, tmp_path):
    _run("patchcore", layout, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_on_every_layout(name, layout, tmp_path):
    _run(name, layout, tmp_path)
