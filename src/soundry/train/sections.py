"""Named sections of a training step, timed only while a profile is running.

The engine, the updater, the GAN step and the tasks mark their parts of a step with
`section("data")`, `section("backward/generator")`, ... When no `SectionTimer` is active
a section costs one global lookup. When one is (`soundry profile`), each section's time is
exclusive: time spent in a nested section counts for the inner one only, so the sections
of a step add up to (at most) the step. On a GPU the timer synchronises the device at each
boundary so that a section is charged for its own kernels (which slows the step a little;
the profile says so).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch

_ACTIVE: SectionTimer | None = None


class SectionTimer:
    """Exclusive wall time per section name while active (see the module docstring)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._stack: list[list] = []  # [name, start, time of nested sections]
        self.sync = device is not None and device.type == "cuda"

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def enter(self, name: str) -> None:
        self._stack.append([name, self._now(), 0.0])

    def exit(self) -> None:
        name, start, nested = self._stack.pop()
        spent = self._now() - start
        self.totals[name] += spent - nested
        self.counts[name] += 1
        if self._stack:
            self._stack[-1][2] += spent

    def reset(self) -> None:
        self.totals.clear()
        self.counts.clear()

    def __enter__(self) -> SectionTimer:
        global _ACTIVE
        self._previous = _ACTIVE
        _ACTIVE = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE
        _ACTIVE = self._previous


@contextlib.contextmanager
def _timed(timer: SectionTimer, name: str) -> Iterator[None]:
    timer.enter(name)
    try:
        yield
    finally:
        timer.exit()


_NULL = contextlib.nullcontext()


def section(name: str) -> contextlib.AbstractContextManager:
    """A context that charges its time to `name` while a `SectionTimer` is active."""
    timer = _ACTIVE
    if timer is None:
        return _NULL
    return _timed(timer, name)


__all__ = ["SectionTimer", "section"]
