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

import numpy as np


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
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
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
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.8g}"
    return v


@contextlib.contextmanager
def file_lock(path: "str | Path") -> Iterator[None]:
    """Hold an exclusive OS advisory lock (flock) on `path` (created if needed) for the block. The kernel drops
    it when the holder dies, so a killed process never leaves a stale lock behind."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; atomic renames still keep every file whole
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
