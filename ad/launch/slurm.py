"""`launcher=slurm`: Hydra's submitit SLURM launcher, made safe for shared clusters.

On top of hydra-submitit-launcher it
- checks the request against the cluster before submitting anything (partition exists; GPUs, CPUs and memory
  per job fit on one of its nodes) and refuses a bad one with one line;
- follows the jobs with `squeue` on clusters that keep no accounting (submitit asks `sacct`, which fails there
  and printed a warning every few seconds for the whole sweep);
- records a job that ended without a result of its own (killed by SLURM: out of memory, node failure, timed out
  more often than `max_num_timeout`) as failed with one line naming its log, instead of aborting the sweep
  and losing every other job's return;
- with `skip_finished=true`, does not submit the jobs whose run dir already holds an ok result of the same
  configuration (resume a partially failed sweep: only the failed and missing jobs run again);
- tells each job where its SLURM log is, so that results.json records it (`cluster.stdout`).

Requeue (preemption, `scontrol requeue`, a timeout within `max_num_timeout`) restarts the job's task function;
the trainer resumes from `<run dir>/checkpoints/last.ckpt`, so the result equals an uninterrupted run's.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher

from ad.errors import ConfigError
from ad.launch.jobs import finished_ok, job_dir, job_return, record_job_failure

log = logging.getLogger("ad.sweep")

# squeue states of a job that has not finished (submitit's own list knows only the common ones).
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "SPECIAL_EXIT", "PREEMPTED"}
# Keys of the launcher config that are submitit executor options, not sbatch parameters.
_EXECUTOR_KEYS = ("submitit_folder", "max_num_timeout")


# --- checks before submitting ----------------------------------------------------------------------------
def _run(argv: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _gpus(gres: str) -> int:
    """GPUs in a node's generic resources as sinfo prints them (`gpu:4`, `gpu:a100:2(S:0-1)`, `(null)`)."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu":
            total += int(parts[-1]) if parts[-1].isdigit() else 1
    return total


