"""A run's guard: it owns its run directory (a second live run is refused before anything is written) and
turns any failure inside into data (status failed + one line, Ctrl-C → interrupted) written to results.json.
`guarded` composes the two; the pipeline and the entry point's early failures both go through it."""
from __future__ import annotations

import logging
import os
import shutil
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ad.errors import ADError, ConfigError
from ad.io import peak_rss_mb, write_json
from ad.rundir.layout import RUN_FILES
from ad.rundir.records import Memory, RunRecord

log = logging.getLogger("ad.run")


@contextmanager
def guarded(record: RunRecord, run_dir: Path) -> Iterator[None]:
    """Own `run_dir` and record whatever happens inside in `record` (written to results.json on the way out).
    Raises `RunDirBusy` before writing anything when another live run owns the directory."""
    with run_dir_lock(run_dir), recorded(record, run_dir):
        yield


def clear_previous(run_dir: Path) -> None:
    """Remove what an earlier run left in `run_dir`, so a run dir never mixes the files of two runs."""
    for name in RUN_FILES:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
    for tmp in run_dir.glob(".*.tmp"):  # temporaries of an interrupted earlier write
        tmp.unlink(missing_ok=True)


def memory_record() -> Memory:
    import torch

    mem = Memory(peak_rss_mb=peak_rss_mb())
    if torch.cuda.is_available():
        mem.peak_cuda_mb = torch.cuda.max_memory_allocated() / 2**20
    return mem


def record_failure(record: RunRecord, exc: BaseException, run_dir: Path) -> RunRecord:
    """A run that failed before it could start (bad values): its record, written like any other failure."""
    try:
        with guarded(record, run_dir):
            clear_previous(run_dir)  # never leave an earlier run's model beside this failure
            raise exc
    except RunDirBusy as busy:
        record.status, record.error = "failed", str(busy)
    return record


@contextmanager
def recorded(record: RunRecord, run_dir: Path) -> Iterator[None]:
    """Turn any failure inside into data: status failed + one line (the traceback of a bug goes to train.log),
    Ctrl-C into status interrupted; results.json is written in every case."""
    try:
        yield
    except KeyboardInterrupt:
        record.status, record.error = "interrupted", "interrupted (KeyboardInterrupt); start it again to resume"
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a record, never a lost run
        record.status, record.error = "failed", error_line(exc, run_dir)
        user_error = exc if isinstance(exc, ADError) else exc.__cause__  # instantiate() wraps a component's ADError
        if isinstance(user_error, ADError):
            log.error("%s", record.error)
        else:
            log.error("run failed: %s\n%s", record.error, traceback.format_exc())
    finally:
        if record.memory is None:
            record.memory = memory_record()
        _write_record(record, run_dir)


def error_line(exc: BaseException, run_dir: Path) -> str:
    user_error = exc if isinstance(exc, ADError) else exc.__cause__
    if isinstance(user_error, ADError):
        text = str(user_error).splitlines()[0] if str(user_error) else user_error.__class__.__name__
    else:
        if exc.__class__.__name__ == "InstantiationException" and exc.__cause__ is not None:
            exc = exc.__cause__  # Hydra's wrapper says only which target failed; the cause says why
        first = str(exc).splitlines()[0] if str(exc) else ""
        text = f"{exc.__class__.__name__}: {first}".rstrip(": ")
    free = _free_mb(run_dir)
    if free is not None and free < 64 and "No space left" not in text:
        text = f"No space left on device ({free:.0f} MB free in {run_dir}): {text}"
    return text


def _free_mb(path: Path) -> Optional[float]:
    try:
        return shutil.disk_usage(path).free / 2**20
    except OSError:
        return None


def _write_record(record: RunRecord, run_dir: Path) -> None:
    """results.json even on a full disk: drop the run's own partial outputs to make room, then retry."""
    try:
        write_json(run_dir / "results.json", record.to_dict())
    except OSError:
        for name in ("model.pt", "predictions.csv", "history.csv", "test_maps.npz"):
            (run_dir / name).unlink(missing_ok=True)
        for tmp in list(run_dir.glob(".*.tmp")) + list((run_dir / "checkpoints").glob("*.tmp")):
            tmp.unlink(missing_ok=True)
        write_json(run_dir / "results.json", record.to_dict())


class RunDirBusy(ConfigError):
    """The run directory is owned by another live run."""


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Own `run_dir` for the duration of the run: a second live run pointed at it is refused (one line)
    instead of mixing files; a lock left by a dead process is taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _lock_pid(lock)
            if pid is not None and pid != os.getpid() and _alive(pid):
                raise RunDirBusy(f"run dir {run_dir} is in use by a live run (pid {pid}); wait for it or choose "
                                 "another hydra.run.dir") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        if _lock_pid(lock) == os.getpid():
            lock.unlink(missing_ok=True)


def _lock_pid(lock: Path) -> Optional[int]:
    try:
        return int(lock.read_text().strip() or "0") or None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
