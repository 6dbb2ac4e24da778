"""Which stages of a run are under way (the tunnel and the pull overlap), and how long each took."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

from bastion_action.errors import Stage
from bastion_action.report import RunResult, Span


class Clock:
    """Stage timings into ``run.timings``; ``stage`` names what a timeout or a cancel interrupted."""

    def __init__(
        self, run: RunResult, report: Callable[[str], None] | None = None, origin: float | None = None
    ) -> None:
        self.run = run
        self._report = report  # debug lines: each stage's start and end
        self.origin = time.perf_counter() if origin is None else origin  # the run's start: spans count from it
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
        if self._report is not None:
            self._report(f"stage {stage.value}: started")
        how = "ended"
        try:
            yield
        except (asyncio.CancelledError, TimeoutError):
            self.interrupted = self.interrupted or stage
            how = "interrupted"
            raise
        except BaseException as exc:
            how = f"failed ({type(exc).__name__})"
            raise
        finally:
            self.active.remove(stage)
            ended = time.perf_counter()
            took = ended - started
            self.run.timings[stage.value] = self.run.timings.get(stage.value, 0.0) + took
            self.run.spans.append(Span(stage.value, started - self.origin, ended - self.origin))
            if self._report is not None:
                self._report(f"stage {stage.value}: {how} after {took:.3f} s")

    def seconds(self, stage: Stage) -> float:
        return self.run.timings.get(stage.value, 0.0)
