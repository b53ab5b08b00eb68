"""Where a run's data came from, as part of the experiment's identity.

A checkpoint or a result is only reusable for the same data: a run dir trained on one dataset root must not be
resumed for another root that has a category of the same name. `data_identity` gives the data's identity: the
resolved root(s) and a cheap fingerprint of what was listed (each file's path relative to its root, split,
label, defect type, mask, size and mtime). Nothing is read but `stat`: about 10 µs a file. It does not depend on
how the run runs (threads, device, output paths), so those still resume.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

SPLITS = ("train", "val", "test")


def _rel(path: Optional[str], root: Path) -> Optional[str]:
    if path is None:
        return None
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:  # a split file may list files outside the root
        return str(Path(path).resolve())


def _stat(path: Optional[str]) -> Sequence[int]:
    if path is None:
        return ()
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def data_identity(modules: Mapping[str, Any]) -> Dict[str, str]:
    """{"data.root": resolved root(s), "data.fingerprint": 16 hex digits} of the data modules of a run
    (category name -> module with `root` and `samples(split)`), for `RunSpec.identity` and results.json."""
    digest = hashlib.sha1()
    roots = []
    for name in sorted(modules):
        module = modules[name]
        root = Path(str(module.root)).expanduser().resolve()
        roots.append(str(root))
        for split in SPLITS:
            for s in module.samples(split):
                item = (name, split, _rel(s.path, root), s.label, s.defect_type, _rel(s.mask_path, root),
                        *_stat(s.path), *_stat(s.mask_path))
                digest.update(repr(item).encode("utf-8", "surrogateescape"))
    return {"data.root": ";".join(sorted(set(roots))), "data.fingerprint": digest.hexdigest()[:16]}


__all__ = ["data_identity"]
