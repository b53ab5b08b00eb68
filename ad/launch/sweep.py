"""Hydra callback: after a sweep, list every job's status (failed and missing ones by name) and make the
sweep's exit code non-zero when any job failed. Jobs themselves never abort the sweep."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List

from hydra.experimental.callback import Callback


log = logging.getLogger("ad.sweep")

# Process exit code of `ad.train` (lives here, not in ad.train, which runs as __main__ under `python -m`).
EXIT = {"code": 0}


def collect_job_status(sweep_dir: "str | Path") -> List[Dict[str, Any]]:
    """One entry per job dir (a dir holding `.hydra/`): its name, status and error."""
    # imported here: ad.train imports this module for EXIT, and its config check runs before numpy is loaded
    from ad.rundir.records import RecordError, load_record

    jobs = []
    for hydra_dir in sorted(Path(sweep_dir).glob("**/.hydra")):
        job = hydra_dir.parent
        res = job / "results.json"
        if not res.is_file():
            jobs.append({"job": job.name, "status": "missing", "error": "no results.json (the job crashed or is still running)"})
            continue
        try:
            record = load_record(res)
        except RecordError as exc:
            jobs.append({"job": job.name, "status": "missing", "error": f"unreadable results.json: {exc}"})
            continue
        cluster = record.cluster
        jobs.append({"job": job.name, "status": record.status, "error": record.error,
                     "cluster_job": cluster.job_id if cluster else None, "log": cluster.stdout if cluster else None})
    return jobs


class SweepSummary(Callback):
    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = collect_job_status(sweep_dir)
        bad = [j for j in jobs if j["status"] != "ok"]
        print(f"\nsweep {sweep_dir}: {len(jobs) - len(bad)}/{len(jobs)} jobs ok", flush=True)
        for j in bad:
            where = f" [SLURM job {j['cluster_job']}, log {j['log']}]" if j.get("cluster_job") else ""
            print(f"  {j['status']:8s} {j['job']}: {j['error']}{where}", flush=True)
        if bad:
            print(f"re-run only these: repeat the command with hydra.sweep.dir={sweep_dir} skip_finished=true", flush=True)
        print(f"tensorboard --logdir {sweep_dir / 'tb'}\nad-aggregate {sweep_dir}\nad-report {sweep_dir} --out {sweep_dir}/report",
              flush=True)
        if bad:
            EXIT["code"] = 1
