"""The output folder of a command (`--out` of predict, aggregate and report): checked before any work."""
from __future__ import annotations

from pathlib import Path

from ad.errors import ConfigError


def prepare_out_dir(path: "str | Path", flag: str = "--out") -> Path:
    """`path` as an existing, writable folder (created with its parents), or one ConfigError line naming the
    flag, the path and the fix: an existing file, a file among its parents, or no permission."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is an existing file; pass a folder (created if missing) for the outputs")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder; pass another {flag}")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {path} cannot be created ({exc.strerror or exc.__class__.__name__}); pass a "
                          f"writable folder") from None
    if not _writable(path):
        raise ConfigError(f"{flag} {path} is not writable; pass a writable folder")
    return path


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK | os.X_OK)


__all__ = ["prepare_out_dir"]
