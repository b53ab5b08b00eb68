"""The output folder of a command (`--out` of predict, aggregate and report): checked before any work."""
from __future__ import annotations

from pathlib import Path

from ad.errors import ConfigError


def check_out_dir(path: "str | Path", flag: str = "--out") -> Path:
    """The part of `prepare_out_dir` that creates nothing: refuse an existing file in one line. Tools call it
    before their long work (loading a model) and `prepare_out_dir` once they are ready to write."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{_named(flag, path)} is an existing file; pass a folder (created if missing) for the "
                          "outputs")
    return path


def _named(flag: str, path: Path) -> str:
    return f"{flag}{path}" if flag.endswith("=") else f"{flag} {path}"  # out=/x, --out /x


def prepare_out_dir(path: "str | Path", flag: str = "--out") -> Path:
    """`path` as an existing, writable folder (created with its parents), or one ConfigError line naming the
    flag, the path and the fix: an existing file, a file among its parents, or no permission."""
    path = check_out_dir(path, flag)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{_named(flag, path)}: {parent} is a file, not a folder; pass another {flag}")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{_named(flag, path)} cannot be created ({exc.strerror or exc.__class__.__name__}); pass a "
                          f"writable folder") from None
    if not _writable(path):
        raise ConfigError(f"{_named(flag, path)} is not writable; pass a writable folder")
    return path


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK | os.X_OK)


__all__ = ["check_out_dir", "prepare_out_dir"]
