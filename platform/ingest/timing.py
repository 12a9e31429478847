"""Seconds spent per stage, accumulated over a video's work: `with times.stage("audio"): ...`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class StageTimes:
    """Wall-clock seconds per stage; a stage that raises is not counted (its time belongs to no result)."""

    def __init__(self, *stages: str) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(stages, 0.0)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
