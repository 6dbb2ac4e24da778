"""Small asyncio helpers: the run's event loop, and ending work cleanly when cancels arrive more than once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

_T = TypeVar("_T")

# uvloop's loop and transports are C: the forward's Python work per packet is what a query through the
# tunnel pays (docs/performance.md). BASTION_MIGRATE_EVENT_LOOP=asyncio runs on the standard library's.
EVENT_LOOP_VARIABLE = "BASTION_MIGRATE_EVENT_LOOP"


def loop_factory(environ: Mapping[str, str]) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The event loop to run on: its name, its factory (None for asyncio's own), and a problem with the variable."""
    asked = environ.get(EVENT_LOOP_VARIABLE, "").strip().lower()
    if asked == "asyncio":
        return "asyncio", None, ""
    problem = "" if asked in {"", "uvloop"} else f"{EVENT_LOOP_VARIABLE}: expected asyncio or uvloop, got {asked!r}"
    try:
        import uvloop  # noqa: PLC0415 - imported only when the run starts its loop
    except ImportError:  # a platform without a uvloop wheel: the standard loop does the same, slower
        return "asyncio", None, problem
    return "uvloop", uvloop.new_event_loop, problem


async def stop(*tasks: asyncio.Future[Any]) -> None:
    """Cancel each task once and wait until all have ended.

    A task already asked to stop is not cancelled again: a second cancel would break
    into its cleanup (a container being removed, a process group being ended). The wait
    itself does not pass a cancel of the caller on to the tasks.
    """
    running = [task for task in tasks if not task.done()]
    for task in running:
        if not (isinstance(task, asyncio.Task) and task.cancelling()):
            task.cancel()
    if running:
        await asyncio.wait(running)
    for task in tasks:  # mark exceptions as retrieved: each task's owner has reported what mattered
        if task.done() and not task.cancelled():
            task.exception()


async def to_the_end(cleanup: Awaitable[_T]) -> _T:
    """Run ``cleanup`` to its end even if the caller is cancelled meanwhile; then let the cancel through."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        current = asyncio.current_task()
        with contextlib.suppress(Exception):
            task.result()
        if current is not None:
            current.uncancel()
        raise asyncio.CancelledError
    return task.result()
