"""Fixtures for the unit tests: in-process SSH servers and TCP targets (see sshd.py), no root, no lab."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import uvloop
from sshd import SSHD, Target, start_sshd, tcp_target


@pytest.fixture
async def sshd() -> AsyncIterator[SSHD]:
    """A running SSH server on 127.0.0.1 (password and key auth, direct-tcpip allowed)."""
    async with start_sshd() as server:
        yield server


@pytest.fixture
async def echo() -> AsyncIterator[Target]:
    """A TCP echo server on 127.0.0.1 standing in for the database."""
    async with tcp_target() as target:
        yield target


# Where the event loop's own transports and subprocesses are exercised, each test runs on both loops:
# uvloop, which the action runs on, and asyncio's, its fallback (BASTION_MIGRATE_EVENT_LOOP=asyncio).
# Their transports differ at the edges (uvloop raises on a closed one; asyncio drops the data).
BOTH_LOOPS = {"test_gate.py", "test_tunnel_ssh.py", "test_tunnel_hops.py", "test_launch.py", "test_resident.py"}


def pytest_asyncio_loop_factories(
    config: pytest.Config,  # noqa: ARG001
    item: pytest.Item,
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name in BOTH_LOOPS:
        return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}  # one factory: the test keeps its name
