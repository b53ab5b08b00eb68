"""Decode once: resized uint8 images (and masks) kept for the epochs of a run and shared by the jobs of a sweep.

Decoding and resizing a 900 px PNG costs ~30 ms of CPU, far more than a training step spends on that image on
a GPU; without a cache every epoch and every job pays it again. Three layers, each optional:

- **memory** (`_STORE`, one per process): uint8 tensors at the run's transform, bounded by a byte budget. Past
  the budget new images are not kept (they stream: decoded when needed) and only entries of *earlier* data
  modules are evicted, so an epoch never evicts the images the next epoch needs (an LRU over a cyclic scan
  would hit nothing). Without a disk cache, in-process sweep jobs (basic launcher) reuse each other's images;
  with one, a new data module drops the earlier ones' images (they are a disk read away).
- **disk** (`cache_dir`): one file per image and transform, named by a hash of the file's identity (absolute
  path, size, mtime_ns) and of the transform. A changed file has a new identity and is decoded again; the stale
  entry of the same path is deleted when the new one is written. Writes go to a temporary file renamed into
  place, so a reader sees a whole entry or none; a decoding process holds a `.lock` file (O_EXCL) that other
  processes wait on instead of decoding the same image twice: an OS advisory lock (flock) that dies with its
  owner, so a killed run's lock never stalls the next run; a wait longer than 2 s says what it waits for.
- **prefetch** (`Prefetcher`): threads decode the next images of the loader's order while the model runs
  (Pillow releases the GIL while inflating and resizing), so the first epoch overlaps decode with compute.

The uint8 -> float conversion is the same division as the uncached path, so cached and uncached runs see
bit-identical tensors.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ad.errors import ConfigError
from ad.io.locks import HeldLock, wait_lock
from ad.io import atomic_write
from ad.values import non_negative_int

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MODES = ("auto", "memory", "disk", "off")
_MAGIC = b"ADC1"
_HEADER = struct.Struct("<4sIIIB")  # magic, height, width, channels, has_mask


@dataclass(frozen=True)
class Decoded:
    """One image at the run's transform: image uint8 [C,H,W]; mask uint8 [H,W] in {0,1} or None (no file)."""

    image: torch.Tensor
    mask: Optional[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return self.image.numel() + (self.mask.numel() if self.mask is not None else 0)


def file_identity(path: str) -> Tuple[str, int, int]:
    """(absolute path, size, mtime_ns): what decides whether a cached decode of `path` is still valid."""
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


# ---------------------------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------------------------
class _MemoryStore:
    """Process-wide key -> Decoded map with a byte budget; see the module docstring for the eviction rule."""

    def __init__(self) -> None:
        self._items: "OrderedDict[str, Tuple[Decoded, int]]" = OrderedDict()
        self.nbytes = 0
        self._lock = threading.Lock()

    def get(self, key: str, generation: int) -> Optional[Decoded]:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items[key] = (item[0], max(item[1], generation))
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, value: Decoded, generation: int, budget: int) -> bool:
        with self._lock:
            if key in self._items:
                return True
            if self.nbytes + value.nbytes > budget:
                for old in [k for k, (_, g) in self._items.items() if g < generation]:
                    self.nbytes -= self._items.pop(old)[0].nbytes
                    if self.nbytes + value.nbytes <= budget:
                        break
            if self.nbytes + value.nbytes > budget:
                return False
            self._items[key] = (value, generation)
            self.nbytes += value.nbytes
            return True

    def drop_older(self, generation: int) -> None:
        """Forget the entries no data module of `generation` or later has used."""
        with self._lock:
            for old in [k for k, (_, g) in self._items.items() if g < generation]:
                self.nbytes -= self._items.pop(old)[0].nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)


_STORE = _MemoryStore()
_GENERATIONS = itertools.count(1)


def clear_memory_cache() -> None:
    """Drop every image held in this process (tests, or to hand the memory back between phases)."""
    _STORE.clear()


def default_budget_mb() -> int:
    """A quarter of the available RAM, at most 4 GiB (one MVTec category at 256 px takes ~60 MB)."""
    try:
        with open("/proc/meminfo") as f:
            info = {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.split()[1:2]}
        return int(min(4096, info.get("MemAvailable", info.get("MemTotal", 8 << 20)) / 1024 / 4))
    except (OSError, ValueError, IndexError):
        return 2048


# ---------------------------------------------------------------------------------------------------------------
# disk
# ---------------------------------------------------------------------------------------------------------------
def _encode(d: Decoded) -> bytes:
    c, h, w = d.image.shape
    head = _HEADER.pack(_MAGIC, h, w, c, int(d.mask is not None))
    body = d.image.numpy().tobytes() + (d.mask.numpy().tobytes() if d.mask is not None else b"")
    return head + body


