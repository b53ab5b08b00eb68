"""A real one-node SLURM cluster in a temporary folder, for the `slurm` tests and for developers.

It needs root and Debian's `slurm-wlm` + `munge` (`apt-get install -y slurm-wlm munge`). Everything it writes —
slurm.conf, the munge key and socket, state and spool dirs, the three daemons' logs — lives in one folder; the
daemons run in the foreground as children of this process on free ports, so a second cluster (another test
session, a developer's) does not collide with it, and `stop()` ends exactly the three PIDs it started.

Clients (`sbatch`, `sinfo`, `scontrol`, submitit) find the cluster through `SLURM_CONF=<folder>/slurm.conf`.

    python tests/slurm_cluster.py /tmp/myslurm    # start, print the SLURM_CONF line, stop on Ctrl-C
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sinfo", "squeue", "scontrol", "scancel", "srun", "mungekey")


def unavailable_reason() -> Optional[str]:
    """Why a cluster cannot be started here (one line), or None when it can."""
    if not sys.platform.startswith("linux"):
        return "SLURM tests need Linux"
    if os.geteuid() != 0:
        return "SLURM tests need root (they start munged, slurmctld and slurmd)"
    missing = [c for c in DAEMONS + CLIENTS if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]
    if missing:
        return (f"SLURM not installed ({', '.join(missing)} missing): "
                "apt-get install -y slurm-wlm munge, then run pytest -m slurm")
    return None


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_resources() -> Dict[str, int]:
    """This machine's CPUs and memory (MB) as slurmd itself reports them (`slurmd -C`)."""
    out = subprocess.run([_exe("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    return {"cpus": int(fields["CPUs"]), "memory_mb": int(fields["RealMemory"])}


class LocalSlurm:
    """One controller + one node (this machine) + munge, all in `root`."""

    def __init__(self, root: Path, partition: str = "debug") -> None:
        self.root = Path(root)
        self.partition = partition
        self.node = socket.gethostname().split(".")[0]
        self.procs: Dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"

    @property
    def env(self) -> Dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        res = node_resources()
        for d in ("state", "spool", "log", "munge"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        # munged refuses group/world-writable key dirs and sockets in such dirs
        for d in (self.root, self.root / "munge"):
            d.chmod(0o700)
        lines = [
            "ClusterName=adtest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: a requeued job waits this long before it may start again (SLURM's default: 120 s)
            f"AuthInfo=socket={self.root / 'munge' / 'munge.socket'},cred_expire=5",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",   # no cgroups: works in containers
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU_Memory",  # jobs share the node by CPUs and memory
            "ReturnToService=2",
            "JobRequeue=1",
            "AccountingStorageType=accounting_storage/none",  # like many small clusters: no sacct
            "JobCompType=jobcomp/none",
            "MinJobAge=300",
            "KillWait=5",
            "SchedulerParameters=sched_interval=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={res['cpus']} RealMemory={res['memory_mb']} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _start(self, name: str, argv: List[str]) -> None:
        log = open(self.root / "log" / f"{name}.console", "ab")
        env = dict(os.environ, **self.env)
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)  # a Ctrl-C in the terminal reaches us only
        log.close()

    def _client(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([_exe(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **self.env))

    def start(self, timeout_s: float = 60) -> "LocalSlurm":
        self._write_conf()
        munge = self.root / "munge"
        key = munge / "munge.key"
        if not key.exists():
            subprocess.run([_exe("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
            key.chmod(0o400)
        self._start("munged", [_exe("munged"), "--foreground", "--force", f"--key-file={key}",
                               f"--socket={munge / 'munge.socket'}", f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}", f"--seed-file={munge / 'seed'}"])
        self._wait(lambda: (munge / "munge.socket").exists(), timeout_s, "munged did not create its socket")
        self._start("slurmctld", [_exe("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._start("slurmd", [_exe("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait(self.idle, timeout_s, f"node {self.node} did not become idle in sinfo")
        return self

    def idle(self) -> bool:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}; see {self.root / 'log'}")
        out = self._client("sinfo", "-h", "-N", "-o", "%T", timeout=10)
        return out.returncode == 0 and out.stdout.strip().split() == ["idle"]

    def _wait(self, ok, timeout_s: float, what: str) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if ok():
                return
            time.sleep(0.5)
        tail = ""
        for f in sorted((self.root / "log").glob("*")):
            tail += f"\n--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-8:])
        self.stop()
        raise RuntimeError(f"{what} within {timeout_s:.0f} s{tail}")

    def cancel_all(self, timeout_s: float = 30) -> None:
        """Cancel every job of this cluster and wait until none runs (job steps outlive a stopped slurmd)."""
        if self.procs.get("slurmctld") is None or self.procs["slurmctld"].poll() is not None:
            return
        jobs = self._client("squeue", "-h", "-o", "%A", timeout=10).stdout.split()
        if not jobs:
            return
        self._client("scancel", *sorted(set(jobs)), timeout=10)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and self._client("squeue", "-h", "-o", "%A", timeout=10).stdout.split():
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel what still runs, then end the three daemons this object started (by PID, newest first)."""
        try:
            self.cancel_all()
        except (OSError, subprocess.SubprocessError):
            pass  # the daemons are stopped below in any case
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ad-slurm")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill <pid>` stops the daemons too
    with LocalSlurm(folder) as cluster:
        print(f"export SLURM_CONF={cluster.conf}    # then sinfo, sbatch, python -m ad.train ... launcher=slurm",
              flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            print("stopping the cluster", flush=True)
