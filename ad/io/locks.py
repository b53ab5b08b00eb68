"""File locks that die with their owner: OS advisory locks (`fcntl.flock`) on a lock file.

The kernel drops a process's flock when it exits, however it exits (kill -9, OOM, a crashed node's local disk),
so a lock left by a dead run is free at once: nobody waits for a timeout and no pid that was reused by another
process can keep a directory locked. The lock file holds a one-line description of its owner (pid, host, what
it is doing) so that whoever waits or is refused can say what it waits for.

A lock file is removed by its owner on release; `try_lock` re-checks after locking that the path still names
the file it locked (another process may have removed it in between), so two processes never both own a path.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger(__name__)

# Errors of file systems without flock support (some network mounts): the caller decides how to go on.
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class LocksUnsupported(OSError):
    """The file system of the lock file does not support flock."""


@dataclass
class HeldLock:
    path: Path
    fd: int

    def release(self, remove: bool = True) -> None:
        """Unlock (and by default delete the lock file, while still holding it)."""
        if self.fd < 0:
            return
        try:
            if remove:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
        finally:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1

    def __enter__(self) -> "HeldLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def owner_line(what: str) -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: {what}"


def try_lock(path: "str | Path", what: str) -> Optional[HeldLock]:
    """Lock `path` (created if needed) without waiting; None when a live process holds it. `what` (the owner's
    description, e.g. "training run <dir>") is written into the file for others' messages."""
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                raise LocksUnsupported(exc.errno, f"file locks are not supported for {path}") from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # released and removed by its owner between our open and our lock: lock the new file
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, (owner_line(what) + "\n").encode("utf-8", "replace"))
        return HeldLock(path, fd)


def holder(path: "str | Path") -> str:
    """The description the lock's owner wrote (or "an unknown process")."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "an unknown process"


def wait_lock(path: "str | Path", what: str, waiting_for: str, done: Optional[Callable[[], bool]] = None,
              notify_after_s: float = 2.0, poll_s: float = 0.005) -> Optional[HeldLock]:
    """Lock `path`, waiting while a live process holds it; None as soon as `done()` says the work is no longer
    needed (e.g. the other process wrote the result). After `notify_after_s` one INFO line says what this process
    waits for and who holds the lock. A dead holder's lock is free immediately (flock)."""
    t0 = time.monotonic()
    told = False
    while True:
        held = try_lock(path, what)
        if held is not None:
            return held
        if done is not None and done():
            return None
        if not told and time.monotonic() - t0 > notify_after_s:
            told = True
            log.info("waiting for %s: lock %s is held by %s", waiting_for, path, holder(path))
        time.sleep(poll_s)


__all__ = ["HeldLock", "LocksUnsupported", "try_lock", "wait_lock", "holder", "owner_line"]
