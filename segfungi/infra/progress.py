"""Progress of every long loop (bank shards, evaluation batches, predicted images,
classify's negatives batch and feature extraction).

On a terminal: a tqdm bar. Anywhere else (a log file, CI, a pipe) a redrawn bar is one
line of carriage returns that says nothing until the loop ends, so there
:class:`ProgressLines` writes a plain line when the loop starts, then at most one every
``interval`` seconds, and one when it ends:

    simclr negatives: 40/256 (16%), 310 s, 0.13/s, ~1662 s left

The rate is items per second since the start; the estimate assumes it stays.
`progress_bar` is the bar to `update()` by hand; `progress_iter` wraps an iterable.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, TextIO, TypeVar

__all__ = ["ProgressLines", "progress_bar", "progress_iter"]

Item = TypeVar("Item")


class ProgressLines:
    """``update(n)`` / ``close()`` like a tqdm bar, printing plain lines to ``stream``."""

    def __init__(self, total: int, desc: str, interval: float = 30.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.interval = int(total), desc, float(interval)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.n = 0
        self.start = self._last = clock()
        self.closed = False
        self._write(self.start)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = self.clock()
        if now - self._last >= self.interval and self.n < self.total:
            self._write(now)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(self.clock())

    def line(self, now: float) -> str:
        elapsed = now - self.start
        text = f"{self.desc}: {self.n}/{self.total}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        if self.n == 0:
            return text
        rate = self.n / elapsed if elapsed > 0 else float("inf")
        text += f", {elapsed:.0f} s, {rate:.2f}/s"
        left = self.total - self.n
        if left > 0 and elapsed > 0:
            text += f", ~{left / rate:.0f} s left"
        return text

    def _write(self, now: float) -> None:
        self._last = now
        print(self.line(now), file=self.stream, flush=True)


def progress_bar(total: int, desc: str, enabled: bool, interval: float = 30.0, stream: TextIO | None = None):
    """A tqdm bar on a terminal, :class:`ProgressLines` elsewhere, nothing when not ``enabled``."""
    from tqdm.auto import tqdm

    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return tqdm(total=total, disable=True)
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=stream)
    return ProgressLines(total, desc, interval, stream)


def progress_iter(items: Iterable[Item], desc: str, enabled: bool = True, total: int | None = None,
                  interval: float = 30.0, stream: TextIO | None = None) -> Iterator[Item]:
    """Yield `items`, showing progress as `progress_bar` does (`total` defaults to len(items))."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    bar = progress_bar(len(items) if total is None else total, desc, enabled, interval, stream)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()
