"""Never wrong, never lost: regression tests for the run-pipeline defects of the robustness issue.

Each test reproduces the defect as a user met it (through `ad.train.run` on the real configs or the CLI).
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_run import FAST, run_in_process

STFPM = ["model=stfpm", "category=syn_tiles", "backbone.pretrained=false", *FAST, "trainer.max_steps=2",
         "trainer.max_epochs=1"]


def _stfpm(tmp_path, synthetic_root, *extra, name="run"):
    return run_in_process(tmp_path, [*STFPM, f"dataset.root={synthetic_root}", *extra], name)


def test_resume_refuses_a_checkpoint_of_another_experiment(synthetic_root, tmp_path):
    first, run_dir = _stfpm(tmp_path, synthetic_root)
    assert first.status == "ok" and (run_dir / "checkpoints" / "last.ckpt").is_file()
    for change in ("model.lr=0.1", "trainer.max_steps=3", "category=syn_weave"):
        other, _ = _stfpm(tmp_path, synthetic_root, change)  # same run dir, different experiment
        assert other.status == "failed", change
        assert "belongs to a different experiment" in other.error and "\n" not in other.error
        key = "dataset.category" if change.startswith("category") else change.split("=")[0]
        assert key in other.error, (change, other.error)
    again, _ = _stfpm(tmp_path, synthetic_root)  # the same experiment resumes (and is finished already)
    assert again.status == "ok" and again.training.resumed_from_epoch == 0
    assert again.image == first.image


def test_how_it_runs_does_not_change_the_identity(synthetic_root, tmp_path):
    first, _ = _stfpm(tmp_path, synthetic_root)
    again, _ = _stfpm(tmp_path, synthetic_root, "trainer.progress_bar=true", "trainer.num_threads=1",
                      "evaluation.k=2.5")
    assert again.status == "ok" and again.training.resumed_from_epoch == 0


def test_truncated_checkpoint_is_one_line(synthetic_root, tmp_path):
    first, run_dir = _stfpm(tmp_path, synthetic_root)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    res, _ = _stfpm(tmp_path, synthetic_root)
    assert res.status == "failed" and "last.ckpt" in res.error and "unreadable" in res.error


@pytest.mark.parametrize("breaking", ["evaluation.k=-1", "trainer.batch_size=0"])  # before / inside the run
def test_failed_rerun_leaves_no_files_of_the_previous_run_and_predict_refuses(synthetic_root, tmp_path, breaking):
    from ad.predict import main as predict_main

    ok, run_dir = run_in_process(tmp_path, ["model=padim", "category=syn_disc", f"dataset.root={synthetic_root}",
                                            "backbone.pretrained=false", *FAST])
    assert ok.status == "ok" and (run_dir / "model.pt").is_file() and (run_dir / "predictions.csv").is_file()
    bad, _ = run_in_process(tmp_path, ["model=padim", "category=syn_disc", f"dataset.root={synthetic_root}",
                                       "backbone.pretrained=false", *FAST, breaking])
    assert bad.status == "failed"
    left = sorted(p.name for p in run_dir.iterdir())
    assert "model.pt" not in left and "predictions.csv" not in left and "tb" not in left, left
    assert json.loads((run_dir / "results.json").read_text())["status"] == "failed"
    # and even with a model.pt put back, predict refuses a run whose results.json is not ok
    (run_dir / "model.pt").write_bytes(b"x")
    assert predict_main([f"run_dir={run_dir}", f"input={synthetic_root}"]) == 2


def test_predict_does_not_rescore_its_own_outputs(synthetic_root, tmp_path):
    from ad.predict import main as predict_main

    ok, run_dir = run_in_process(tmp_path, ["model=padim", "category=syn_disc", f"dataset.root={synthetic_root}",
                                            "backbone.pretrained=false", *FAST])
    images = tmp_path / "inbox"
    images.mkdir()
    for p in sorted((synthetic_root / "syn_disc" / "test" / "good").glob("*.png"))[:3]:
        (images / p.name).write_bytes(p.read_bytes())
    out = images / "scored"
    for _ in range(2):  # the second call must not pick up the overlays the first one wrote
        assert predict_main([f"run_dir={run_dir}", f"input={images}", f"out={out}"]) == 0
        with open(out / "predictions.csv") as f:
            assert len(list(csv.DictReader(f))) == 3


@pytest.mark.parametrize("args,key", [(["batch_size=abc"], "batch_size"), (["batch_size=0"], "batch_size"),
                                      (["overlays=maybe"], "overlays"), (["device=cuda"], "device")])
def test_predict_bad_values_are_one_line(synthetic_root, tmp_path, capsys, args, key):
    from ad.predict import main as predict_main

    if key == "device":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    _, run_dir = run_in_process(tmp_path, ["model=padim", "category=syn_disc", f"dataset.root={synthetic_root}",
                                           "backbone.pretrained=false", *FAST])
    assert predict_main([f"run_dir={run_dir}", f"input={synthetic_root}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err


def test_truncated_model_file_is_one_line(synthetic_root, tmp_path, capsys):
    from ad.predict import main as predict_main

    _, run_dir = run_in_process(tmp_path, ["model=padim", "category=syn_disc", f"dataset.root={synthetic_root}",
                                           "backbone.pretrained=false", *FAST])
    data = (run_dir / "model.pt").read_bytes()
    (run_dir / "model.pt").write_bytes(data[: len(data) // 3])
    assert predict_main([f"run_dir={run_dir}", f"input={synthetic_root}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.pt" in err and "unreadable" in err


@pytest.mark.parametrize("override,key", [("seed=abc", "seed"), ("evaluation.k=-1", "evaluation.k"),
                                          ("trainer.max_epochs=0", "trainer.max_epochs"),
                                          ("trainer.batch_size=0", "trainer.batch_size"),
                                          ("trainer.max_steps=0", "trainer.max_steps")])
def test_bad_values_leave_a_failed_record_naming_the_key(synthetic_root, tmp_path, override, key):
    res, run_dir = run_in_process(tmp_path, ["model=padim", f"dataset.root={synthetic_root}",
                                             "backbone.pretrained=false", *FAST, override])
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["status"] == "failed" and key in saved["error"] and "\n" not in saved["error"]


def test_no_cuda_is_one_line(synthetic_root, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    res, _ = run_in_process(tmp_path, ["model=padim", f"dataset.root={synthetic_root}", "backbone.pretrained=false",
                                       *FAST, "trainer.device=cuda"])
    assert res.status == "failed" and "trainer.device" in res.error and "no CUDA" in res.error


def test_outputs_are_world_readable_and_leave_no_temporaries(synthetic_root, tmp_path):
    _, run_dir = run_in_process(tmp_path, ["model=padim", f"dataset.root={synthetic_root}", "backbone.pretrained=false",
                                           *FAST])
    for name in ("results.json", "predictions.csv", "history.csv", "model.pt"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o644 & ~_umask(), name
    assert not list(run_dir.rglob("*.tmp"))


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


def test_rerun_does_not_accumulate_tensorboard_event_files(synthetic_root, tmp_path):
    counts = []
    for _ in range(2):
        _, run_dir = run_in_process(tmp_path, ["model=padim", f"dataset.root={synthetic_root}",
                                               "backbone.pretrained=false", *FAST])
        counts.append(len(list((run_dir / "tb").rglob("events.out.tfevents.*"))))
    assert counts[0] >= 1 and counts[1] == counts[0]


def test_disk_full_keeps_the_failure_record_and_cleans_temporaries(synthetic_root, tmp_path, monkeypatch):
    """A full disk while writing model.pt: the error says so, no .tmp is left, results.json is written."""
    import errno

    from ad.rundir import modelfile

    real = modelfile.atomic_write

    def full(path, write, binary=False):
        if Path(path).name == "model.pt":
            def failing(tmp):
                Path(tmp).write_bytes(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, failing, binary=True)
        return real(path, write, binary)

    monkeypatch.setattr(modelfile, "atomic_write", full)
    res, run_dir = run_in_process(tmp_path, ["model=padim", f"dataset.root={synthetic_root}",
                                             "backbone.pretrained=false", *FAST])
    assert res.status == "failed" and "No space left on device" in res.error
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "model.pt").exists()
    assert json.loads((run_dir / "results.json").read_text())["status"] == "failed"


def test_two_runs_in_the_same_second_get_their_own_dirs(tmp_path):
    from ad.config import compose

    a = compose(["trainer=smoke"]).hydra.run.dir
    b = compose(["trainer=smoke"]).hydra.run.dir
    assert a != b


def test_a_live_run_owns_its_dir(synthetic_root, tmp_path):
    from ad.engine.guard import run_dir_lock, RunDirBusy

    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".lock").write_text(str(holder.pid))
        res, _ = run_in_process(tmp_path, ["model=padim", f"dataset.root={synthetic_root}",
                                           "backbone.pretrained=false", *FAST], "busy")
        assert res.status == "failed" and "in use by a live run" in res.error
        assert not (run_dir / "results.json").exists()  # nothing written into the other run's dir
    finally:
        holder.kill()
        holder.wait()
    with run_dir_lock(run_dir):  # a stale lock (dead pid) is taken over
        assert (run_dir / ".lock").read_text() == str(os.getpid())
    assert not (run_dir / ".lock").exists()


def test_ctrl_c_records_interrupted(synthetic_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AD_ROOT": str(tmp_path)}
    run_dir = tmp_path / "int"
    proc = subprocess.Popen([sys.executable, "-m", "ad.train", "model=stfpm", "category=syn_tiles",
                             f"dataset.root={synthetic_root}", "backbone.pretrained=false", *FAST,
                             "trainer.max_steps=100000", "trainer.max_epochs=null", f"hydra.run.dir={run_dir}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    # results.json says "running" as soon as the run starts; give it a moment to be inside training
    while time.time() < deadline and not (run_dir / "results.json").exists():
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["status"] == "interrupted" and proc.returncode != 0
    assert "Traceback" not in err
