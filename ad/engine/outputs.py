"""Files a run leaves behind: results.json, predictions.csv, model.pt — each written atomically."""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

MODEL_FILE_VERSION = 1


def _file_mode() -> int:
    """0644 under the usual umask: mkstemp's private 0600 would hide results from colleagues and web servers."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: "str | Path", write, binary: bool = False) -> None:
    """Write `path` via a temporary file in the same folder and an atomic rename: readers see the old file or
    the new one, never half of it, and a failure (disk full, interruption) leaves no temporary behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        if binary:
            os.close(fd)
            write(tmp)
        else:
            with os.fdopen(fd, "w", newline="") as f:
                write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise



def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays -> Python; NaN/inf -> None (JSON has no NaN; a null is explicit)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(path: "str | Path", data: Mapping[str, Any]) -> None:
    atomic_write(Path(path), lambda f: json.dump(to_jsonable(data), f, indent=2, allow_nan=False))


def write_csv(path: "str | Path", rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    def write(f):
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({c: _fmt(r.get(c)) for c in columns})

    atomic_write(Path(path), write)



def _fmt(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.8g}"
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    return v


def save_model_file(path: "str | Path", model: torch.nn.Module, model_config: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """model.pt: fitted state + thresholds + normalisation + the config needed to rebuild the model."""
    path = Path(path)
    state = {
        "version": MODEL_FILE_VERSION,
        "model_config": dict(model_config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **meta,
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp), binary=True)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
