"""Which stages of a run are under way (the tunnel and the pull overlap), and how long each took."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from bastion_action.errors import Stage
from bastion_action.report import RunResult


class Clock:
    """Stage timings into ``run.timings``; ``stage`` names what a timeout or a cancel interrupted."""

    def __init__(self, run: RunResult) -> None:
        self.run = run
        self.active: list[Stage] = []
        self.last = Stage.SETTINGS
        self.interrupted: Stage | None = None  # the first stage a timeout or cancel unwound

    @property
    def stage(self) -> Stage:
        return self.active[0] if self.active else self.interrupted or self.last

    @contextlib.contextmanager
    def stage_of(self, stage: Stage) -> Iterator[None]:
        self.active.append(stage)
        self.last = stage
        started = time.perf_counter()
        try:
            yield
        except (asyncio.CancelledError, TimeoutError):
            self.interrupted = self.interrupted or stage
            raise
        finally:
            self.active.remove(stage)
            self.run.timings[stage.value] = self.run.timings.get(stage.value, 0.0) + time.perf_counter() - started

    def seconds(self, stage: Stage) -> float:
        return self.run.timings.get(stage.value, 0.0)
