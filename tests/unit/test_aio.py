"""The run's event loop; ending work when cancellations arrive more than once: cleanup is never cut short."""

from __future__ import annotations

import asyncio

import pytest

from bastion_action import aio


async def test_cleanup_runs_to_its_end_however_often_the_caller_is_cancelled() -> None:
    done: list[str] = []

    async def cleanup() -> str:
        await asyncio.sleep(0.2)
        done.append("removed")
        return "removed"

    async def owner() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await aio.to_the_end(cleanup())

    task = asyncio.ensure_future(owner())
    await asyncio.sleep(0.01)
    for _ in range(3):
        task.cancel()
        await asyncio.sleep(0.02)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == ["removed"]


async def test_to_the_end_returns_the_cleanups_result_when_not_cancelled() -> None:
    async def cleanup() -> int:
        await asyncio.sleep(0)
        return 7

    assert await aio.to_the_end(cleanup()) == 7


async def test_stop_does_not_cancel_a_task_again_while_it_cleans_up() -> None:
    steps: list[str] = []

    async def worker() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            steps.append("cancelled")
            await asyncio.sleep(0.1)  # cleanup that a second cancel would cut short
            steps.append("cleaned up")
            raise

    task = asyncio.ensure_future(worker())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.01)
    await aio.stop(task)
    assert steps == ["cancelled", "cleaned up"]
    assert task.cancelled()


async def test_stop_waits_for_every_task_and_swallows_their_failures() -> None:
    async def fails() -> None:
        raise RuntimeError

    failing = asyncio.ensure_future(fails())
    sleeping = asyncio.ensure_future(asyncio.sleep(30))
    await asyncio.sleep(0)
    await aio.stop(failing, sleeping)
    assert sleeping.cancelled()
    assert isinstance(failing.exception(), RuntimeError)


def test_the_run_is_on_uvloop_unless_the_environment_asks_for_asyncio() -> None:
    import uvloop  # noqa: PLC0415

    assert aio.loop_factory({}) == ("uvloop", uvloop.new_event_loop, "")
    for asked in ("asyncio", " AsyncIO "):
        assert aio.loop_factory({aio.EVENT_LOOP_VARIABLE: asked}) == ("asyncio", None, "")
    assert aio.loop_factory({aio.EVENT_LOOP_VARIABLE: "uvloop"})[0] == "uvloop"
    name, _, problem = aio.loop_factory({aio.EVENT_LOOP_VARIABLE: "asycnio"})
    assert (name, problem) == ("uvloop", "BASTION_MIGRATE_EVENT_LOOP: expected asyncio or uvloop, got 'asycnio'")
    # The value is the user's: shown as a literal, a line break and all, never as a line of its own.
    _, _, problem = aio.loop_factory({aio.EVENT_LOOP_VARIABLE: "x\n::error::forged"})
    assert problem.endswith("got 'x\\n::error::forged'")
    assert "\n" not in problem