def _decode(blob: bytes) -> Optional[Decoded]:
    """A Decoded from an entry's bytes, or None for anything that is not a whole entry of this version."""
    if len(blob) < _HEADER.size:
        return None
    magic, h, w, c, has_mask = _HEADER.unpack_from(blob)
    n_img, n_mask = c * h * w, (h * w if has_mask else 0)
    if magic != _MAGIC or len(blob) != _HEADER.size + n_img + n_mask:
        return None
    data = torch.frombuffer(bytearray(blob[_HEADER.size:]), dtype=torch.uint8)
    mask = data[n_img:].view(h, w) if has_mask else None
    return Decoded(data[:n_img].view(c, h, w), mask)


class _DiskStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str, prefix: str) -> Path:
        return self.root / prefix[:2] / f"{prefix}-{key}.bin"

    def read(self, path: Path) -> Optional[Decoded]:
        try:
            return _decode(path.read_bytes())
        except FileNotFoundError:
            return None
        except OSError as exc:  # an unreadable entry is a miss, never a failed run
            log.debug("cache entry %s unreadable (%s): decoding again", path, exc)
            return None

    def write(self, path: Path, value: Decoded) -> None:
        try:
            data = _encode(value)  # readers see the old state or the whole new entry:
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), binary=True)
            prefix = path.name.split("-", 1)[0]
            for stale in path.parent.glob(f"{prefix}-*.bin"):  # older decodes of the same file and transform
                if stale != path:
                    stale.unlink(missing_ok=True)
        except OSError as exc:  # a full or read-only disk only costs speed
            log.warning("cannot write decode cache entry %s (%s); continuing without it", path, exc)

    def claim(self, path: Path, image: str = "an image") -> Optional[HeldLock]:
        """The lock under which this process decodes `path` (None: no locking possible here, decode anyway), or
        False once another process has written the entry while we waited. The lock is an OS advisory lock
        (`ad.io.locks`): a process killed while decoding frees it at once, so nobody waits on a dead owner."""
        lock = path.with_name(path.name + ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            held = wait_lock(lock, f"decoding {image} into the cache", f"another process decoding {image}",
                             done=path.exists)
        except OSError:
            return None  # a read-only or lock-less cache folder: decode ourselves
        return held if held is not None else False


# ---------------------------------------------------------------------------------------------------------------
# the cache a data module uses
# ---------------------------------------------------------------------------------------------------------------
class DecodeCache:
    """What a data module reads images through. `decode(sample) -> Decoded` does the actual work.

    `mode`: `off` (decode every time), `memory`, `disk` (memory + `cache_dir`), `auto` (memory, plus disk when a
    `cache_dir` is given). `budget_mb`: memory budget (None = `default_budget_mb()`).
    """

    def __init__(self, decode: Callable, transform_key: Sequence, mode: str = "auto",
                 budget_mb: Optional[float] = None, cache_dir: "str | Path | None" = None) -> None:
        if mode not in MODES:
            raise ConfigError(f"dataset.cache={mode!r} is not one of {', '.join(MODES)}; set dataset.cache=auto")
        if mode == "disk" and not cache_dir:
            raise ConfigError("dataset.cache=disk needs a folder: set dataset.cache_dir=<dir> (or dataset.cache=memory)")
        if budget_mb is not None and float(budget_mb) < 0:
            raise ConfigError(f"dataset.cache_mb={budget_mb} is negative; set it to a size in MB or null (automatic)")
        self._decode = decode
        self.mode = mode
        self.memory = mode != "off"
        self.budget = int((default_budget_mb() if budget_mb is None else float(budget_mb)) * 2**20)
        self.disk = _DiskStore(Path(cache_dir).expanduser() / f"v{CACHE_VERSION}") \
            if mode in ("auto", "disk") and cache_dir else None
        self._tkey = json.dumps(list(transform_key))
        self.generation = next(_GENERATIONS)
        if self.disk is not None:
            # Earlier runs' images are a disk read away (~0.1 ms vs ~30 ms to decode): holding them in memory
            # would only grow an in-process sweep's RSS by one category per job.
            _STORE.drop_older(self.generation)
        self.stats: Dict[str, int] = {"memory_hits": 0, "disk_hits": 0, "decoded": 0, "not_kept": 0}
        self._warned = False

    def key(self, sample) -> Tuple[str, str]:
        """(entry key, per-path prefix); stats the image and mask file (a missing file raises FileNotFoundError)."""
        ident = [CACHE_VERSION, self._tkey, file_identity(sample.path),
                 file_identity(sample.mask_path) if sample.mask_path else None]
        full = hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:32]
        prefix = hashlib.sha1((self._tkey + os.path.abspath(sample.path)).encode()).hexdigest()[:16]
        return full, prefix

    def cached(self, sample) -> bool:
        """True when `sample` is in this process's memory (its files unchanged)."""
        if not self.memory:
            return False
        try:
            return _STORE.get(self.key(sample)[0], self.generation) is not None
        except OSError:
            return False

    def has(self, sample) -> bool:
        """True when `sample`'s files, unchanged, are already decoded in memory or on disk (so they were read in
        full before: the pre-training check may skip them)."""
        if not self.memory:
            return False
        try:
            key, prefix = self.key(sample)
        except OSError:
            return False
        return _STORE.get(key, self.generation) is not None or (
            self.disk is not None and self.disk.path(key, prefix).is_file())

    def load(self, sample) -> Decoded:
        if not self.memory:
            return self._decode(sample)
        try:
            key, prefix = self.key(sample)
        except OSError:
            return self._decode(sample)  # a missing file: let the decoder raise its one-line error
        hit = _STORE.get(key, self.generation)
        if hit is not None:
            self.stats["memory_hits"] += 1
            return hit
        value = self._load_disk(sample, key, prefix) if self.disk is not None else None
        if value is None:
            value = self._decode(sample)
            self.stats["decoded"] += 1
        if not _STORE.put(key, value, self.generation, self.budget):
            self.stats["not_kept"] += 1
            if not self._warned:
                self._warned = True
                log.info("decode cache full (%d MB, dataset.cache_mb): further images stream from %s",
                         self.budget >> 20, "the disk cache" if self.disk is not None else "their files")
        return value

    def _load_disk(self, sample, key: str, prefix: str) -> Optional[Decoded]:
        assert self.disk is not None
        path = self.disk.path(key, prefix)
        value = self.disk.read(path)
        if value is not None:
            self.stats["disk_hits"] += 1
            return value
        claimed = self.disk.claim(path, sample.path)
        # Read again either way: the entry may have been written between our miss and the claim.
        value = self.disk.read(path)
        if value is not None:
            if claimed:
                claimed.release()
            self.stats["disk_hits"] += 1
            return value
        try:
            value = self._decode(sample)
            self.stats["decoded"] += 1
            self.disk.write(path, value)
            return value
        finally:
            if claimed:
                claimed.release()


