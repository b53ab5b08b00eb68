"""Sweeps on a real SLURM cluster (one node, started by the `slurm_cluster` fixture): every job runs and is
recorded with its SLURM id and log, a failing task loses nothing else and is resumed alone, a job requeued by
`scontrol requeue` or by its time limit resumes from its checkpoint and ends exactly like an uninterrupted run,
a GPU request on a CPU-only cluster is refused before anything is submitted.

Run with `pytest -m slurm -p no:xdist` as root with slurm-wlm and munge installed (see docs/cluster.md)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.layouts import _mvtec_like

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
SMALL = ["trainer=smoke", "trainer.limit_train=null", "trainer.limit_val=null", "trainer.limit_test=null",
         "backbone.pretrained=false", "dataset.image_size=64", "dataset.val_fraction=0.25"]
ON_SLURM = ["launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.mem_gb=1"]
# A small trained model with many short epochs, checkpointed every epoch: long enough (~2 min on an idle
# 2-core machine) that a time limit lowered after the first checkpoint falls mid-training even though
# slurmctld enforces limits only every ~30 s (at 400 epochs an idle machine finished first).
TRAINED = ["model=ae", "model.image_size=64", "model.widths=[8,16,32]", "model.latent_dim=16", "trainer.max_epochs=1200",
           "trainer.max_steps=null", "trainer.batch_size=4", "trainer.early_stopping.enabled=false", "category=syn_disc",
           "backbone.pretrained=false", "dataset.num_train=12", "dataset.num_test_good=4", "dataset.num_test_defect=2",
           "dataset.generated_size=64", "dataset.image_size=64", "dataset.val_fraction=0.25"]


@pytest.fixture(autouse=True)
def _needs_submitit():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def _env(tmp_path: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                AD_ROOT=str(tmp_path), CI="1", HYDRA_FULL_ERROR="0")


def _train(args, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ad.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _start(args, env, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "ad.train", *args], cwd=REPO, env=env, stdout=f,
                                stderr=subprocess.STDOUT, text=True)


def _records(sweep: Path) -> dict:
    out = {}
    for p in sorted(sweep.glob("*/results.json")):
        r = json.loads(p.read_text())
        out[(r["run"]["model"], r["run"]["category"])] = (p, r)
    return out


def _queue(cluster) -> list:
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i"], capture_output=True, text=True,
                         env=dict(os.environ, **cluster.env), check=True).stdout
    return out.split()


def test_sweep_records_every_job_and_resumes_only_the_failed_ones(slurm_cluster, tmp_path):
    """2 models × 3 categories, one category's data missing: 4 jobs ok, 2 failed with their one-line reason,
    exit status and summary say so; records carry SLURM ids, logs, threads = cpus_per_task; the aggregator sees
    all six; the same command with skip_finished=true submits only the two failed jobs."""
    env = _env(tmp_path)
    root = tmp_path / "mvtec"
    for i, cat in enumerate(("bottle", "cable")):
        _mvtec_like(root, "mvtec", cat, 12, 4, {"crack": 2, "hole": 2}, False, seed=i)
    sweep = tmp_path / "sweep"
    args = ["-m", "model=padim,dfm", "dataset=mvtec", f"dataset.root={root}", "dataset.category=bottle,cable,capsule",
            *SMALL, *ON_SLURM, "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}"]
    first = _train([*args, "hydra.launcher.cpus_per_task=1"], env)
    out = first.stdout + first.stderr
    assert first.returncode == 1, out[-4000:]  # a failed job makes the sweep's exit status non-zero
    # no wall of sacct warnings on a cluster without accounting (one note that squeue is used instead)
    assert "Bypassing sacct" not in out and out.count("sacct") <= 1, out[-4000:]
    assert "sweep " + str(sweep) + ": 4/6 jobs ok" in out, out[-3000:]

    records = _records(sweep)
    assert set(records) == {(m, c) for m in ("padim", "dfm") for c in ("bottle", "cable", "capsule")}
    ids = set()
    for (model, cat), (path, r) in records.items():
        cluster = r["cluster"]
        assert re.fullmatch(r"\d+_\d+", cluster["job_id"]), cluster
        ids.add(cluster["job_id"])
        assert cluster["node"] == slurm_cluster.node and cluster["restarts"] == 0
        assert cluster["cpus_per_task"] == 1 and cluster["torch_threads"] == 1  # trainer.num_threads follows it
        log = Path(cluster["stdout"])
        assert log.is_file() and log.is_relative_to(sweep / ".submitit") and cluster["job_id"] in log.name
        if cat == "capsule":
            assert r["status"] == "failed" and "capsule" in r["error"] and "\n" not in r["error"], r["error"]
            assert f"  failed   {path.parent.name}: {r['error']}" in out  # the summary names it, with why
            assert cluster["job_id"] in out and str(log) in out  # ... and where its SLURM log is
        else:
            assert r["status"] == "ok", r["error"]
            assert 0.0 <= r["image"]["auroc"] <= 1.0
    assert len(ids) == 6  # one array task each

    report = tmp_path / "report"
    agg = subprocess.run([sys.executable, "-m", "ad.aggregate", str(sweep), "--out", str(report)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert agg.returncode == 0, agg.stderr
    md = (report / "results.md").read_text()
    assert "## Failed or missing jobs (2)" in md
    import ad.aggregate

    table = ad.aggregate.load(sweep)  # the aggregator's rows, as a notebook sees them
    for cat in ("bottle", "cable"):
        for model in ("padim", "dfm"):
            row = table[(table.model == model) & (table.category == cat)]
            assert len(row) == 1 and row["image.auroc"].iloc[0] == pytest.approx(records[(model, cat)][1]["image"]["auroc"])

    # resume: the missing data arrives; only the two failed jobs are submitted again (with 2 CPUs this time)
    _mvtec_like(root, "mvtec", "capsule", 12, 4, {"crack": 2, "hole": 2}, False, seed=2)
    before = {k: (p.stat().st_mtime_ns, r["cluster"]["job_id"]) for k, (p, r) in records.items()}
    second = _train([*args, "skip_finished=true", "hydra.launcher.cpus_per_task=2"], env)
    out2 = second.stdout + second.stderr
    assert second.returncode == 0, out2[-4000:]
    assert f"sweep {sweep}: 6/6 jobs ok" in out2 and out2.count("skip_finished=true), not submitted") == 4, out2[-3000:]
    again = _records(sweep)
    for key, (path, r) in again.items():
        assert r["status"] == "ok", (key, r["error"])
        if key[1] == "capsule":
            assert r["cluster"]["job_id"] not in ids and r["cluster"]["torch_threads"] == 2 == r["cluster"]["cpus_per_task"]
        else:
            assert (path.stat().st_mtime_ns, r["cluster"]["job_id"]) == before[key]  # not run again


def test_gpu_request_on_a_cluster_without_gpus_is_refused_before_submitting(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    queued = _queue(slurm_cluster)
    proc = _train(["-m", "model=padim", "category=syn_disc", "launcher=slurm", "hydra.launcher.gpus_per_node=1",
                   f"hydra.sweep.dir={sweep}", *SMALL], _env(tmp_path), timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = [ln for ln in out.splitlines() if "gpus_per_node=1" in ln]
    assert len(lines) == 1 and "has no GPUs" in lines[0] and "Traceback" not in out, out[-3000:]
    assert sorted(_queue(slurm_cluster)) == sorted(queued) and not (sweep / ".submitit").exists()  # nothing submitted


def _job_id(sweep: Path) -> str:
    names = [p.name for p in (sweep / ".submitit").glob("*") if re.fullmatch(r"\d+(_\d+)?", p.name)]  # 1 job: no array
    return names[0] if names else ""


def _same_result(run: Path, reference: Path) -> None:
    """results.json metrics and the fitted model equal the uninterrupted run's, bit for bit."""
    a, b = (json.loads((d / "results.json").read_text()) for d in (run, reference))
    for key in ("counts", "image", "pixel", "per_defect", "mad", "thresholds", "validation"):
        assert a[key] == b[key], key
    ta, tb = dict(a["training"]), dict(b["training"])
    assert ta.pop("resumed_from_epoch") is not None and tb.pop("resumed_from_epoch") is None
    assert ta == tb
    ma, mb = (torch.load(d / "model.pt", map_location="cpu", weights_only=False) for d in (run, reference))
    sa, sb = ma.pop("state_dict"), mb.pop("state_dict")
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    ca, cb = ma.pop("config"), mb.pop("config")
    assert ma == mb
    ca["paths"].pop("output_dir"), cb["paths"].pop("output_dir")  # the run dirs differ, nothing else
    assert ca == cb


