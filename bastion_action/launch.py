"""A command started through a runner: its task, and its output held back until it may be shown.

This is the one place a command starts. A command may start before its database is
reachable (its interpreter, imports and settings load meanwhile; the gate holds its
connections): its lines are kept until ``go_live()``, then shown in a log group.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence

from bastion_action import aio
from bastion_action.gha import Console
from bastion_action.runners import Runner

OUTPUT_LINES = 100_000  # kept for parsing; a command printing more is cut at the front


class Launched:
    """One started command; ``output`` keeps its last ``OUTPUT_LINES`` lines."""

    def __init__(self, console: Console, title: str, *, hold: bool) -> None:
        self.console = console
        self.title = title
        self.hold = hold  # fan-out: the whole output is shown at the end, not interleaved with others
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self._held: list[str] = []
        self._live = False
        self.task: asyncio.Future[int] | None = None

    def on_line(self, line: str) -> None:
        # The runner keeps the line in `output` (its `tail`); here it is only shown, or held back.
        if self._live:
            self.console.line(line)
        else:
            self._held.append(line)

    def go_live(self) -> None:
        if self._live:
            return
        self.console.open_group(self.title)
        self._live = True
        for line in self._held:
            self.console.line(line)
        self._held.clear()

    async def wait(self) -> int:
        """Show the output (live, unless held) and wait for the exit code; the group is closed either way."""
        assert self.task is not None  # noqa: S101 - launch() sets it
        if not self.hold:
            self.go_live()
        try:
            return await self.task
        finally:
            self.go_live()
            self.console.close_group()

    async def stop(self) -> None:
        """End the command if it still runs (its runner removes what it started), and wait for that."""
        if self.task is not None:
            await aio.stop(self.task)


def launch(
    console: Console, runner: Runner, argv: Sequence[str], title: str, *, database_url: str, hold: bool = False
) -> Launched:
    """Start ``argv`` through ``runner`` now; it reaches the database only through its gate."""
    launched = Launched(console, title, hold=hold)
    launched.task = asyncio.ensure_future(
        runner.run(argv, database_url=database_url, on_line=launched.on_line, tail=launched.output)
    )
    return launched
