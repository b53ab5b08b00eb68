"""The ground floor: file writing (atomic, one file mode), JSON conversion, locks, image listing and loading,
the `key=value` command line of the tools.
Imports nothing from `ad` but `ad.errors`; every other package may import it.

The names below are loaded on first use (PEP 562): `ad.config` needs only `ad.io.resources`, and the command
line's config check must not pay for numpy and PIL before it can say a key is wrong.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    **dict.fromkeys(["PendingFile", "atomic_write", "file_lock", "file_mode", "to_jsonable", "write_csv",
                     "write_json"], "ad.io.files"),
    **dict.fromkeys(["available_cpus", "folder_name", "peak_rss_mb"], "ad.io.resources"),
    **dict.fromkeys(["parse_key_values", "run_tool"], "ad.io.cli"),
    **dict.fromkeys(["IMAGE_EXTENSIONS", "DataFileError", "find_images", "image_inputs", "list_images", "load_image", "load_mask", "mask_files"],
                    "ad.io.images"),
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # once: later lookups are plain attribute reads
        return value
    raise AttributeError(f"module 'ad.io' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_WHERE))