# ---------------------------------------------------------------------------------------------------------------
# prefetch
# ---------------------------------------------------------------------------------------------------------------
_EXECUTORS: Dict[int, ThreadPoolExecutor] = {}
_EXECUTOR_LOCK = threading.Lock()


def _executor(threads: int) -> ThreadPoolExecutor:
    with _EXECUTOR_LOCK:
        if threads not in _EXECUTORS:
            _EXECUTORS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="ad-decode")
        return _EXECUTORS[threads]


def resolve_decode_threads(value: "int | str | None") -> int:
    """`auto`: one thread on CPU (the other cores run the model), up to 8 when a GPU runs the model."""
    if value in (None, "auto"):
        from ad.io import available_cpus

        return max(1, min(8, available_cpus() - 1)) if torch.cuda.is_available() else 1
    return non_negative_int(value, "dataset.decode_threads")


class Prefetcher:
    """Decodes the items a loader will ask for next on background threads, `lookahead` items ahead."""

    def __init__(self, load: Callable[[int], Decoded], is_cached: Callable[[int], bool], threads: int,
                 lookahead: int = 64) -> None:
        self._load, self._is_cached = load, is_cached
        self.threads, self.lookahead = threads, lookahead
        self._pending: Dict[int, Future] = {}
        self._lock = threading.Lock()

    def take(self, index: int) -> Optional[Future]:
        with self._lock:
            return self._pending.pop(index, None)

    def run(self, order: List[int]) -> Iterator[int]:
        """Yield `order` while keeping the next `lookahead` uncached items decoding."""
        if self.threads <= 0:
            yield from order
            return
        todo = [i for i in order if not self._is_cached(i)]
        if not todo:  # everything in memory: nothing to overlap
            yield from order
            return
        pos = {i: k for k, i in enumerate(todo)}
        submitted = 0
        pool = _executor(self.threads)
        try:
            for i in order:
                k = pos.get(i, -1)
                while submitted < len(todo) and submitted <= k + self.lookahead:
                    j = todo[submitted]
                    with self._lock:
                        self._pending[j] = pool.submit(self._load, j)
                    submitted += 1
                yield i
        except GeneratorExit:  # an epoch cut short (max_steps, an error): drop what nobody will read
            with self._lock:
                for f in self._pending.values():
                    f.cancel()
                self._pending.clear()
            raise