def partition_nodes(partition: Optional[str]) -> List[Dict[str, Any]]:
    """The nodes of `partition` (the default one when None): cpus, memory (MB) and GPUs of each."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise ConfigError("launcher=slurm: sbatch/sinfo not found on PATH; submit from a SLURM login node "
                          "(or run the sweep on this machine with launcher=submitit_local or launcher=joblib)")
    out = _run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G"])
    if out.returncode != 0:
        first = (out.stderr.strip().splitlines() or ["no output"])[0]
        raise ConfigError(f"launcher=slurm: sinfo failed ({first}); is the SLURM controller reachable (SLURM_CONF)?")
    nodes, names = [], set()
    for line in out.stdout.splitlines():
        part, cpus, mem, gres = (line.split("|") + ["", "", "", ""])[:4]
        default = part.endswith("*")
        part = part.rstrip("*")
        names.add(part)
        if (partition is None and default) or part == partition:
            mem_mb = int(re.sub(r"\D", "", mem) or 0)
            nodes.append({"cpus": int(re.sub(r"\D", "", cpus) or 0), "mem_mb": mem_mb, "gpus": _gpus(gres)})
    if not nodes:
        which = f"partition {partition!r}" if partition else "a default partition"
        raise ConfigError(f"hydra.launcher.partition: the cluster has no {which} (sinfo lists: "
                          f"{', '.join(sorted(names)) or 'none'}); set hydra.launcher.partition=<one of them>")
    return nodes


def check_request(params: Dict[str, Any]) -> None:
    """Refuse, before anything is submitted, a per-job request that no node of the partition can hold."""
    where = f"partition {params.get('partition')!r}" if params.get("partition") else "the default partition"
    nodes = partition_nodes(params.get("partition"))
    gpus = int(params.get("gpus_per_node") or 0)
    most = max(n["gpus"] for n in nodes)
    if gpus > most:
        have = "has no GPUs" if most == 0 else f"has at most {most} GPU(s) per node"
        raise ConfigError(f"hydra.launcher.gpus_per_node={gpus} but {where} {have}; set hydra.launcher.gpus_per_node="
                          f"{most} or choose a GPU partition (hydra.launcher.partition=...)")
    cpus = int(params.get("cpus_per_task") or 1) * int(params.get("tasks_per_node") or 1)
    if cpus > max(n["cpus"] for n in nodes):
        raise ConfigError(f"hydra.launcher.cpus_per_task={params.get('cpus_per_task')} but the nodes of {where} have at most "
                          f"{max(n['cpus'] for n in nodes)} CPUs; lower hydra.launcher.cpus_per_task")
    mem_gb = params.get("mem_gb")
    if mem_gb and max(n["mem_mb"] for n in nodes) and mem_gb * 1024 > max(n["mem_mb"] for n in nodes):
        raise ConfigError(f"hydra.launcher.mem_gb={mem_gb} but the nodes of {where} have at most "
                          f"{max(n['mem_mb'] for n in nodes) // 1024} GB; lower hydra.launcher.mem_gb")


# --- following jobs without accounting ------------------------------------------------------------------
def accounting_enabled() -> bool:
    """Whether `sacct` answers on this cluster (clusters without slurmdbd say 'accounting storage is disabled')."""
    if shutil.which("sacct") is None:
        return False
    out = _run(["sacct", "-n", "-X", "-o", "JobID", "-j", "1"])
    return out.returncode == 0


def _watcher_class() -> Any:
    from submitit.slurm.slurm import SlurmInfoWatcher

    class QueueWatcher(SlurmInfoWatcher):
        """submitit's watcher, asking `squeue` instead of `sacct` when the cluster keeps no accounting. A job that
        squeue no longer lists (purged after MinJobAge) has ended: its result file, or its absence, says how."""

        def __init__(self, delay_s: int = 60, use_sacct: bool = True) -> None:
            super().__init__(delay_s=delay_s)
            self.use_sacct = use_sacct
            self._asked: Set[str] = set()

        def _make_command(self) -> Optional[List[str]]:
            command = super()._make_command()
            if command is None or self.use_sacct:
                return command
            self._asked = {x for x in self._registered - self._finished}
            ids = sorted({x.split("_")[0] for x in self._asked})
            return ["squeue", "-r", "-h", "-t", "all", "-o", "%i|%T|%N", "-j", ",".join(ids)]

        def read_info(self, string: Any) -> Dict[str, Dict[str, str]]:
            if self.use_sacct:
                return super().read_info(string)
            text = string.decode() if isinstance(string, bytes) else string
            rows = []
            for line in text.splitlines():
                jid, state, node = (line.split("|") + ["", "", ""])[:3]
                state = state.split()[0] if state.strip() else "UNKNOWN"
                rows.append(f"{jid}|{'RUNNING' if state in ACTIVE_STATES and state != 'PENDING' else state}|{node}")
            info = super().read_info("\n".join(["JobID|State|NodeList", *rows]))
            for jid in self._asked - set(info):  # purged from the controller's memory: it has ended
                if "_" in jid or not any(k.startswith(jid + "_") for k in info):
                    info[jid] = {"JobID": jid, "State": "COMPLETED", "NodeList": ""}
            return info

    return QueueWatcher


def install_watcher() -> None:
    """Make submitit follow SLURM jobs with the right tool for this cluster (asked once per sweep)."""
    from submitit.slurm.slurm import SlurmJob

    use_sacct = accounting_enabled()
    if not use_sacct:
        log.info("the cluster keeps no job accounting (sacct); following the jobs with squeue")
    SlurmJob.watcher = _watcher_class()(delay_s=60, use_sacct=use_sacct)


# --- the launcher ----------------------------------------------------------------------------------------
def _failure_line(job: Any, exc: BaseException) -> str:
    """One line for a job that ended without a result: what SLURM says, and its log."""
    try:
        state = job.watcher.get_state(job.job_id, mode="force")
    except Exception:  # noqa: BLE001 - the state is a courtesy; the log path is what matters
        state = "UNKNOWN"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    cause = next((ln for ln in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", ln)), None)
    why = f"ended without a result (SLURM state {state})" + (f": {cause}" if cause else "")
    return f"SLURM job {job.job_id} {why}; log: {job.paths.stdout}"


class SlurmLauncher(_SubmititSlurmLauncher):
    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: Dict[type, Any]) -> JobReturn:
        """Runs inside the SLURM job: tell the run where its log files are, then run it."""
        import submitit

        paths = submitit.JobEnvironment().paths
        os.environ["AD_JOB_STDOUT"], os.environ["AD_JOB_STDERR"] = str(paths.stdout), str(paths.stderr)
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        assert self.config is not None
        try:
            check_request(self.params)
        except ConfigError as exc:  # one line, not Hydra's traceback of the launcher; nothing was submitted
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        skip = bool(OmegaConf.select(self.config, "skip_finished", default=False))
        returns: Dict[int, JobReturn] = {}
        todo = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            where = job_dir(self.hydra_context, self.config, idx, overrides)
            done = finished_ok(where, overrides) if skip else None
            if done is not None:
                log.info("\t#%d : already ok in %s (skip_finished=true), not submitted", idx, where.name)
                returns[idx] = job_return(overrides, done)
            else:
                log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
                todo.append((idx, list(overrides), where))
        if todo:
            install_watcher()
            executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                             slurm_max_num_timeout=self.params.get("max_num_timeout", 0))
            base = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in self.params.items()
                                          if k not in _EXECUTOR_KEYS})
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            log.info("SLURM sweep output dir: %s", sweep_dir)
            state = Singleton.get_state()
            jobs = executor.map_array(self, [o for _, o, _ in todo], ["hydra.sweep.dir"] * len(todo),
                                      [idx for idx, _, _ in todo], [f"job_id_for_{idx}" for idx, _, _ in todo],
                                      [state] * len(todo))
            for (idx, overrides, where), job in zip(todo, jobs):
                log.info("\t#%d : SLURM job %s, log %s", idx, job.job_id, job.paths.stdout)
            for (idx, overrides, where), job in zip(todo, jobs):
                try:
                    returns[idx] = job.results()[0]
                except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as exc:
                    returns[idx] = job_return(overrides, record_job_failure(where, overrides, _failure_line(job, exc)))
        return [returns[i] for i in sorted(returns)]


__all__: List[Any] = ["SlurmLauncher", "check_request", "partition_nodes", "install_watcher", "accounting_enabled"]
