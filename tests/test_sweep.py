"""Sweeps: launcher/sweeper configs compose, threads are divided between parallel jobs, and the acceptance test —
a real `python -m ad.train -m` sweep with the joblib launcher, one broken job, then the aggregator over it."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from ad import aggregate as agg
from ad.config import MAX_PARAMS_SUFFIX, _params_suffix, available_cpus, compose, threads_per_job
from ad.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture()
def hydra_cfg():
    """Compose with Hydra's own node set as the current HydraConfig, so `${hydra:...}` values resolve as in a job."""
    from hydra.core.hydra_config import HydraConfig

    def _compose(overrides):
        cfg = compose(overrides)
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    HydraConfig.instance().cfg = None


def test_threads_per_job_divides_cores():
    assert threads_per_job(2, cpus=8) == 4
    assert threads_per_job(3, cpus=8) == 2
    assert threads_per_job(1, cpus=8) == 8
    assert threads_per_job(16, cpus=8) == 1  # more jobs than cores: never 0 threads
    assert threads_per_job(-1, cpus=8) == 1  # joblib: one job per core
    assert threads_per_job(-2, cpus=8) == 1  # all cores but one -> 7 jobs
    assert threads_per_job(-5, cpus=8) == 2  # 4 jobs
    assert threads_per_job(None, cpus=6) == 6
    assert threads_per_job(2) == max(available_cpus() // 2, 1)
    with pytest.raises(ConfigError, match="n_jobs=0"):
        threads_per_job(0, cpus=8)
    with pytest.raises(ConfigError, match="hydra.launcher.n_jobs"):
        threads_per_job("many", cpus=8)


def test_job_dir_params_stay_short_and_distinct():
    assert _params_suffix("") == ""
    assert _params_suffix("model.k=3,dataset.root=/a/b") == "_model.k-3_dataset.root--a-b"
    assert _params_suffix(["model.layers=[2,3]", "model.k=-1"]) == "_model.layers-2-3_model.k--1"
    assert _params_suffix("model.layers=[2,3],seed=1") == "_model.layers-2-3_seed-1"  # override_dirname form
    fixed = ",".join(f"dataset.option_{i}={i * 1000}" for i in range(12))
    a, b = _params_suffix(fixed + ",seed=1"), _params_suffix(fixed + ",seed=2")
    assert len(a) <= MAX_PARAMS_SUFFIX and len(b) <= MAX_PARAMS_SUFFIX and a != b
    assert a.startswith("_dataset.option_0-0_") and a == _params_suffix(fixed + ",seed=1")  # stable
    assert a.rsplit("_", 1)[0].endswith("-" + str(a.count("_dataset.option_") - 1) + "000")  # cut at a whole item
    for name in (a, _params_suffix("x=" + "/y" * 200), _params_suffix("m.l=[1,2],n='a b'")):
        assert not set(name) & set("/=,[] '\""), name


def _multirun_yaml(sweep_dir: Path, task: list, sweeper_params: dict) -> Path:
    from omegaconf import OmegaConf

    sweep_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": task}, "sweeper": {"params": sweeper_params}},
                                     "seed": 0}), sweep_dir / "multirun.yaml")
    return sweep_dir


def test_job_dir_names_only_what_varies_across_the_sweep(tmp_path):
    from ad.config import job_params_suffix, swept_keys

    sweep = _multirun_yaml(tmp_path / "sw", ["model=patchcore,padim", "trainer.max_epochs=5", "seed=range(0,3)",
                                              "model.coreset_ratio=0.1", "+sweep=synthetic"],
                           {"category": "syn_tiles,syn_weave", "dataset.image_size": "128"})
    assert swept_keys(sweep) == {"model", "seed", "category"}
    job = ["model=padim", "trainer.max_epochs=5", "seed=2", "model.coreset_ratio=0.1", "+sweep=synthetic",
           "category=syn_weave", "dataset.image_size=128"]
    assert job_params_suffix(job, sweep) == "_seed-2"
    # without the sweep's multirun.yaml (composed outside a sweep, another sweeper) every parameter is named
    assert swept_keys(tmp_path / "none") is None
    assert job_params_suffix(job, tmp_path / "none") == "_dataset.image_size-128_model.coreset_ratio-0.1_seed-2_trainer.max_epochs-5"
    assert job_params_suffix(job) == job_params_suffix(job, tmp_path / "none")


