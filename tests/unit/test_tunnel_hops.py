"""The hop chain's pure logic: order, names in messages, error translation, "any hop ends" waiting."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import asyncssh
import pytest

from bastion_action import settings, tunnel
from bastion_action.errors import Stage

FINGERPRINT = "SHA256:" + "A" * 43
PRESENTED = "SHA256:" + "B" * 43


def ssh_settings(jump_hosts: str = "", **overrides: Any) -> settings.SSHSettings:
    raw = {
        "mode": "lightweight",
        "command": "probe",
        "ssh-host": "10.0.4.2",
        "ssh-user": "deploy",
        "ssh-password": "pw",
        "ssh-host-fingerprint": FINGERPRINT,
        "ssh-jump-hosts": jump_hosts,
        "db-host": "10.0.0.5",
        "db-name": "app",
        "db-user": "migrator",
        "db-password": "pw",
    }
    return dataclasses.replace(settings.parse(raw, environ={}).ssh, **overrides)


def presenting(fingerprint: str) -> tunnel._Client:
    client = tunnel._Client(())
    client.presented = fingerprint
    return client


def test_chain_is_the_jump_hosts_in_order_then_the_bastion() -> None:
    ssh = ssh_settings("ops@outer.example:2200, inner.example")
    chain = tunnel.hop_chain(ssh)
    assert [str(hop) for hop in chain] == ["ops@outer.example:2200", "deploy@inner.example:22", "deploy@10.0.4.2:22"]
    assert tunnel.describe_hop(chain, 0) == "jump host ops@outer.example:2200 (hop 1 of 3)"
    assert tunnel.describe_hop(chain, 1) == "jump host deploy@inner.example:22 (hop 2 of 3)"
    assert tunnel.describe_hop(chain, 2) == "the bastion deploy@10.0.4.2:22"
    assert tunnel.hop_chain(ssh_settings()) == (settings.JumpHost("deploy", "10.0.4.2", 22),)


def test_host_key_error_names_the_middle_hop_and_what_it_presented() -> None:
    ssh = ssh_settings("ops@outer.example:2200, inner.example")
    chain = tunnel.hop_chain(ssh)
    error = tunnel._translate(
        asyncssh.HostKeyNotVerifiable("Host key is not trusted"), ssh, presenting(PRESENTED), chain, 1
    )
    assert error.stage is Stage.TUNNEL
    assert error.anchor == "host-key"
    assert "jump host deploy@inner.example:22 (hop 2 of 3)" in error.message
    assert PRESENTED in error.message
    assert "ssh-keyscan -p 22 inner.example" in error.hint
    assert "from outer.example" in error.hint


def test_direct_connection_keeps_the_bastion_messages() -> None:
    ssh = ssh_settings()
    error = tunnel._translate(asyncssh.HostKeyNotVerifiable("x"), ssh, presenting(PRESENTED), (), -1)
    assert error.message.startswith("host key of 10.0.4.2:22 is not trusted")
    assert f"the bastion presented {PRESENTED}" in error.message
    denied = tunnel._translate(asyncssh.PermissionDenied("x"), ssh, None)
    assert denied.message == (
        "authentication to deploy@10.0.4.2:22 was refused "
        "(ssh-user from the step's input ssh-user; ssh-password from the step's input ssh-password)"
    )


@pytest.mark.parametrize(
    ("exc", "index", "expected"),
    [
        (
            asyncssh.PermissionDenied("x"),
            0,
            "authentication to jump host ops@outer.example:22 (hop 1 of 2) was refused",
        ),
        (TimeoutError(), 1, "no SSH answer from the bastion deploy@10.0.4.2:22"),
        (
            asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "Connection refused"),
            1,
            "jump host ops@outer.example:22 (hop 1 of 2) could not connect to 10.0.4.2:22: Connection refused",
        ),
        (ConnectionRefusedError(), 0, "outer.example:22 refused the connection (jump host ops@outer.example:22"),
    ],
)
def test_other_failures_name_the_hop(exc: BaseException, index: int, expected: str) -> None:
    ssh = ssh_settings("ops@outer.example")
    error = tunnel._translate(exc, ssh, None, tunnel.hop_chain(ssh), index)
    assert expected in error.message


class FakeConnection:
    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def wait_closed(self) -> None:
        await self.closed.wait()


async def test_wait_closed_returns_when_any_connection_of_the_chain_ends() -> None:
    bastion, outer, inner = FakeConnection(), FakeConnection(), FakeConnection()
    opened = tunnel.Tunnel(port=1, connection=bastion, hops=(outer, inner))  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(opened.wait_closed())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    inner.closed.set()  # the middle hop drops; the bastion's connection has not noticed yet
    await asyncio.wait_for(waiting, 1)
    assert not bastion.closed.is_set()