def _scontrol(cluster, *args: str) -> str:
    out = subprocess.run(["scontrol", *args], capture_output=True, text=True, env=dict(os.environ, **cluster.env))
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_requeued_and_timed_out_jobs_resume_to_the_uninterrupted_result(slurm_cluster, tmp_path):
    """One job is requeued mid-training with `scontrol requeue`; another outlives its time limit (lowered to
    1 minute once it has checkpointed, so that the limit falls mid-training however fast the machine is): SLURM
    signals it, submitit requeues it (max_num_timeout). Both resume from their last checkpoint and end with the
    results and model of the same training run without interruption (run beside them, outside SLURM)."""
    from ad.data.synthetic import generate_synthetic

    env = _env(tmp_path)
    generate_synthetic(tmp_path / "datasets" / "synthetic", categories=["syn_disc"], num_train=12, num_test_good=4,
                       num_test_defect=2, size=64, seed=0)  # once, before three runs read it
    common = ["-m", *TRAINED, *ON_SLURM, "hydra.launcher.cpus_per_task=1"]
    preempt, timeout, reference = tmp_path / "preempt", tmp_path / "timeout", tmp_path / "reference"
    procs = {
        "preempt": _start([*common, "hydra.launcher.timeout_min=60", f"hydra.sweep.dir={preempt}"], env,
                          tmp_path / "preempt.log"),
        # SLURM signals the job 45 s before its limit; submitit requeues it and counts a timeout (it calls a
        # signal a timeout, not a preemption, once the job has used its guaranteed time: max(0, limit - 10 min))
        "timeout": _start([*common, "hydra.launcher.timeout_min=10", "hydra.launcher.signal_delay_s=45",
                           "hydra.launcher.max_num_timeout=2", f"hydra.sweep.dir={timeout}"], env,
                          tmp_path / "timeout.log"),
        "reference": _start([*TRAINED, "trainer.num_threads=1", f"hydra.run.dir={reference}"], env,
                            tmp_path / "reference.log"),
    }
    deadline = time.monotonic() + 1500  # generous: a loaded machine trains 400 epochs slowly

    def wait_for(ok, what: str) -> None:
        while not ok():
            for name, p in procs.items():
                assert p.poll() is None, f"{name} ended before {what}: " + (tmp_path / f"{name}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"no {what} within the time allowed"
            time.sleep(0.2)

    try:
        wait_for(lambda: list(preempt.glob("*/checkpoints/last.ckpt")), "checkpoint of the preemption job")
        _scontrol(slurm_cluster, "requeue", _job_id(preempt))
        wait_for(lambda: list(timeout.glob("*/checkpoints/last.ckpt")), "checkpoint of the time-limit job")
        job = _job_id(timeout)
        _scontrol(slurm_cluster, "update", f"JobId={job}", "TimeLimit=1")  # the limit now falls mid-training
        wait_for(lambda: "Restarts=1" in _scontrol(slurm_cluster, "show", "job", "-o", job), "time-limit requeue")
        _scontrol(slurm_cluster, "update", f"JobId={job}", "TimeLimit=60")  # the requeued run may finish
        for name, p in procs.items():
            p.wait(timeout=max(10.0, deadline - time.monotonic()))
            assert p.returncode == 0, (tmp_path / f"{name}.log").read_text()[-4000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    for sweep, cause in ((preempt, "DUE TO JOB REQUEUE"), (timeout, "this job is timed-out")):
        (path, r), = _records(sweep).values()
        assert r["status"] == "ok", r["error"]
        assert r["cluster"]["restarts"] == 1 and r["training"]["resumed_from_epoch"] is not None, r
        assert cause in Path(r["cluster"]["stdout"]).read_text() + Path(r["cluster"]["stderr"]).read_text()
        _same_result(path.parent, reference)
