"""Scale-out on existing engines: a real sweep through submitit's local executor (the code path SLURM uses),
aggregated; parallel jobs on a multi-GPU machine pinned to distinct GPUs (assignment logic, no GPU needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ad.config import gpu_slot, job_device

REPO = Path(__file__).resolve().parent.parent

TINY = ["trainer=smoke", "trainer.limit_train=null", "trainer.limit_val=null", "trainer.limit_test=null",
        "backbone.pretrained=false", "dataset.num_train=12", "dataset.num_test_good=4", "dataset.num_test_defect=2",
        "dataset.generated_size=64", "dataset.val_fraction=0.25", "trainer.num_threads=1"]


# Slow (~30 s of job start-up): the submitit launcher is run for real, on a one-node SLURM cluster, by
# tests/test_slurm.py in CI's SLURM step.
@pytest.mark.slow
def test_submitit_local_sweep_and_aggregate(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               AD_ROOT=str(tmp_path), CI="1", HYDRA_FULL_ERROR="0")
    sweep = tmp_path / "multirun" / "submitit"
    # generate the synthetic category once, so the two jobs (started together) do not both write it
    from ad.data.synthetic import generate_synthetic

    generate_synthetic(tmp_path / "datasets" / "synthetic", categories=["syn_disc"], num_train=12, num_test_good=4,
                       num_test_defect=2, size=64, seed=0)
    proc = subprocess.run([sys.executable, "-m", "ad.train", "-m", "model=padim,dfm", "category=syn_disc",
                           "launcher=submitit_local", "hydra.launcher.timeout_min=5", f"hydra.sweep.dir={sweep}", *TINY],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = sorted(sweep.glob("*/results.json"))
    assert [p.parent.name.split("_backbone")[0] for p in jobs] == ["0_padim_synthetic_syn_disc",
                                                                    "1_dfm_synthetic_syn_disc"]
    for p in jobs:
        r = json.loads(p.read_text())
        assert r["status"] == "ok", r["error"]
        assert 0.0 <= r["image"]["auroc"] <= 1.0 and r["counts"]["test"] == 4 + 4 * 2
    # submitit ran them: its per-job logs and pickles sit in the sweep dir
    logs = list((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2, list((sweep / ".submitit").rglob("*"))
    # both jobs read the category through one disk cache: one entry per image file
    n_images = len(list((tmp_path / "datasets" / "synthetic" / "syn_disc").rglob("t*/*/*.png")))
    assert len(list((tmp_path / ".cache" / "decoded").rglob("*.bin"))) == n_images

    out = tmp_path / "report"
    agg = subprocess.run([sys.executable, "-m", "ad.aggregate", str(sweep), "--out", str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert agg.returncode == 0, agg.stderr
    assert (out / "results.md").is_file()
    import ad.aggregate

    table = ad.aggregate.load(sweep)  # the aggregator's rows, as a notebook sees them
    for model, p in zip(("padim", "dfm"), jobs):
        r = json.loads(p.read_text())
        row = table[(table.model == model) & (table.category == "syn_disc")]
        assert len(row) == 1 and row["image.auroc"].iloc[0] == pytest.approx(r["image"]["auroc"])


def test_job_device_is_auto_without_several_gpus(tmp_path):
    assert job_device(str(tmp_path), 3, n_gpus=0) == "auto"
    assert job_device(str(tmp_path), 3, n_gpus=1) == "auto"
    assert not (tmp_path / ".gpu_slots").exists()  # nothing written when there is nothing to assign


_CLAIM = textwrap.dedent("""
    import sys, time
    from ad.config import gpu_slot
    slot_dir, job, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    first = gpu_slot(slot_dir, job, n)
    second = gpu_slot(slot_dir, job + 1, n)  # a later job in the same (joblib worker) process keeps the GPU
    print(first, second, flush=True)
    time.sleep(hold)
""")


def test_parallel_jobs_get_distinct_gpus(tmp_path):
    """Four jobs at once on a 4-GPU machine: job numbers 0, 4, 1, 5 (two of them map to the same GPU by
    number alone) still end on four different GPUs; a job started after one exits reuses the freed GPU."""
    script = tmp_path / "claim.py"
    script.write_text(_CLAIM)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    slots = tmp_path / "slots"

    def start(job, hold):
        return subprocess.Popen([sys.executable, str(script), str(slots), str(job), "4", str(hold)], env=env,
                                stdout=subprocess.PIPE, text=True)

    procs, got = [], []
    for job in (0, 4, 1, 5):
        p = start(job, 30)
        got.append(p.stdout.readline().split())  # wait until it holds its slot
        procs.append(p)
    first = [int(g[0]) for g in got]
    assert first == [0, 1, 2, 3]  # 0 free; 4 -> 0 taken -> 1; 1 -> taken -> 2; 5 -> 1, 2 taken -> 3
    assert all(g[0] == g[1] for g in got)
    procs[1].kill()  # the job on GPU first[1] ends
    procs[1].wait()
    late = start(7, 30)
    assert int(late.stdout.readline().split()[0]) == first[1]  # the only free GPU
    procs.append(late)
    # more jobs at once than GPUs: the extra one shares by job number instead of failing
    extra = start(6, 0)
    assert int(extra.stdout.readline().split()[0]) == 6 % 4
    extra.wait()
    for p in procs:
        p.kill()
        p.wait()
    assert gpu_slot(str(tmp_path / "other"), 2, 3) == 2  # in this process, nothing else holds a slot


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers_resolve_the_job_device(launcher, monkeypatch):
    """The launcher options route trainer.device through the GPU assignment; on a machine without several
    GPUs it stays `auto` (this machine), and a user's trainer.device override still wins."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher" if launcher == "joblib"
                        else "hydra_plugins.hydra_submitit_launcher")
    from hydra.core.hydra_config import HydraConfig

    from ad.config import compose

    cfg = compose([f"launcher={launcher}"])
    assert "ad_device" in str(cfg._get_node("trainer")._get_node("device")._value())
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert cfg.trainer.device == "auto"
    cfg = compose([f"launcher={launcher}", "trainer.device=cpu"])
    assert cfg.trainer.device == "cpu"
    HydraConfig.instance().cfg = None
