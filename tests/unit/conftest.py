"""Fixtures for the unit tests: in-process SSH servers and TCP targets (see sshd.py), no root, no lab."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
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
