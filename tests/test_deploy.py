"""ad.deploy without torch: preprocessing and overlays equal training's, scores equal ad.predict's in an
interpreter where `import torch` fails, and export's refusals (missing/failed run, unknown format, tampered
file, parity failure) write nothing."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.test_export import fitted_run, odd_images

BLOCKER = '''import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this interpreter (ad.deploy must not need it)")
sys.meta_path.insert(0, _NoTorch())
'''


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from ad.export import export_run

    tmp = tmp_path_factory.mktemp("deploy")
    run_dir = fitted_run("padim", tmp)
    return run_dir, export_run(run_dir, "onnx", images=odd_images(tmp / "odd"))


def _images(folder: Path) -> list:
    rng = np.random.default_rng(1)
    odd_images(folder)
    Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(folder / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (33, 47, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 8, (40, 52), dtype=np.uint8), "P").save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 256, (29, 31, 3), dtype=np.uint8)).save(folder / "small.bmp")
    return sorted(folder.iterdir())


@pytest.mark.parametrize("size,crop", [(32, None), ((40, 56), (32, 48)), (64, 60)])
def test_preprocessing_equals_the_training_pipeline(size, crop, tmp_path):
    from ad.data import ImageTransform, load_image
    from ad.deploy import images
    from ad.export.manifest import preprocess_recipe

    recipe = preprocess_recipe({"image_size": size, "center_crop": crop})
    transform = ImageTransform(size, crop)
    for p in _images(tmp_path):
        want = transform(load_image(p))[0].numpy()[None]
        got = images.to_input(images.resize(images.load(p), recipe))
        assert got.dtype == np.float32 and np.array_equal(got, want), p.name
        # bytes and arrays are read the same way as the file
        assert np.array_equal(images.to_input(images.resize(images.load(p.read_bytes()), recipe)), want)


def test_overlay_and_normalisation_equal_ad_predicts(tmp_path):
    from ad import metrics
    from ad.deploy import normalize_score
    from ad.deploy.overlay import display_map, overlay
    from ad import visualize

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    amap = (rng.random((24, 40)) * 5).astype(np.float32)
    amap[0, 0], amap[0, 1] = 0.0, 5.0  # both ends of the colour map
    for norm in (None, {"min": 0.5, "threshold": 3.0}):
        want = visualize.overlay(pixels.transpose(2, 0, 1).astype(np.float32) / 255.0, visualize.display_map(amap, norm))
        assert np.array_equal(overlay(pixels, display_map(amap, norm)), want)
    norm = {"min": -1.25, "threshold": 7.5}
    for s in (-3.0, 0.0, 7.5, 12.345678):
        assert normalize_score(s, norm) == float(metrics.normalize(np.array([s]), norm)[0])
    assert np.isnan(normalize_score(1.0, None))


def _csv(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_scores_without_torch_equal_ad_predict(exported, tmp_path):
    from ad.export.parity import SCORE_RTOL, score_errors
    from ad.predict import main as torch_predict

    run_dir, export_dir = exported
    inputs = tmp_path / "in"
    _images(inputs)
    for row in _csv(run_dir / "predictions.csv")[:3]:
        shutil.copy(row["path"], inputs / f"test_{Path(row['path']).parent.name}_{Path(row['path']).name}")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{REPO_ROOT}"}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the blocker works
    proc = subprocess.run([sys.executable, "-m", "ad.deploy.predict", f"model={export_dir}", f"input={inputs}",
                           f"out={tmp_path / 'deployed'}"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert torch_predict([f"run_dir={run_dir}", f"input={inputs}", f"out={tmp_path / 'torch'}", "device=cpu"]) == 0
    got, want = _csv(tmp_path / "deployed" / "predictions.csv"), _csv(tmp_path / "torch" / "predictions.csv")
    assert [r["path"] for r in got] == [r["path"] for r in want] and len(got) == 10
    errs = score_errors([float(r["score"]) for r in want], [float(r["score"]) for r in got])
    assert errs.max() <= SCORE_RTOL
    assert [r["is_anomalous"] for r in got] == [r["is_anomalous"] for r in want]
    for r in got:
        with Image.open(tmp_path / "deployed" / r["overlay"]) as im:
            assert im.size == (32, 32) and im.mode == "RGB"


def test_inferencer_api(exported, tmp_path):
    from ad.deploy import Inferencer
    from ad.deploy.images import ImageInputError

    _, export_dir = exported
    inf = Inferencer(export_dir)
    path = _images(tmp_path)[0]
    a = inf.predict(path)
    b = inf.predict(np.asarray(Image.open(path).convert("RGB")))
    c = inf.predict(Image.open(path))
    assert a.score == b.score == c.score and a.anomaly_map.shape == (32, 32)
    t = inf.threshold
    assert a.is_anomalous == (a.score >= t)
    assert inf.predict(path, threshold=a.score).is_anomalous is True
    assert inf.predict(path, threshold=np.nextafter(a.score, np.inf)).is_anomalous is False
    assert a.normalized_score == pytest.approx(0.5 * (a.score - inf.bundle.image_normalization["min"])
                                               / (t - inf.bundle.image_normalization["min"]), rel=1e-12)
    with pytest.raises(ImageInputError, match="not a recognised image"):
        inf.predict(b"not an image")
    with pytest.raises(ImageInputError, match="float32"):
        inf.predict(np.zeros((8, 8, 3), np.float32))


def _one_line_error(capsys, main, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_export_refusals_write_nothing(exported, tmp_path, capsys, monkeypatch):
    from ad.export import ExportError, export_run
    from ad.export.__main__ import main

    run_dir, export_dir = exported
    assert "does not exist" in _one_line_error(capsys, main, [f"run_dir={tmp_path / 'nope'}"])
    assert "format='tflite'" in _one_line_error(capsys, main, [f"run_dir={run_dir}", "format=tflite"])
    failed = tmp_path / "failed"
    shutil.copytree(run_dir, failed, ignore=shutil.ignore_patterns("export"))
    res = json.loads((failed / "results.json").read_text())
    (failed / "results.json").write_text(json.dumps({**res, "status": "failed", "error": "boom"}))
    assert "status 'failed'" in _one_line_error(capsys, main, [f"run_dir={failed}"])
    assert not (failed / "export").exists() and not (tmp_path / "nope").exists()

    # parity failure: a preprocessing off by 1/255 must be caught, and the good export already there kept
    before = (export_dir / "deploy.json").read_bytes()
    from ad.deploy import images

    real = images.to_input
    monkeypatch.setattr(images, "to_input", lambda pixels: real(pixels) + np.float32(1 / 255))
    with pytest.raises(ExportError, match=r"does not score like the run: max image-score difference .* nothing was written"):
        export_run(run_dir, "onnx")
    monkeypatch.undo()
    assert (export_dir / "deploy.json").read_bytes() == before
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["onnx"]


def test_tampered_model_file_is_refused(exported, tmp_path, capsys):
    from ad.deploy import Inferencer
    from ad.deploy.predict import main
    from ad.errors import ConfigError

    _, export_dir = exported
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-8] ^= 1  # one bit in the last weight
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="sha256.*modified or replaced"):
        Inferencer(copy)
    err = _one_line_error(capsys, main, [f"model={copy}", f"input={tmp_path}"])
    assert "model.onnx" in err and "sha256" in err
    (copy / "model.onnx").unlink()
    assert "missing" in _one_line_error(capsys, main, [f"model={copy}", f"input={tmp_path}"])
    assert "not an export folder" in _one_line_error(capsys, main, [f"model={tmp_path}", f"input={tmp_path}"])


def test_openvino_export_has_parity(exported):
    pytest.importorskip("openvino", reason="openvino not installed (pip install 'ad[openvino]')")
    from ad.deploy import Inferencer
    from ad.export import export_run

    run_dir, onnx_dir = exported
    out = export_run(run_dir, "openvino")
    manifest = json.loads((out / "deploy.json").read_text())
    assert sorted(manifest["model"]["sha256"]) == ["model.bin", "model.xml"] and not (out / "model.onnx").exists()
    assert manifest["parity"]["max_score_rel_error"] <= 1e-4
    row = _csv(run_dir / "predictions.csv")[0]
    assert Inferencer(out).predict(row["path"]).score == pytest.approx(Inferencer(onnx_dir).predict(row["path"]).score, rel=1e-5)
