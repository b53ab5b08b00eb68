"""End-to-end runs through the real configs: outputs, TensorBoard contents, reproducibility, prediction,
failure handling, and the CLI."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from ad.config import compose
from tests.conftest import REPO_ROOT

FAST = ["trainer=smoke", "trainer.limit_train=null", "trainer.limit_test=null", "trainer.limit_val=null",
        "dataset.num_train=12", "dataset.num_test_good=4", "dataset.num_test_defect=2", "dataset.generated_size=64",
        "dataset.val_fraction=0.25"]


def run_in_process(tmp_path: Path, overrides, name="run"):
    from ad.train import run

    run_dir = tmp_path / name
    cfg = compose(overrides, output_dir=str(run_dir))
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        del cfg["hydra"]
    return run(cfg, run_dir, choices, list(overrides)), run_dir


@pytest.fixture(scope="module")
def memory_run(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memrun")
    res, run_dir = run_in_process(tmp, ["model=padim", "category=syn_disc", f"dataset.root={synthetic_root}",
                                        "backbone.pretrained=false", *FAST])
    return res, run_dir


def test_results_json_follows_the_schema(memory_run):
    from ad.rundir.records import SCHEMA_VERSION, validate

    res, run_dir = memory_run
    assert res.status == "ok", res.error
    saved = json.loads((run_dir / "results.json").read_text())
    validate(saved)  # every key known, every value of its declared type
    assert saved["schema_version"] == SCHEMA_VERSION
    run = saved["run"]
    assert run["model"] == "padim" and run["dataset"] == "synthetic" and run["category"] == "syn_disc"
    assert run["backbone"] == "tf_efficientnet_lite0" and run["setting"] == "single" and run["categories"] == ["syn_disc"]
    c = saved["counts"]
    assert c["train"] + c["val"] == 12 and c["val"] == 3
    assert c["test"] == 4 + 2 * len(saved["per_defect"]) and c["test_anomalous"] == c["test"] - 4
    for k in ("auroc", "ap", "f1_max", "threshold"):
        assert saved["image"][k] is not None
    for k in ("auroc", "aupro", "ap", "f1_max"):
        assert 0.0 <= saved["pixel"][k] <= 1.0
    # mAD is the mean of its seven metrics
    seven = [saved["image"][k] for k in ("auroc", "ap", "f1_max")] + [saved["pixel"][k] for k in ("auroc", "ap", "f1_max", "aupro")]
    assert saved["mad"] == pytest.approx(sum(seven) / 7)
    assert set(saved["timing"]) >= {"fit_s", "predict_s", "ms_per_image"}
    assert saved["memory"]["peak_rss_mb"] > 0
    # nothing consumes the objective in a plain run: skipped, and said so
    assert saved["validation"]["objective"] is None and "evaluation.objective" in saved["validation"]["objective_skipped"]


def test_a_mutated_results_json_fails_validation(memory_run):
    from ad.rundir.records import RecordError, validate

    _, run_dir = memory_run
    saved = json.loads((run_dir / "results.json").read_text())
    for mutate in (lambda d: d["image"].update(auroc="high"), lambda d: d.update(extra=1),
                   lambda d: d["run"].update(seed=1.5), lambda d: d.update(schema_version=1)):
        bad = json.loads(json.dumps(saved))
        mutate(bad)
        with pytest.raises(RecordError):
            validate(bad)


def test_history_csv_has_one_row_per_epoch(synthetic_root, tmp_path):
    res, run_dir = run_in_process(tmp_path, ["model=stfpm", "category=syn_tiles", f"dataset.root={synthetic_root}",
                                             "backbone.pretrained=false", *FAST, "trainer.max_steps=null",
                                             "trainer.max_epochs=3", "trainer.batch_size=4"])
    assert res.status == "ok", res.error
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "step", "train_loss", "val_loss", "lr", "seconds"]
    # 12 train normals, 25 % held out -> 9 -> 2 steps of 4 per epoch
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and [int(r["step"]) for r in rows] == [2, 4, 6]
    assert all(float(r["val_loss"]) > 0 and float(r["lr"]) == pytest.approx(0.4) for r in rows)
    assert res.training.epochs == 3 and res.training.batch_size == 4


def test_predictions_csv_matches_metrics(memory_run):
    from sklearn.metrics import roc_auc_score

    res, run_dir = memory_run
    with open(run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "category", "defect_type", "label", "score", "normalized_score", "is_anomalous"]
    assert len(rows) == res.counts.test and {r["category"] for r in rows} == {"syn_disc"}
    labels = [int(r["label"]) for r in rows]
    scores = [float(r["score"]) for r in rows]
    assert roc_auc_score(labels, scores) == pytest.approx(res.image.auroc, abs=1e-6)
    thr = res.thresholds.image
    assert all((float(r["score"]) >= thr) == bool(int(r["is_anomalous"])) for r in rows)
    # normalisation maps the validation threshold to 0.5
    for r in rows:
        assert (float(r["normalized_score"]) >= 0.5) == (float(r["score"]) >= thr)


def test_tensorboard_events_hold_scalars_images_histograms_hparams(memory_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir = memory_run
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "test/image/auroc" in tags["scalars"] and "test/pixel/aupro" in tags["scalars"]
    assert "test/overlays_best_and_worst" in tags["images"]
    assert {"test/scores_normal", "test/scores_anomalous"} <= set(tags["histograms"])
    assert "test/pr_curve" in tags["tensors"]
    plugins = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugins


def test_trained_model_logs_losses(synthetic_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res, run_dir = run_in_process(tmp_path, ["model=stfpm", "category=syn_tiles", f"dataset.root={synthetic_root}",
                                             "backbone.pretrained=false", *FAST, "trainer.max_steps=4",
                                             "trainer.max_epochs=2", "trainer.log_every_n_steps=1"])
    assert res.status == "ok", res.error
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert {"train/loss_step", "train/lr", "train/loss_epoch", "val/loss"} <= set(acc.Tags()["scalars"])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_same_seed_gives_identical_metrics(synthetic_root, tmp_path):
    args = ["model=padim", "category=syn_tiles", f"dataset.root={synthetic_root}", "backbone.pretrained=false", *FAST]
    a, _ = run_in_process(tmp_path, args, "a")
    b, _ = run_in_process(tmp_path, args, "b")
    assert a.status == b.status == "ok"
    for section in ("image", "pixel", "per_defect", "thresholds"):
        assert getattr(a, section) == getattr(b, section), section


def test_predict_reproduces_test_scores(memory_run, tmp_path):
    from ad.predict import main as predict_main

    _, run_dir = memory_run
    with open(run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    folder = Path(rows[0]["path"]).parent
    out = tmp_path / "pred"
    assert predict_main([f"run_dir={run_dir}", f"input={folder}", f"out={out}"]) == 0
    with open(out / "predictions.csv") as f:
        pred = {r["path"]: r for r in csv.DictReader(f)}
    expected = {r["path"]: r for r in rows if Path(r["path"]).parent == folder}
    assert set(pred) == set(expected)
    for p, r in expected.items():
        assert float(pred[p]["score"]) == pytest.approx(float(r["score"]), rel=1e-5, abs=1e-6)
        assert pred[p]["is_anomalous"] == r["is_anomalous"]
    pngs = list(out.glob("*.png"))
    assert len(pngs) == len(expected)


def test_predict_errors_are_one_line(tmp_path, capsys):
    from ad.predict import main as predict_main

    assert predict_main([f"run_dir={tmp_path}", f"input={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "results.json" in err and len(err.splitlines()) == 1


def test_bad_root_records_failure(tmp_path):
    res, run_dir = run_in_process(tmp_path, ["category=bottle", f"dataset.root={tmp_path / 'nope'}", "trainer=smoke"])
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["status"] == "failed"
    assert str(tmp_path / "nope") in saved["error"] and "\n" not in saved["error"]


def _cli(args, tmp_path, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AD_ROOT": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "ad.train", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600, **kw)


def test_cli_help_and_cfg_job(tmp_path):
    out = _cli(["--help"], tmp_path)
    assert out.returncode == 0 and "model" in out.stdout and "category" in out.stdout
    out = _cli(["--cfg", "job", "category=candle"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "ad.data.visa.VisA" in out.stdout and "candle" in out.stdout


def test_cli_failed_run_exits_nonzero_without_traceback(tmp_path):
    out = _cli(["category=bottle", "dataset.root=/definitely/not/here", "trainer=smoke",
                "hydra.run.dir=" + str(tmp_path / "run")], tmp_path)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["status"] == "failed" and "/definitely/not/here" in saved["error"]


def test_component_error_is_reported_unwrapped(synthetic_root, tmp_path):
    # EfficientAD without its teacher file raises an ADError inside hydra's instantiate
    res, _ = run_in_process(tmp_path, ["model=efficientad", f"model.teacher_weights={tmp_path / 'no_pdn.pth'}",
                                       f"dataset.root={synthetic_root}", *FAST])
    assert res.status == "failed"
    assert "InstantiationException" not in res.error and "no_pdn.pth" in res.error


def _ok_results(run_dir):
    from ad.io import write_json
    from ad.rundir.records import RunRecord

    write_json(run_dir / "results.json", RunRecord(status="ok").to_dict())


def test_load_run_rebuilds_efficientad_without_its_teacher_file(tmp_path):
    """The fitted teacher is in model.pt: predicting must not need the teacher file used for training."""
    from ad.rundir.modelfile import save_model_file
    from ad.models.distillation.efficientad import EfficientAD
    from ad.predict import load_run

    torch.manual_seed(0)
    model = EfficientAD(teacher_weights="random", image_size=64, out_channels=16, seed=3).eval()
    with torch.no_grad():  # move every buffer away from its init so a wrong rebuild shows
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.teacher_mean.fill_(0.1)
    cfg = {"_target_": "ad.models.distillation.efficientad.EfficientAD", "teacher_weights": str(tmp_path / "gone" / "pdn_s.pth"),
           "image_size": 64, "out_channels": 384}
    save_model_file(tmp_path / "model.pt", model, cfg, {"model_name": "efficientad"})
    _ok_results(tmp_path)
    loaded, meta = load_run(tmp_path)
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(loaded.predict(x).scores, model.predict(x).scores)


@pytest.mark.parametrize("target", ["ad.models.memory.padim.Padim", "ad.models.padim.Padim"])
def test_load_run_reads_model_files_with_unfolded_batchnorms(tmp_path, target):
    """model.pt written before BN folding existed (its backbone config has no fold_batchnorm key), and before
    the models moved into family packages (its `_target_` names the old module)."""
    from ad.backbones import BackboneConfig
    from ad.rundir.modelfile import save_model_file
    from ad.models.memory.padim import Padim
    from ad.predict import load_run

    torch.manual_seed(0)
    model = Padim(backbone=BackboneConfig(name="resnet18", pretrained=False, fold_batchnorm=False), layers=(1, 2),
                  n_features=20).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a wrong rebuild would change the features
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
    x = torch.rand(6, 3, 64, 64)
    model.on_fit_start()
    model.training_step({"image": x})
    model.on_fit_end(None)
    cfg = {"_target_": target, "layers": [1, 2], "n_features": 20,
           "backbone": {"_target_": "ad.backbones.BackboneConfig", "name": "resnet18", "pretrained": False}}
    save_model_file(tmp_path / "model.pt", model, cfg, {"model_name": "padim"})
    _ok_results(tmp_path)
    loaded, _ = load_run(tmp_path)
    assert loaded.feature_extractor.folded_batchnorms == 0
    assert torch.allclose(loaded.predict(x[:2]).scores, model.predict(x[:2]).scores)


def test_checkpoint_identity_from_before_the_family_layout_still_matches(tmp_path):
    """A checkpoint whose identity names a model by its pre-family module resumes; another model still refuses."""
    from ad.engine.trainer import check_identity
    from ad.errors import ConfigError

    current = {"model._target_": "ad.models.memory.padim.Padim", "seed": 0}
    check_identity(tmp_path / "last.ckpt", {"model._target_": "ad.models.padim.Padim", "seed": 0}, current)
    with pytest.raises(ConfigError, match="different experiment"):
        check_identity(tmp_path / "last.ckpt", {"model._target_": "ad.models.patchcore.PatchCore", "seed": 0}, current)
