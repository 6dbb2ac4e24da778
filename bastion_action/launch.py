"""A command started through a runner: its task, and its output held back until it may be shown.

This is the one place a command starts. A command may start before its database is
reachable (its interpreter, imports and settings load meanwhile; the gate holds its
connections): its lines are kept until ``go_live()``, then shown in a log group.

What is shown and what is kept for parsing differ. Once live, an unfinished line
(Django's ``  Applying app.0003_big...`` has no newline until the migration ends)
is shown after ``PARTIAL_LINE_DELAY`` of quiet, and its rest later as a
continuation starting with ``…``; ``output`` gets the whole line. A command quiet
for ``HEARTBEAT_FIRST`` seconds gets a ``still running`` line, then one every
``HEARTBEAT_EVERY`` seconds while it stays quiet. Nothing kept grows with the
output: see ``bastion_action/output.py``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from bastion_action import aio
from bastion_action.gha import Console
from bastion_action.output import HeadAndTail, LineSplitter, Tail, cut_line, cut_marker
from bastion_action.runners import Runner

OUTPUT_LINES = 100_000  # kept for parsing; a command printing more is cut at the front
OUTPUT_CHARS = 4 << 20  # the same, in characters: enough for Django's output of thousands of migrations
HELD_LINES = 20_000  # held back in a fan-out (first and last half each); the rest is cut, and the cut is said
HELD_CHARS = 2 << 20
PARTIAL_LINE_DELAY = 0.4  # seconds
HEARTBEAT_FIRST = 30.0  # seconds
HEARTBEAT_EVERY = 60.0  # seconds
CONTINUED = "…"

_APPLYING = re.compile(r"\s*Applying (\S+?)\.\.\.(.*)")
_APPLIED = re.compile(r"\s*(?:OK|FAKED)\b")


def duration(seconds: float) -> str:
    """``45 s``, ``2 min 10 s``, ``1 h 5 min``."""
    whole = int(seconds)
    if whole < 60:  # noqa: PLR2004 - a minute
        return f"{whole} s"
    minutes, whole = divmod(whole, 60)
    if minutes < 60:  # noqa: PLR2004 - an hour
        return f"{minutes} min {whole} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class Launched:
    """One started command; ``output`` keeps its last lines (bounded) for parsing and the summary."""

    def __init__(self, console: Console, title: str, *, hold: bool, conceal: str = "") -> None:
        self.console = console
        self.title = title
        self.hold = hold  # fan-out: the whole output is shown at the end, not interleaved with others
        self.conceal = conceal  # lines starting with it are kept for parsing, not shown (a result for the action)
        self.output = Tail(OUTPUT_LINES, OUTPUT_CHARS)
        self._held = HeadAndTail(HELD_LINES, HELD_CHARS)
        self._live = False
        self._lines = LineSplitter()
        self._shown = 0  # characters of the unfinished line already shown
        self._loop = asyncio.get_running_loop()
        self._heard = self._loop.time()  # when output last arrived
        self._quiet_beats = 0  # heartbeats since then
        self._partial_timer: asyncio.TimerHandle | None = None
        self._migration: tuple[str, float] | None = None  # the one being applied, and since when
        self.task: asyncio.Future[int] | None = None

    # -- from the runner ---------------------------------------------------------
    def feed(self, chunk: bytes | str) -> None:
        self._heard = self._loop.time()
        self._quiet_beats = 0
        for line in self._lines.feed(chunk):
            self._complete(line)
        if self._lines.unfinished and self._live and self._partial_timer is None:
            self._partial_timer = self._loop.call_at(self._heard + PARTIAL_LINE_DELAY, self._show_partial)

    def note(self, line: str) -> None:
        self._show(line)

    def end(self) -> None:
        """The command has ended: its last line is complete even without a newline."""
        for line in self._lines.close():
            self._complete(line)
        if self._partial_timer is not None:
            self._partial_timer.cancel()
            self._partial_timer = None

    # -- shown -------------------------------------------------------------------
    def _show(self, line: str) -> None:
        if self._live:
            self.console.line(line)
        else:
            self._held.append(line)

    def _complete(self, line: str) -> None:
        line = self._secret_safe(line)
        self.output.append(line)
        self._follow_migration(line)
        shown, self._shown = self._shown, 0
        if self._concealed(line):
            return
        if not shown:
            self._show(line)
        elif line[shown:]:
            self._show(CONTINUED + line[shown:])

    def _secret_safe(self, line: str) -> str:
        """A line cut short (output.py keeps a long line's head) must not end inside a secret."""
        cut = cut_line(line)
        if cut is None:
            return line
        head, more = cut
        safe = self.console.safe_length(head)
        return head[:safe] + cut_marker(more + len(head) - safe)

    def _concealed(self, line: str, *, finished: bool = True) -> bool:
        """A line not to show; unfinished, one that may still become such a line."""
        if not self.conceal:
            return False
        return line.startswith(self.conceal) or (not finished and self.conceal.startswith(line))

    def _show_partial(self) -> None:
        self._partial_timer = None
        due = self._heard + PARTIAL_LINE_DELAY
        if due > self._loop.time():  # more came meanwhile: wait for quiet again
            self._partial_timer = self._loop.call_at(due, self._show_partial)
            return
        partial = self._lines.partial
        if self._concealed(partial, finished=False):
            return
        self._follow_migration(partial, finished=False)
        # Each shown piece is redacted on its own: a piece never ends inside what could be a secret's start.
        safe = self.console.safe_length(partial)
        if safe > self._shown:
            self.console.line(CONTINUED + partial[self._shown : safe] if self._shown else partial[:safe])
            self._shown = safe

    def go_live(self) -> None:
        if self._live:
            return
        self.console.open_group(self.title)
        self._live = True
        for line in self._held:
            self.console.line(line)
        self._held.clear()
        if self._lines.unfinished:
            self._partial_timer = self._loop.call_at(self._heard + PARTIAL_LINE_DELAY, self._show_partial)

    # -- still running -------------------------------------------------------------
    def _follow_migration(self, line: str, *, finished: bool = True) -> None:
        applying = _APPLYING.match(line)
        if applying:
            name, rest = applying.groups()
            if finished and _APPLIED.match(rest):
                self._migration = None
            elif self._migration is None or self._migration[0] != name:
                self._migration = (name, self._heard)
        elif finished and _APPLIED.match(line):
            self._migration = None  # " OK" after the migration's own output

    async def _heartbeat(self) -> None:
        started = self._heard = self._loop.time()
        while True:
            due = self._heard + HEARTBEAT_FIRST + self._quiet_beats * HEARTBEAT_EVERY
            if due > self._loop.time():
                await asyncio.sleep(due - self._loop.time())
                continue
            self._quiet_beats += 1
            self._follow_migration(self._lines.partial, finished=False)
            now = self._loop.time()
            if self._migration is not None:
                name, since = self._migration
                text = f"still running: {name} ({duration(now - since)})"
            else:
                text = f"still running ({duration(now - started)})"
            # Held back, the command's own lines wait; this one says now that it has not hung.
            self.console.line(text if self._live else f"{self.title}: {text}")

    # -- lifetime ------------------------------------------------------------------
    async def wait(self) -> int:
        """Show the output (live, unless held) and wait for the exit code; the group is closed either way."""
        assert self.task is not None  # noqa: S101 - launch() sets it
        if not self.hold:
            self.go_live()
        heartbeat = asyncio.ensure_future(self._heartbeat())
        try:
            return await self.task
        finally:
            await aio.stop(heartbeat)
            self.go_live()
            self.console.close_group()

    async def stop(self) -> None:
        """End the command if it still runs (its runner removes what it started), and wait for that."""
        if self.task is not None:
            await aio.stop(self.task)


async def _run(launched: Launched, runner: Runner, argv: Sequence[str], database_url: str, name: str) -> int:
    try:
        return await runner.run(argv, database_url=database_url, output=launched, application_name=name)
    finally:
        launched.end()


def launch(
    console: Console,
    runner: Runner,
    argv: Sequence[str],
    title: str,
    *,
    database_url: str,
    hold: bool = False,
    conceal: str = "",
    application_name: str = "",
) -> Launched:
    """Start ``argv`` through ``runner`` now; it reaches the database only through its gate.

    Lines starting with ``conceal`` (when given) are kept in ``output`` but not shown.
    ``application_name`` names the command's database sessions (see ``Runner.run``).
    """
    launched = Launched(console, title, hold=hold, conceal=conceal)
    launched.task = asyncio.ensure_future(_run(launched, runner, argv, database_url, application_name))
    return launched
