"""Another writer acting in the middle of an engine call, at a stage boundary the engine reports."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from tentman.billing.timing import StageTimings


class Meanwhile(StageTimings):
    """The engine's stage recorder that runs `action` once, just before the stage `name` starts:
    what a writer that does not take the organization's lock (the TentMan application) does between
    the engine's staging and its writing."""

    def __init__(self, name: str, action: Callable[[], None]) -> None:
        super().__init__()
        self._name, self._action, self.happened = name, action, False

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name == self._name and not self.happened:
            self.happened = True
            self._action()
        with super().stage(name):
            yield
