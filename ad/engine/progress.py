"""Progress a person can see wherever the output goes.

On a terminal a tqdm bar; always (terminal, `> log`, nohup, a SLURM log, and train.log through the logging
handlers Hydra installs) a single line every `interval` seconds — what, k/N, elapsed, ETA — and one closing
line per stage. Trained models add a run-level line per epoch ("epoch k/N ... ETA", `EpochClock`).
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import Iterable, Iterator, Optional, TypeVar

log = logging.getLogger("ad.progress")

DEFAULT_INTERVAL_S = 30.0  # a line every 30 s: a 1-hour job leaves ~120 lines, a 10-s stage only its closing one
T = TypeVar("T")


def hms(seconds: float) -> str:
    """0:03:07 (hours unbounded: 27:00:00 for a day and three hours)."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(what: str, k: int, n: Optional[int], elapsed: float, unit: str = "batches") -> str:
    """`scoring test images: 4/12 batches (33%), elapsed 0:00:12, ETA 0:00:24` (no ETA before the first item
    or without a known total)."""
    if not n:
        return f"{what}: {k} {unit}, elapsed {hms(elapsed)}"
    text = f"{what}: {k}/{n} {unit} ({100 * k // n}%), elapsed {hms(elapsed)}"
    if 0 < k < n:
        text += f", ETA {hms(elapsed / k * (n - k))}"
    return text


def track(items: Iterable[T], what: str, total: Optional[int] = None, bar: bool = False,
          interval: float = DEFAULT_INTERVAL_S, unit: str = "batches") -> Iterator[T]:
    """Yield `items`, showing progress: a tqdm bar when `bar`, a log line at most every `interval` seconds
    (0: after every item), and a closing line when the iteration completes."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    t0 = last = time.perf_counter()
    k = 0
    shown: Iterable[T] = items
    redirect = nullcontext()
    if bar:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        shown = tqdm(items, desc=what, total=total, leave=False)
        redirect = logging_redirect_tqdm()  # log lines go above the bar instead of through it
    with redirect:
        for item in shown:
            yield item
            k += 1
            now = time.perf_counter()
            if now - last >= interval and (total is None or k < total):
                log.info("%s", progress_line(what, k, total, now - t0, unit))
                last = now
        log.info("%s: %d%s %s done in %s", what, k, f"/{total}" if total else "", unit, hms(time.perf_counter() - t0))


class EpochClock:
    """Run-level progress of a trained model: `epoch 3/50, elapsed 0:01:02, ETA 0:16:10` after each epoch
    (ETA from the mean epoch time so far; an upper bound when early stopping may end the run sooner)."""

    def __init__(self, total_epochs: Optional[int], start_epoch: int = 0, early_stopping: bool = False) -> None:
        self.total, self.start, self.early = total_epochs, start_epoch, early_stopping
        self.t0 = time.perf_counter()

    def text(self, epoch: int) -> str:
        """After 0-based `epoch` has finished."""
        done = epoch + 1
        elapsed = time.perf_counter() - self.t0
        if not self.total:
            return f"epoch {done}, elapsed {hms(elapsed)}"
        text = f"epoch {done}/{self.total}, elapsed {hms(elapsed)}"
        ran = done - self.start
        if ran > 0 and done < self.total:
            eta = elapsed / ran * (self.total - done)
            text += f", ETA {'≤' if self.early else ''}{hms(eta)}"
        return text