def test_ad_root_anchors_outputs_and_multirun(hydra_cfg, monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    monkeypatch.delenv("AD_ROOT", raising=False)
    cfg = hydra_cfg([])
    assert OmegaConf.select(cfg, "hydra.run.dir").startswith("outputs/patchcore/synthetic/")
    assert OmegaConf.select(cfg, "hydra.sweep.dir").startswith("multirun/")
    monkeypatch.setenv("AD_ROOT", str(tmp_path))
    cfg = hydra_cfg([])
    assert OmegaConf.select(cfg, "hydra.run.dir").startswith(f"{tmp_path}/outputs/patchcore/synthetic/")
    assert OmegaConf.select(cfg, "hydra.sweep.dir").startswith(f"{tmp_path}/multirun/")
    for key in ("data_dir", "backbone_dir", "cache_dir"):  # everything else already follows paths.root_dir
        assert OmegaConf.select(cfg, f"paths.{key}").startswith(str(tmp_path)), key


def test_joblib_launcher_config(hydra_cfg):
    cfg = hydra_cfg(["launcher=joblib"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 2
    assert cfg.trainer.num_threads == threads_per_job(2)
    cfg = hydra_cfg(["launcher=joblib", "hydra.launcher.n_jobs=1"])
    assert cfg.trainer.num_threads == available_cpus()
    cfg = hydra_cfg(["launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.num_threads=3"])
    assert cfg.trainer.num_threads == 3  # an explicit choice wins
    # the basic launcher leaves torch's default
    assert hydra_cfg([]).trainer.num_threads is None


@pytest.mark.skipif(not _has("hydra_plugins.hydra_submitit_launcher"),
                    reason='hydra-submitit-launcher not installed (pip install -e ".[slurm]")')
def test_slurm_launcher_config(hydra_cfg):
    cfg = hydra_cfg(["launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.cpus_per_task=6"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.mem_gb, launcher.timeout_min) == ("gpu", 1, 32, 240)
    assert cfg.trainer.num_threads == 6  # the job owns its allocated cores
    assert str(launcher.submitit_folder).endswith("/.submitit/%j")


@pytest.mark.skipif(not _has("hydra_plugins.hydra_optuna_sweeper"),
                    reason='hydra-optuna-sweeper not installed (pip install -e ".[optuna]")')
def test_optuna_search_config(hydra_cfg):
    cfg = hydra_cfg(["+hparams_search=patchcore_optuna", "seed=7", "category=bottle"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize"  # the runner returns the validation objective (higher = better)
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 7
    assert set(sweeper.params) == {"model.coreset_ratio", "model.layers", "backbone"}
    assert cfg.hydra.runtime.choices.model == "patchcore"
    assert sweeper.study_name == "patchcore_bottle"
    assert cfg.hydra.mode.name == "MULTIRUN"


def _run(args, env, timeout=540):
    return subprocess.run([sys.executable, "-m", "ad.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_real_sweep_with_joblib_and_aggregate(tmp_path):
    """Acceptance: 2 synthetic categories × 2 fast models in parallel (joblib), one job with a bad dataset root
    recorded as failed, then the aggregator's table/CSV/plots over both sweep dirs."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               AD_ROOT=str(tmp_path), CI="1", HYDRA_FULL_ERROR="0")
    multirun = tmp_path / "multirun"
    # smoke trainer on a tiny generated dataset: every test image kept (AUROC needs both classes), 3 val normals
    tiny = ["trainer=smoke", "trainer.limit_train=null", "trainer.limit_val=null", "trainer.limit_test=null",
            "backbone.pretrained=false", "dataset.num_train=12", "dataset.num_test_good=4",
            "dataset.num_test_defect=2", "dataset.generated_size=64", "dataset.val_fraction=0.25"]
    good = _run(["-m", "model=patchcore,padim", "category=syn_disc,syn_tiles", "launcher=joblib",
                 "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={multirun / 'good'}", *tiny], env)
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    bad_root = tmp_path / "no_such_mvtec"
    # a second sweep dir beside it (the basic launcher: no worker pool to start for one job)
    broken = _run(["-m", "model=patchcore", "category=bottle", f"dataset.root={bad_root}",
                   f"hydra.sweep.dir={multirun / 'broken'}", "trainer=smoke", "backbone.pretrained=false"], env)
    assert broken.returncode != 0  # a sweep with a failed job ends non-zero, after running every job

    # every job left a results.json; the good ones are ok and logged to TensorBoard
    results = {}
    for p in sorted((multirun / "good").glob("*/results.json")):
        r = json.loads(p.read_text())
        results[(r["run"]["model"], r["run"]["category"])] = (p.parent, r)
    assert set(results) == {(m, c) for m in ("patchcore", "padim") for c in ("syn_disc", "syn_tiles")}
    # job folders name what varies (model, category); the constant `tiny` overrides stay out of the names
    assert sorted(job.name.split("_", 1)[1] for job, _ in results.values()) == sorted(
        f"{m}_synthetic_{c}" for m in ("patchcore", "padim") for c in ("syn_disc", "syn_tiles"))
    assert f"ad-aggregate {multirun / 'good'}" in good.stdout and "scripts/aggregate_results.py" not in good.stdout
    for (model, cat), (job, r) in results.items():
        assert r["status"] == "ok" and r["error"] is None and r["run"]["dataset"] == "synthetic", (model, cat, r["error"])
        assert 0.0 <= r["image"]["auroc"] <= 1.0 and 0.0 <= r["pixel"]["aupro"] <= 1.0
    # `tensorboard --logdir <sweep dir>/tb`: one run per job, named by what it is (the parameters every job
    # shares, trainer=smoke etc., left out; no job number, no trailing /tb), each with an HPARAMS entry
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(multirun / "good" / "tb"))
    mux.Reload()
    assert set(mux.Runs()) == {f"{m}/synthetic/{c}" for m in ("patchcore", "padim") for c in ("syn_disc", "syn_tiles")}
    assert not any((job / "tb").exists() for job, _ in results.values())
    for run in mux.Runs():
        assert mux.GetAccumulator(run).PluginTagToContent("hparams"), f"no hparams for {run}"
    failed = list((multirun / "broken").glob("*/results.json"))
    assert len(failed) == 1, broken.stdout[-2000:] + broken.stderr[-2000:]
    fr = json.loads(failed[0].read_text())
    assert fr["status"] == "failed" and str(bad_root) in fr["error"] and "\n" not in fr["error"]

    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "ad.aggregate", str(multirun), "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    md = (out / "results.md").read_text()
    assert md.strip() in proc.stdout
    from tests.test_aggregate import md_cells

    by = md_cells(md)
    assert list(by) == [("mvtec", "bottle"), ("synthetic", "mean"), ("synthetic", "syn_disc"), ("synthetic", "syn_tiles"),
                        ("all", "mean")]
    assert set(by[("synthetic", "mean")]) == {f"{m} · {lbl}" for m in ("padim", "patchcore")
                                               for lbl in ("image AUROC", "pixel AUROC", "pixel AUPRO")}
    assert by[("mvtec", "bottle")]["patchcore · image AUROC"] == "failed"
    assert "padim · image AUROC" not in by[("mvtec", "bottle")]  # padim never ran on mvtec: no row
    for (model, cat), (_, r) in results.items():
        text = by[("synthetic", cat)][f"{model} · image AUROC"]  # the value and its bootstrap interval
        assert text.split(" [")[0] == f"{100 * r['image']['auroc']:.1f}" and " [" in text, text
    failed_section = md.split("## Failed or missing jobs (1)", 1)[1]
    assert failed[0].parent.name in failed_section and "failed" in failed_section

    with open(out / "results.csv", newline="") as f:
        csv_rows = {(r["dataset"], r["category"]): r for r in csv.DictReader(f)}
    assert list(csv_rows) == [("mvtec", "bottle"), ("mvtec", "mean"), ("synthetic", "syn_disc"),
                              ("synthetic", "syn_tiles"), ("synthetic", "mean"), ("all", "mean")]
    for model in ("patchcore", "padim"):
        for metric in ("image.auroc", "pixel.auroc", "pixel.aupro"):
            want = statistics.mean(agg._dotted(results[(model, c)][1], metric) for c in ("syn_disc", "syn_tiles"))
            for row in (("synthetic", "mean"), ("all", "mean")):  # the failed bottle job never enters a mean
                assert float(csv_rows[row][f"{model} | {metric} | mean"]) == pytest.approx(want, abs=1e-12)
    assert csv_rows[("all", "mean")]["patchcore | image.auroc | n_failed"] == "1"
    for name in ("bars_synthetic_image_auroc.png", "bars_synthetic_pixel_aupro.png", "heatmap_image_auroc.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    assert "\\begin{tabular}" in (out / "results.tex").read_text()


def test_a_killed_worker_does_not_abort_the_sweep(tmp_path):
    """One job's worker is SIGKILLed (as by the OOM killer): its siblings finish, it is recorded as failed with
    the reason, the summary lists it and the sweep exits non-zero."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               AD_ROOT=str(tmp_path), CI="1")
    sweep = tmp_path / "multirun" / "kill"
    out = _run(["-m", "model=ae", "model.image_size=32", "seed=0,1,2", "launcher=joblib", "hydra.launcher.n_jobs=2",
                "trainer=smoke", "dataset.num_train=8", "dataset.num_test_good=2", "dataset.num_test_defect=1",
                "dataset.generated_size=64", "dataset.val_fraction=0.25", "trainer.limit_test=null",
                "+trainer.callbacks=[{_target_:tests.fakes.KillOnSeed,seed:${seed},kill:1}]",
                f"hydra.sweep.dir={sweep}"], env)
    assert out.returncode != 0
    status = {}
    for p in sweep.glob("*/results.json"):
        r = json.loads(p.read_text())
        status[r["run"]["seed"] if r["run"]["seed"] is not None else p.parent.name] = (r["status"], r["error"])
    assert status[0][0] == "ok" and status[2][0] == "ok", status
    assert status[1][0] == "failed" and "worker process died" in status[1][1], status
    assert "2/3 jobs ok" in out.stdout and "worker process died" in out.stdout
    # the swept seed names the job folders; the constant overrides do not
    assert sorted(p.name for p in sweep.glob("*_ae_*")) == [f"{i}_ae_synthetic_syn_disc_seed-{i}" for i in range(3)]
