"""Writing files safely: every output of `ad` goes through `atomic_write` (one file-mode rule, readers never
see half a file), JSON through `to_jsonable`, and cross-process exclusion through `file_lock`."""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence



def file_mode() -> int:
    """0644 under the usual umask: mkstemp's private 0600 would hide results from colleagues and web servers."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class PendingFile:
    """A file written in steps and made visible at once: a temporary beside `path` (created with `file_mode()`)
    that `commit` renames over `path` and `discard` removes. `atomic_write` is the one-shot form; streaming
    writers (the maps store) hold one across several steps."""

    def __init__(self, path: "str | Path") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, file_mode())
        finally:
            os.close(fd)

    def commit(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        Path(self.tmp).unlink(missing_ok=True)


def atomic_write(path: "str | Path", write: Callable[[Any], None], binary: bool = False) -> None:
    """Write `path` via a temporary file in the same folder and an atomic rename: readers see the old file or
    the new one, never half of it, and a failure (disk full, interruption) leaves no temporary behind.

    `write` receives an open text file (newline="") or, with `binary=True`, the temporary file's path (so
    writers that want a path — torch.save, numpy, zipfile — can use it)."""
    pending = PendingFile(path)
    try:
        if binary:
            write(pending.tmp)
        else:
            with open(pending.tmp, "w", newline="") as f:
                write(f)
        pending.commit()
    except BaseException:
        pending.discard()
        raise


def to_jsonable(obj: Any) -> Any:
    """numpy/torch scalars and arrays -> Python; NaN/inf -> None (JSON has no NaN: a null is explicit)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):  # arrays and scalars; numpy is not imported
        return to_jsonable(obj.tolist())  # here: a run record is read without it (the config check, launchers)
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: "str | Path", data: Mapping[str, Any]) -> None:
    atomic_write(Path(path), lambda f: json.dump(to_jsonable(data), f, indent=2, allow_nan=False))


def write_csv(path: "str | Path", rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    def write(f):
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({c: _csv_value(r.get(c)) for c in columns})

    atomic_write(Path(path), write)


def _csv_value(v: Any) -> Any:
    if type(v).__module__ == "numpy" and hasattr(v, "item"):  # numpy scalars -> Python
        v = v.item()
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return f"{v:.8g}"
    return v


@contextlib.contextmanager
def file_lock(path: "str | Path", waiting_for: str = "") -> Iterator[None]:
    """Hold an exclusive OS advisory lock (flock) on `path` (created if needed) for the block. The kernel drops
    it when the holder dies, so a killed process never leaves a stale lock behind. A wait longer than 2 s says
    in one INFO line what it waits for (`waiting_for`) and who holds the lock (`ad.io.locks`)."""
    try:
        from ad.io.locks import LocksUnsupported, wait_lock
    except ImportError:  # not POSIX (no fcntl): no lock; atomic renames still keep every file whole
        yield
        return
    what = waiting_for or f"the lock {path}"
    try:
        held = wait_lock(path, what, what)
    except LocksUnsupported:
        held = None
    try:
        yield
    finally:
        if held is not None:
            held.release(remove=False)  # kept: removing it would let a waiter lock a file nobody else sees
