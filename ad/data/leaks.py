"""Leaks between splits: a test image that is also a training image inflates every metric without a trace.

Every dataset's listing goes through `check_disjoint` (`AnomalyDataModule.setup` calls it on the full train and
test lists, before shots or validation are drawn), so a split file, a folder layout or a new benchmark's JSON
split cannot hand the same file to two splits. A file is identified by what it *is* on disk (device and inode),
so the same image reached through a symlink, a hard link or two spellings of a path counts once.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from ad.errors import DataError

FileKey = Tuple[Any, ...]


def file_key(path: "str | os.PathLike[str]") -> FileKey:
    """What a path points at: (device, inode) when it can be stat'ed, else its resolved absolute path."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("inode", st.st_dev, st.st_ino)


def find_overlaps(splits: Mapping[str, Sequence[Any]]) -> List[Tuple[str, str, str, str]]:
    """(split a, path in a, split b, path in b) for every file listed in two different splits.
    `splits`: split name -> samples (objects with `path`) or paths."""
    seen: Dict[FileKey, Tuple[str, str]] = {}
    out: List[Tuple[str, str, str, str]] = []
    for name, items in splits.items():
        for item in items:
            path = str(getattr(item, "path", item))
            key = file_key(path)
            first = seen.get(key)
            if first is None:
                seen[key] = (name, path)
            elif first[0] != name:
                out.append((first[0], first[1], name, path))
    return out


def check_disjoint(splits: Mapping[str, Sequence[Any]], what: str = "dataset") -> None:
    """Refuse (one DataError line) when any file is listed in two splits, naming the first overlap, the count
    and the fix."""
    overlaps = find_overlaps(splits)
    if not overlaps:
        return
    a, pa, b, pb = overlaps[0]
    same = f"{pa}" if os.path.abspath(pa) == os.path.abspath(pb) else f"{pa} (also listed as {pb})"
    raise DataError(
        f"{what}: {len(overlaps)} file(s) are in both the {a} and the {b} split, e.g. {same}; a test image seen in "
        "training inflates every metric - make the splits disjoint (separate folders or a split file that lists "
        "each image once)")


__all__ = ["check_disjoint", "find_overlaps", "file_key"]
