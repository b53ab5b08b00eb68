"""What this process may use and has used (cores, memory), and names derived from paths."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def available_cpus() -> int:
    """CPU cores this process may use (CPU affinity / cgroup-pinned sets count, not the machine's total)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def folder_name(path: Any) -> str:
    """Last component of a path (`${ad_basename:${dataset.root}}`: a folder dataset is named after its root)."""
    name = Path(str(path)).expanduser().name if path not in (None, "") else ""
    return name or "folder"
