"""The optional timing of an engine call's SQL stages, by name (`make bench` prints them)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager


class StageTimings:
    """Wall seconds per named stage of one engine call, in the order the stages first ran.

    Passed to an engine by whoever wants to know where the time goes (`make bench`); a stage that
    runs more than once (the write stages, when bad leases are bisected) adds up. Engines called
    without one time nothing (`stage_clock(None)`).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


class _Untimed:
    """The stage clock of a call nobody measures: one shared, stateless no-op context."""

    _nothing = contextlib.nullcontext()

    def stage(self, name: str) -> AbstractContextManager[None]:
        return self._nothing


_UNTIMED = _Untimed()

# What an engine times its stages with.
StageClock = StageTimings | _Untimed


def stage_clock(timings: StageTimings | None) -> StageClock:
    """The caller's recorder, else the no-op one."""
    return _UNTIMED if timings is None else timings
