"""Export every model option and prove the exported file scores as the run did.

Each model is fitted tiny (synthetic data, 32-48 px, two steps, random-weight backbones), exported to ONNX with
export's own parity check (the run's validation normals, a few test images, plus a non-square RGB image, a
grey image and a 16-bit grey image), and then checked again independently: the exported file read through
the torch-free `ad.deploy` against the run's own predictions.csv.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ad.registry import MODELS
from tests.test_budget import SMALL
from tests.test_run import run_in_process

# Sides: the patch-14 ViT models need multiples of 14; the PDN models' 33 px patches want 48 px inputs.
SIZE = {"dinomaly": 28, "anomalydino": 28, "efficientad": 48, "uninformed_students": 48}
NOT_EXPORTABLE = {"differnet": "autograd"}  # model -> a word the refusal must contain
FAST = ["trainer=smoke", "dataset.generated_size=48", "trainer.limit_train=null", "trainer.limit_test=null", "trainer.limit_val=null",
        "dataset.num_train=8", "dataset.num_test_good=2", "dataset.num_test_defect=1", "dataset.val_fraction=0.25",
        "category=syn_disc", "trainer.eval_batch_size=4", "evaluation.save_maps=false"]


def odd_images(folder: Path) -> Path:
    """Inputs unlike the training images: non-square RGB, 8-bit grey, 16-bit grey (all must be read and
    resized exactly as training's data pipeline does)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)).save(folder / "wide_rgb.png")
    Image.fromarray(rng.integers(0, 256, (50, 30), dtype=np.uint8), "L").save(folder / "tall_grey.png")
    Image.fromarray(rng.integers(0, 4096, (40, 40)).astype(np.uint16)).save(folder / "grey16.png")
    return folder


def fitted_run(name: str, tmp: Path):
    size = SIZE.get(name, 32)
    overrides = [f"model={name}", *FAST, f"dataset.image_size={size}",
                 "backbone.pretrained=false", f"paths.backbone_dir={tmp / 'none'}", *SMALL.get(name, [])]
    if name == "efficientad":
        overrides.append("model.teacher_weights=random")
    res, run_dir = run_in_process(tmp, overrides)
    assert res.status == "ok", res.error
    return run_dir


def _csv(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_exports_with_proven_parity(name, tmp_path):
    from ad.deploy import Inferencer
    from ad.deploy.bundle import sha256_file
    from ad.export import ExportError, export_run
    from ad.export.parity import MAP_RTOL, SCORE_RTOL, score_errors

    run_dir = fitted_run(name, tmp_path)
    extra = odd_images(tmp_path / "odd")
    if name in NOT_EXPORTABLE:
        with pytest.raises(ExportError, match=rf"'{name}'.*{NOT_EXPORTABLE[name]}"):
            export_run(run_dir, "onnx", images=extra)
        assert not (run_dir / "export" / "onnx").exists()
        assert not any((run_dir / "export").glob(".*")), "a refused export left a temporary folder"
        return
    out = export_run(run_dir, "onnx", images=extra)
    assert out == run_dir / "export" / "onnx"
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["onnx"]  # no temporaries left
    manifest = json.loads((out / "deploy.json").read_text())
    assert manifest["model"]["name"] == name
    assert manifest["model"]["sha256"] == {"model.onnx": sha256_file(out / "model.onnx")}
    side = SIZE.get(name, 32)
    assert manifest["input"]["shape"] == [1, 3, side, side]
    parity = manifest["parity"]
    assert parity["images"] >= 3 + 3  # the odd images plus the run's own
    assert parity["max_score_rel_error"] <= SCORE_RTOL and parity["max_map_rel_error"] <= MAP_RTOL

    # independent of export's own check: the run's predictions.csv (scored in training, batched, by torch)
    rows = _csv(run_dir / "predictions.csv")
    inf = Inferencer(out)
    got = np.array([inf.predict(r["path"]).score for r in rows])
    want = np.array([float(r["score"]) for r in rows])
    assert score_errors(want, got).max() <= SCORE_RTOL, (want, got)
    results = json.loads((run_dir / "results.json").read_text())
    assert manifest["thresholds"]["image"] == pytest.approx(results["thresholds"]["image"], rel=1e-12)
    # Decisions agree wherever the score is clear of the threshold by more than the parity tolerance: inside
    # that band float noise may fall either side (a tiny DRAEM fit scores every image at its threshold).
    thr = results["thresholds"]["image"]
    clear = [i for i, w in enumerate(want) if abs(w - thr) > SCORE_RTOL * max(abs(thr), 1e-12)]
    decided = [inf.predict(rows[i]["path"]).is_anomalous for i in clear]
    assert [int(d) for d in decided] == [int(rows[i]["is_anomalous"]) for i in clear]
