"""Never wrong, never lost, round two — runs, sweeps, locks, signals and one-line errors (issue 22, classes 1, 2,
6, 7, 8 and 9). Each test reproduces a case that was silently wrong, lost, stalled or a traceback before."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.test_robust_runs import STFPM
from tests.test_run import FAST, run_in_process

PADIM = ["model=padim", "backbone.pretrained=false", *FAST]
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def _copy_category(synthetic_root: Path, dest: Path, category: str = "syn_tiles") -> Path:
    shutil.copytree(synthetic_root / category, dest / category)
    return dest


def _no_traceback(caplog) -> None:
    assert "Traceback" not in caplog.text, caplog.text


# --- class 1: the data is part of the experiment's identity ------------------------------------------------
def test_resume_refuses_a_checkpoint_of_another_data_root_or_changed_files(synthetic_root, tmp_path):
    a = _copy_category(synthetic_root, tmp_path / "A")
    b = _copy_category(synthetic_root, tmp_path / "B")  # same category name, same files, another root
    first, run_dir = run_in_process(tmp_path, [*STFPM, f"dataset.root={a}"])
    assert first.status == "ok" and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert first.run.data_root == str(a.resolve()) and len(first.run.data_fingerprint) == 16
    other, _ = run_in_process(tmp_path, [*STFPM, f"dataset.root={b}"])
    assert other.status == "failed" and "belongs to a different experiment" in other.error
    assert "data.root" in other.error and "\n" not in other.error
    img = next((a / "syn_tiles" / "train" / "good").glob("*.png"))
    img.write_bytes(img.read_bytes() + b"\0")  # one training file changed in place
    changed, _ = run_in_process(tmp_path, [*STFPM, f"dataset.root={a}"])
    assert changed.status == "failed" and "data.fingerprint" in changed.error


def test_data_identity_ignores_how_the_run_runs(synthetic_root, tmp_path):
    a = _copy_category(synthetic_root, tmp_path / "A")
    first, _ = run_in_process(tmp_path, [*STFPM, f"dataset.root={a}"])
    again, _ = run_in_process(tmp_path, [*STFPM, f"dataset.root={a}/", "dataset.cache=off",
                                         "dataset.decode_threads=0", "trainer.num_threads=1"])
    assert again.status == "ok" and again.training.resumed_from_epoch == 0
    assert again.run.data_fingerprint == first.run.data_fingerprint


# --- class 2: sweeps and jobs never share a directory -------------------------------------------------------
def test_job_dir_names_differ_for_jobs_differing_only_in_keys_left_out_of_the_name():
    from ad.config import job_params_suffix

    a = job_params_suffix(["model.lr=0.1", "dataset.root=/data/a", "trainer.device=cuda:0"])
    b = job_params_suffix(["model.lr=0.1", "dataset.root=/data/b", "trainer.device=cuda:0"])
    c = job_params_suffix(["model.lr=0.1", "dataset.root=/data/a", "trainer.device=cuda:1"])
    assert len({a, b, c}) == 3 and all(s.startswith("_model.lr-0.1_h") for s in (a, b, c))
    assert "/data" not in a  # left out of the name, only hashed
    assert job_params_suffix(["model.lr=0.1", "hydra.launcher.n_jobs=2"]) == "_model.lr-0.1"


def test_a_sweep_dir_is_claimed_once_per_sweep(tmp_path, monkeypatch):
    """The resolver behind hydra.sweep.dir: in a multirun each call claims a fresh directory (two sweeps of the
    same second), outside one it only names the pattern and creates nothing."""
    from omegaconf import OmegaConf

    from ad.config import CONFIG_DIR, claim_sweep_dir

    base = str(tmp_path / "multirun" / "2026-01-01_00-00-00")
    assert claim_sweep_dir(base, "RUN") == base and not (tmp_path / "multirun").exists()
    assert claim_sweep_dir(base, "RunMode.MULTIRUN") == base and claim_sweep_dir(base, "MULTIRUN") == base + "_2"
    hydra_yaml = OmegaConf.load(Path(CONFIG_DIR) / "hydra" / "default.yaml")
    assert OmegaConf.to_container(hydra_yaml)["sweep"]["dir"].startswith("${ad_sweep_dir:${ad_under_root:multirun}/${now:")
    assert OmegaConf.to_container(hydra_yaml)["sweep"]["dir"].endswith(",${hydra.mode}}")
    # one sweep: its jobs' configs are copies of the master's and resolve to the same, cached directory
    monkeypatch.chdir(tmp_path)
    cfg = OmegaConf.create({"hydra": {"mode": "MULTIRUN", "sweep": {"dir": "${ad_sweep_dir:x,${hydra.mode}}"}}})
    first = cfg.hydra.sweep.dir
    job = OmegaConf.create(OmegaConf.to_container(cfg))
    OmegaConf.copy_cache(cfg, job)
    assert first == "x" and job.hydra.sweep.dir == first and cfg.hydra.sweep.dir == first


@pytest.mark.slow
def test_two_sweeps_started_in_the_same_second_get_their_own_dirs(synthetic_root, tmp_path):
    """Both sweeps resolve the same timestamped name (here a fixed one: the same second, for certain); each
    claims its own directory, runs its job there and its summary counts only its own job."""
    from ad.config import CONFIG_DIR

    assert "${ad_sweep_dir:" in (Path(CONFIG_DIR) / "hydra" / "default.yaml").read_text()
    base = tmp_path / "multirun" / "same-second"
    cmd = [sys.executable, "-m", "ad.train", "-m", *PADIM, "category=syn_disc", f"dataset.root={synthetic_root}",
           f"hydra.sweep.dir='${{ad_sweep_dir:{base},${{hydra.mode}}}}'", f"paths.root_dir={tmp_path}"]
    procs = [subprocess.Popen([*cmd, f"seed={s}"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=tmp_path) for s in (0, 1)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-3000:] for o in outs]
    dirs = sorted(p.name for p in base.parent.iterdir())
    assert dirs == ["same-second", "same-second_2"], dirs
    seeds = set()
    for d in dirs:
        jobs = [p.parent for p in (base.parent / d).glob("*/results.json")]
        assert len(jobs) == 1, (d, jobs)
        seeds.add(json.loads((jobs[0] / "results.json").read_text())["run"]["seed"])
    assert seeds == {0, 1}
    assert all("1/1 jobs ok" in out for out in outs), outs


# --- class 6: stale locks ---------------------------------------------------------------------------------
_HOLD = ("import sys, time\nfrom ad.io.locks import try_lock\n"
         "held = try_lock(sys.argv[1], 'decoding a test image')\nprint('locked', flush=True)\n"
         "time.sleep(float(sys.argv[2]))\nheld.release()\nprint('released', flush=True)\ntime.sleep(60)\n")


def _cache_entry_lock(dm, sample) -> Path:
    """The disk-cache lock file of `sample`'s entry. The data module's pre-training check has already decoded
    every image into the cache: this sample's entry is forgotten (memory and disk) so that the next load has to
    decode it — under the lock."""
    from ad.data._cache import clear_memory_cache

    key, prefix = dm.cache.key(sample)
    path = dm.cache.disk.path(key, prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_memory_cache()
    path.unlink(missing_ok=True)
    return path.with_name(path.name + ".lock")


def test_a_decode_cache_lock_of_a_killed_run_does_not_stall_the_next(synthetic_root, tmp_path):
    from ad.data.mvtec import MVTecAD

    dm = MVTecAD(str(synthetic_root), "syn_disc", image_size=16, cache="disk", cache_dir=str(tmp_path / "cache"))
    sample = dm.samples("test")[0]
    lock = _cache_entry_lock(dm, sample)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock), "600"], env=ENV, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # -9: the lock file stays behind, its flock goes with the process
    holder.wait()
    assert lock.exists()
    decoded = dm.cache.stats["decoded"]
    t0 = time.monotonic()
    dm.cache.load(sample)
    assert time.monotonic() - t0 < 2.0 and dm.cache.stats["decoded"] == decoded + 1


def test_a_wait_for_a_live_lock_says_what_it_waits_for(synthetic_root, tmp_path, caplog):
    from ad.data.mvtec import MVTecAD

    dm = MVTecAD(str(synthetic_root), "syn_disc", image_size=16, cache="disk", cache_dir=str(tmp_path / "cache"))
    sample = dm.samples("test")[0]
    lock = _cache_entry_lock(dm, sample)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock), "3"], env=ENV, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        decoded = dm.cache.stats["decoded"]
        with caplog.at_level(logging.INFO, logger="ad.io.locks"):
            dm.cache.load(sample)  # waits for the holder (it never writes the entry), then decodes itself
        assert dm.cache.stats["decoded"] == decoded + 1
        assert f"another process decoding {sample.path}" in caplog.text and f"pid {holder.pid}" in caplog.text
        assert str(lock) in caplog.text
    finally:
        holder.kill()
        holder.wait()


def test_a_run_dir_lock_naming_a_reused_pid_does_not_refuse_the_dir(synthetic_root, tmp_path):
    """The lock file of a dead run whose pid now belongs to another live process (here: this test's parent)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text(str(os.getppid()))
    res, _ = run_in_process(tmp_path, [*PADIM, "category=syn_disc", f"dataset.root={synthetic_root}"])
    assert res.status == "ok", res.error


# --- class 7: the record says what ran ---------------------------------------------------------------------
def test_unified_over_one_category_is_recorded_per_category(synthetic_root, tmp_path):
    from ad.aggregate.jobs import load_job

    res, run_dir = run_in_process(tmp_path, [*PADIM, "dataset=synthetic", f"dataset.root={synthetic_root}",
                                             "setting=unified", "setting.categories=[syn_disc]"])
    assert res.status == "ok" and res.run.setting == "unified"
    assert res.run.categories == ["syn_disc"] and list(res.categories) == ["syn_disc"]
    job = load_job(run_dir)
    assert job.categories() == ["syn_disc"]  # no phantom "unified" row


@pytest.mark.parametrize("value", ["fp16", "bf16", "16"])
def test_a_precision_that_would_not_run_as_named_is_refused(synthetic_root, tmp_path, value, caplog):
    res, _ = run_in_process(tmp_path, [*PADIM, "category=syn_disc", f"dataset.root={synthetic_root}",
                                       f"trainer.precision={value}"])
    assert res.status == "failed" and "trainer.precision" in res.error and "\n" not in res.error
    _no_traceback(caplog)


# --- class 8: SIGTERM ---------------------------------------------------------------------------------------
def test_sigterm_is_recorded_as_interrupted_and_keeps_the_checkpoint(synthetic_root, tmp_path):
    env = {**ENV, "AD_ROOT": str(tmp_path)}
    run_dir = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "ad.train", "model=stfpm", "category=syn_tiles",
                             f"dataset.root={synthetic_root}", "backbone.pretrained=false", *FAST,
                             "trainer.max_steps=100000", "trainer.max_epochs=null", f"hydra.run.dir={run_dir}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 540  # generous: the first epoch of a loaded CI machine
    while time.time() < deadline and not last.exists() and proc.poll() is None:
        time.sleep(0.2)  # inside training, past the first checkpoint
    assert last.exists(), "the run wrote no checkpoint in time"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["status"] == "interrupted" and "SIGTERM" in saved["error"], (saved, err)
    assert proc.returncode == 143 and "Traceback" not in err
    assert torch.load(last, weights_only=False)["step"] > 0


# --- class 9: one line, never a traceback ------------------------------------------------------------------
@pytest.mark.parametrize("override,key", [("seed=-1", "seed"), (f"seed={2**40}", "seed"),
                                          ("trainer.device=xpu", "trainer.device"),
                                          ("trainer.device=mps", "trainer.device"),
                                          ("trainer.device=cuda:7", "trainer.device")])
def test_out_of_range_values_and_unavailable_devices_are_one_line(synthetic_root, tmp_path, override, key, caplog):
    if override == "trainer.device=cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    res, _ = run_in_process(tmp_path, [*PADIM, "category=syn_disc", f"dataset.root={synthetic_root}", override])
    assert res.status == "failed" and res.error.startswith(key) and "\n" not in res.error, res.error
    _no_traceback(caplog)


@pytest.fixture(scope="module")
def finished_run(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    res, run_dir = run_in_process(tmp, [*PADIM, "category=syn_disc", f"dataset.root={synthetic_root}"])
    assert res.status == "ok"
    return run_dir


@pytest.mark.parametrize("tool", ["predict", "aggregate", "report"])
def test_out_pointing_at_an_existing_file_is_one_line(finished_run, synthetic_root, tmp_path, capsys, tool):
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    if tool == "predict":
        from ad.predict import main

        rc = main([f"run_dir={finished_run}", f"input={synthetic_root / 'syn_disc' / 'test' / 'good'}",
                   f"out={target}"])
    elif tool == "aggregate":
        from ad.aggregate.cli import main

        rc = main([str(finished_run.parent), "--out", str(target), "--no-plots", "-q"])
    else:
        from ad.report.build import main

        rc = main([str(finished_run.parent), "--out", str(target), "--bootstrap", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(target) in err and "existing file" in err, err
    assert target.read_text() == "keep me"


def test_model_file_of_another_format_version_is_one_line(finished_run, synthetic_root, tmp_path, capsys):
    from ad.predict import main

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    meta = torch.load(run_dir / "model.pt", weights_only=False)
    meta["version"] = 99
    torch.save(meta, run_dir / "model.pt")
    assert main([f"run_dir={run_dir}", f"input={synthetic_root / 'syn_disc' / 'test' / 'good'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "format version 99" in err and "model.pt" in err


@pytest.mark.parametrize("where", ["open", "final"])
def test_tensorboard_that_cannot_write_never_fails_the_run(synthetic_root, tmp_path, monkeypatch, caplog, where):
    """A read-only tb/ (simulated: root ignores permission bits) at the start or at the very end of a run."""
    import torch.utils.tensorboard as tb

    from ad.loggers.tensorboard import TensorBoardLogger

    if where == "open":
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(tmp_path / "run" / "tb"))
        monkeypatch.setattr(tb, "SummaryWriter", refuse)
    else:
        def refuse_final(self, *args, **kwargs):
            raise OSError(30, "Read-only file system")
        monkeypatch.setattr(tb.SummaryWriter, "add_hparams", refuse_final)
    assert TensorBoardLogger  # the logger under test
    res, run_dir = run_in_process(tmp_path, [*PADIM, "category=syn_disc", f"dataset.root={synthetic_root}"])
    assert res.status == "ok", res.error
    assert (run_dir / "model.pt").is_file() and "TensorBoard logging is off" in caplog.text
    _no_traceback(caplog)


def test_nan_loss_is_one_line_without_traceback(synthetic_root, tmp_path, monkeypatch, caplog):
    from ad.models.distillation.stfpm import STFPM as Model

    real = Model.training_step
    monkeypatch.setattr(Model, "training_step", lambda self, batch: real(self, batch) * float("nan"))
    res, _ = run_in_process(tmp_path, [*STFPM, f"dataset.root={synthetic_root}"])
    assert res.status == "failed" and "training loss became nan" in res.error and "\n" not in res.error
    _no_traceback(caplog)


def test_disk_full_is_one_line_without_traceback(synthetic_root, tmp_path, monkeypatch, caplog):
    import errno

    from ad.rundir import modelfile

    real = modelfile.atomic_write

    def full(path, write, binary=False):
        if Path(path).name == "model.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write, binary)

    monkeypatch.setattr(modelfile, "atomic_write", full)
    res, run_dir = run_in_process(tmp_path, [*PADIM, "category=syn_disc", f"dataset.root={synthetic_root}"])
    assert res.status == "failed" and res.error.startswith("No space left on device writing")
    assert "model.pt" in res.error and "free space" in res.error
    _no_traceback(caplog)


@pytest.mark.parametrize("value,phrase", [("/data/a,b", "a comma separates sweep values"),
                                          ("/data/bäd", "non-ASCII character(s) ä")])
def test_paths_hydra_cannot_take_unquoted_are_explained(value, phrase):
    from ad.launch.overrides import override_problem

    msg = override_problem(["trainer=smoke", f"dataset.root={value}"])
    assert phrase in msg and f"\"dataset.root='{value}'\"" in msg and "\n" not in msg
    assert override_problem(["trainer=smoke", f"dataset.root='{value}'"]) is None  # the fix it names works
    assert override_problem(["-m", "seed=1,2", "dataset.root=/data/x"]) is None  # a sweep is a sweep


def test_non_ascii_path_on_the_command_line_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ad.train", "trainer=smoke", f"dataset.root={tmp_path}/bäd"],
                          env=ENV, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "quote the value" in proc.stderr
