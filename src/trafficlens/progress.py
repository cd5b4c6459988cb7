"""Progress on long steps, on stderr: which step of how many runs and when the job should end
(compare, audit), a bar over sessions (predict, explain) and one over input bytes (prep). --quiet silences both, as it
silences every line a command writes on stderr."""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`: short enough for a log line, exact enough for an ETA."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Steps:
    """Counts the steps of a job whose number is known up front (models x seeds, audit settings).

    `start(name)` logs `[i/n] name (elapsed 1 min 10 s, about 2 min 20 s left)`. The estimate is
    the mean of the finished steps times the steps left: steps differ in cost (a tree fits in
    seconds, a CNN in minutes), so it is a guide that sharpens as steps finish, and the first
    step says only what is elapsed."""

    def __init__(self, total: int, log: Callable[[str], None], clock: Callable[[], float] = time.perf_counter):
        self.total, self.log, self.clock = max(1, int(total)), log, clock
        self.t0 = clock()
        self.done = 0
        self.running = False

    def start(self, name: str) -> str:
        if self.running:
            self.done += 1
        self.running = True
        elapsed = self.clock() - self.t0
        if self.done:
            left = elapsed / self.done * (self.total - self.done)
            when = f"elapsed {duration(elapsed)}, about {duration(left)} left"
        else:
            when = f"elapsed {duration(elapsed)}"
        line = f"[{min(self.done + 1, self.total)}/{self.total}] {name} ({when})"
        self.log(line)
        return line

    def finish(self) -> str:
        """The closing line: every step done and the time they took."""
        self.done, self.running = self.total, False
        line = f"[{self.total}/{self.total}] done in {duration(self.clock() - self.t0)}"
        self.log(line)
        return line


def session_bar(total: int | None = None, desc: str = "sessions", enabled: bool | None = None, file=None,
                unit: str = "sessions"):
    """A bar on stderr counting sessions (done, rate, and with a total an ETA), to use as a context
    manager and `update(n)`. `enabled=None` shows it only on a terminal, so logs and pipes get no
    carriage returns; a disabled bar accepts the same calls and prints nothing."""
    from tqdm import tqdm

    stream = file if file is not None else sys.stderr
    return tqdm(total=total, desc=desc, unit=f" {unit}", file=stream, dynamic_ncols=True, leave=False,
                disable=(not _is_terminal(stream)) if enabled is None else not enabled)


class _NoBar:
    """What a disabled bar needs to answer, without importing tqdm (prep's start-up counts)."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def byte_bar(total: int, enabled: bool, desc: str = "prep"):
    """A bar of input bytes read (prep), when `enabled`; otherwise one that prints nothing."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, dynamic_ncols=True)


def counted(items: Iterable[T], bar) -> Iterator[T]:
    """Yields `items`, adding one to `bar` after each."""
    for item in items:
        yield item
        bar.update(1)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
