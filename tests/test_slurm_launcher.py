"""launcher=slurm without a cluster: the checks before submitting (against sinfo's answers), the squeue-based
job watcher for clusters without accounting, and which jobs a resumed sweep skips. The same code runs against
a real cluster in tests/test_slurm.py (`pytest -m slurm`)."""
from __future__ import annotations

import subprocess

import pytest
from omegaconf import OmegaConf

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

from ad.io import write_json  # noqa: E402
from ad.rundir.records import RunInfo, RunRecord, Validation  # noqa: E402
from ad.errors import ConfigError  # noqa: E402
from ad.launch import slurm  # noqa: E402
from ad.launch.jobs import finished_ok  # noqa: E402


@pytest.mark.parametrize("gres,gpus", [("(null)", 0), ("gpu:4", 4), ("gpu:a100:2(S:0-1)", 2),
                                       ("gpu:a100:2,gpu:v100:1", 3), ("gpu", 1), ("mps:100,gpu:1", 1)])
def test_gpus_in_sinfo_gres(gres, gpus):
    assert slurm._gpus(gres) == gpus


@pytest.fixture
def sinfo(monkeypatch):
    """A cluster as sinfo describes it: partition `cpu*` (default, no GPUs) and `gpu` (2 GPUs, 32 CPUs)."""
    lines = ["cpu*|8|16000|(null)", "cpu*|16|64000|(null)", "gpu|32|256000|gpu:a100:2(S:0)"]
    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm, "_run", lambda argv: subprocess.CompletedProcess(argv, 0, "\n".join(lines), ""))
    return lines


def test_request_is_checked_against_the_partition(sinfo):
    ok = {"gpus_per_node": 0, "cpus_per_task": 16, "mem_gb": 60, "tasks_per_node": 1}
    slurm.check_request(ok)  # fits the larger cpu node
    slurm.check_request({**ok, "partition": "gpu", "gpus_per_node": 2, "cpus_per_task": 32})
    cases = [({"gpus_per_node": 1}, "hydra.launcher.gpus_per_node=1 but the default partition has no GPUs"),
             ({"partition": "gpu", "gpus_per_node": 4}, "has at most 2 GPU(s) per node"),
             ({"cpus_per_task": 17}, "hydra.launcher.cpus_per_task=17 but the nodes of the default partition have at most 16"),
             ({"mem_gb": 64}, "hydra.launcher.mem_gb=64 but the nodes of the default partition have at most 62 GB"),
             ({"partition": "big"}, "the cluster has no partition 'big' (sinfo lists: cpu, gpu)")]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
            slurm.check_request({**ok, **change})
        assert "\n" not in str(err.value)


def test_without_sbatch_or_a_controller_the_request_is_refused(monkeypatch):
    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="sbatch/sinfo not found on PATH"):
        slurm.check_request({})
    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm, "_run", lambda argv: subprocess.CompletedProcess(
        argv, 1, "", "slurm_load_partitions: Unable to contact slurm controller (connect failure)\n"))
    with pytest.raises(ConfigError, match=r"sinfo failed \(slurm_load_partitions: Unable to contact"):
        slurm.check_request({})


def test_queue_watcher_reads_squeue_and_treats_purged_jobs_as_ended():
    watcher = slurm._watcher_class()(delay_s=60, use_sacct=False)
    for job in ("41_0", "41_1", "41_2", "42"):
        watcher.register_job(job)
    command = watcher._make_command()
    assert command[:2] == ["squeue", "-r"] and command[-1] == "41,42"  # one call for all, array ids only
    # 41_2 and 42 are gone from the controller (MinJobAge): ended; COMPLETING and REQUEUE_HOLD still run
    info = watcher.read_info("41_0|COMPLETING|vm\n41_1|REQUEUE_HOLD|\n")
    assert info["41_0"]["State"] == "RUNNING" and info["41_1"]["State"] == "RUNNING"
    assert info["41_2"]["State"] == "COMPLETED" and info["42"]["State"] == "COMPLETED"
    watcher._info_dict.update(info)
    assert not watcher.is_done("41_0", mode="cache") and watcher.is_done("42", mode="cache")
    # a job squeue still lists keeps its own state; pending array tasks stay pending
    info = watcher.read_info("41_0|PENDING|\n41_1|FAILED|vm\n41_2|COMPLETED|vm\n42|RUNNING|vm\n")
    assert [info[j]["State"] for j in ("41_0", "41_1", "41_2", "42")] == ["PENDING", "FAILED", "COMPLETED", "RUNNING"]


def _job(tmp_path, overrides, status="ok"):
    job = tmp_path / "0_job"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    record = RunRecord(status=status, run=RunInfo(model="padim"), validation=Validation(objective=0.5))
    write_json(job / "results.json", record.to_dict())
    return job


def test_a_resumed_sweep_skips_only_ok_jobs_of_the_same_configuration(tmp_path):
    ran = ["model=padim", "category=bottle", "model.layers=[a]", "launcher=slurm", "trainer.num_threads=8"]
    job = _job(tmp_path, ran)
    # same identity and hyper-parameters; launcher, threads and skip_finished may differ
    again = ["category=bottle", "model=padim", "model.layers=[a]", "launcher=joblib", "skip_finished=true"]
    assert finished_ok(job, again).validation.objective == 0.5
    assert finished_ok(job, ["model=padim", "category=bottle", "model.layers=[b]"]) is None  # other hparams
    assert finished_ok(job, ["model=padim", "category=cable", "model.layers=[a]"]) is None
    failed = _job(tmp_path / "f", ran, status="failed")
    assert finished_ok(failed, ran) is None
    (job / ".hydra" / "overrides.yaml").unlink()
    assert finished_ok(job, ran) is None  # nothing says what it ran: run it again


def test_skip_finished_in_the_task_function(tmp_path):
    """Launchers that run the task function for every job (basic, joblib) skip in the job itself."""
    from ad.train import finished_before

    record = RunRecord(status="ok", run=RunInfo(model="padim", dataset="mvtec", category="bottle",
                                                params={"model.n_features": "50"}))
    write_json(tmp_path / "results.json", record.to_dict())
    cfg = OmegaConf.create({"skip_finished": True, "dataset": {"category": "bottle"}})
    choices = {"model": "padim", "dataset": "mvtec"}
    assert finished_before(cfg, tmp_path, choices, ["model=padim", "model.n_features=50"]) is not None
    assert finished_before(cfg, tmp_path, choices, ["model=padim", "model.n_features=60"]) is None
    assert finished_before(cfg, tmp_path, {"model": "dfm", "dataset": "mvtec"}, ["model.n_features=50"]) is None
    cfg.skip_finished = False
    assert finished_before(cfg, tmp_path, choices, ["model=padim", "model.n_features=50"]) is None
