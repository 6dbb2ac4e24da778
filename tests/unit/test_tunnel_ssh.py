"""Connecting, failing and tearing down against real in-process SSH servers: errors, drops, jump hosts, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from sshd import HOST, SSHD, Target, closed_port, pending_tasks, refuses, silent_listener, start_sshd, tunnel_tasks

from bastion_action import gates, loopback, tunnel
from bastion_action.errors import Stage, TunnelError

ROOT = Path(__file__).resolve().parents[2]

OTHER_FINGERPRINT = "SHA256:" + "A" * 43


async def connect_error(ssh: Any) -> TunnelError:
    with pytest.raises(TunnelError) as caught:
        async with tunnel.connect(ssh, tunnel.load_credentials(ssh)):
            pytest.fail("connected")
    assert caught.value.stage is Stage.TUNNEL
    return caught.value


async def echoes(port: int, data: bytes = b"ping") -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.readexactly(len(data)), 5)
    finally:
        writer.close()


async def test_password_and_key_auth_both_connect(sshd: SSHD, echo: Target) -> None:
    for ssh in (sshd.settings(), sshd.settings(password=None, private_key=sshd.client_key)):
        async with tunnel.open_tunnel(ssh, tunnel.load_credentials(ssh), echo.host, echo.port) as opened:
            assert await echoes(opened.port) == b"ping"
    assert echo.accepted == 2


async def test_a_pinned_fingerprint_is_enough(sshd: SSHD) -> None:
    ssh = sshd.settings(known_hosts=None, host_fingerprints=(OTHER_FINGERPRINT, sshd.fingerprint))
    async with tunnel.connect(ssh, tunnel.load_credentials(ssh)) as chain:
        assert not chain.connection.is_closed()


@pytest.mark.parametrize(
    "trust",
    [
        pytest.param({"known_hosts": None, "host_fingerprints": (OTHER_FINGERPRINT,)}, id="fingerprint"),
        pytest.param({"known_hosts": "other"}, id="known-hosts"),
    ],
)
async def test_wrong_host_key_names_the_fingerprint_presented(sshd: SSHD, trust: dict[str, Any]) -> None:
    if trust.get("known_hosts") == "other":
        other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
        trust = {"known_hosts": f"[{HOST}]:{sshd.port} {other}"}
    error = await connect_error(sshd.settings(**trust))
    assert error.anchor == "host-key"
    assert error.message == (
        f"host key of {HOST}:{sshd.port} is not trusted (possible man-in-the-middle); "
        f"the bastion presented {sshd.fingerprint}"
    )


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param({"password": "wrong"}, id="password"),
        pytest.param({"password": None, "private_key": "generated"}, id="unknown-key"),
    ],
)
async def test_refused_credentials_are_an_authentication_error(sshd: SSHD, credentials: dict[str, Any]) -> None:
    if credentials.get("private_key") == "generated":
        credentials["private_key"] = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    error = await connect_error(sshd.settings(**credentials))
    assert error.anchor == "authentication"
    assert error.message == f"authentication to {sshd.user}@{HOST}:{sshd.port} was refused"


async def test_closed_port_is_a_refused_connection(sshd: SSHD) -> None:
    port = closed_port()
    error = await connect_error(sshd.settings(port=port))
    assert error.message == f"{HOST}:{port} refused the connection"
    assert "sshd is running" in error.hint


async def test_silent_server_is_a_connect_timeout_within_the_setting(sshd: SSHD) -> None:
    with silent_listener() as port:
        started = asyncio.get_running_loop().time()
        error = await connect_error(sshd.settings(port=port, connect_timeout=0.3))
        elapsed = asyncio.get_running_loop().time() - started
    assert error.anchor == "timeout"
    assert error.message == f"no SSH answer from {HOST}:{port} within 0.3 s"
    assert elapsed < 2
    assert tunnel_tasks() == set()
    assert await pending_tasks() == set()


async def test_server_side_drop_ends_the_tunnel_and_its_connections_promptly(sshd: SSHD, echo: Target) -> None:
    ssh = sshd.settings()
    async with tunnel.open_tunnel(ssh, tunnel.load_credentials(ssh), echo.host, echo.port) as opened:
        reader, writer = await asyncio.open_connection(HOST, opened.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        waiting = asyncio.ensure_future(opened.wait_closed())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        sshd.drop()
        await asyncio.wait_for(waiting, 2)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        # Later connections end at once too: no channel can be opened any more.
        assert await asyncio.wait_for(echoes_or_nothing(opened.port), 2) == b""
        assert opened.forwards is not None
        assert opened.forwards.refusal is not None
        assert opened.forwards.refusal.reason == "SSH connection closed"
    assert tunnel_tasks() == set()
    assert await pending_tasks() == set()


async def echoes_or_nothing(port: int) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(b"ping")
        with contextlib.suppress(ConnectionResetError):
            return await reader.read()
        return b""
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def jump_and_bastion() -> AsyncIterator[tuple[SSHD, SSHD]]:
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    async with start_sshd(client_key) as jump, start_sshd(client_key) as bastion:
        yield jump, bastion


def through(jump: SSHD, bastion: SSHD, **overrides: Any) -> Any:
    """Key auth on both hops (jump hosts use the bastion's credentials), both host keys trusted."""
    fields = {
        "password": None,
        "private_key": bastion.client_key,
        "known_hosts": f"{jump.known_hosts}\n{bastion.known_hosts}",
        "jump_hosts": (jump.hop,),
    }
    return bastion.settings(**(fields | overrides))


# The in-process jump server forwards with asyncssh's own server-side forwarder, which stalls on uvloop
# (the client does not: tests/integration/test_jump.py runs the action on uvloop through OpenSSH hops).
@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_jump_host_chain_forwards_through_both_servers(echo: Target) -> None:
    async with jump_and_bastion() as (jump, bastion):
        ssh = through(jump, bastion)
        async with (
            tunnel.connect(ssh, tunnel.load_credentials(ssh)) as chain,
            tunnel.forward(chain, echo.host, echo.port) as opened,
        ):
            assert len(chain.hops) == 1
            assert opened.hops == chain.hops
            assert await echoes(opened.port) == b"ping"
            assert jump.opened == [(HOST, bastion.port)]
            assert bastion.opened == [(echo.host, echo.port)]
            # A dropped jump host ends the run's tunnel.
            waiting = asyncio.ensure_future(opened.wait_closed())
            jump.drop()
            await asyncio.wait_for(waiting, 2)
    assert tunnel_tasks() == set()
    assert await pending_tasks() == set()


# The in-process jump server forwards with asyncssh's own server-side forwarder, which stalls on uvloop
# (the client does not: tests/integration/test_jump.py runs the action on uvloop through OpenSSH hops).
@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_jump_host_errors_name_the_hop() -> None:
    async with jump_and_bastion() as (jump, bastion):
        wrong_key = await connect_error(through(jump, bastion, known_hosts=jump.known_hosts))
        assert wrong_key.anchor == "host-key"
        assert f"the bastion {bastion.user}@{HOST}:{bastion.port}" in wrong_key.message
        assert bastion.fingerprint in wrong_key.message

        port = closed_port()
        unreachable = await connect_error(through(jump, bastion, port=port))
        assert unreachable.message.startswith(
            f"jump host {jump.user}@{HOST}:{jump.port} (hop 1 of 2) could not connect to {HOST}:{port}"
        )


async def cancelled_inside(scenario: Callable[[Callable[[int], None]], Awaitable[None]]) -> int:
    """Run ``scenario`` in a task; once it reports a port (from inside its contexts), cancel it; return the port."""
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(scenario(ready.set_result))
    port = await asyncio.wait_for(asyncio.shield(ready), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return port


async def test_cancelled_gate_leaves_no_listener_no_task_and_ends_held_connections() -> None:
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def scenario(ready: Callable[[int], None]) -> None:
        async with gates.gate(loopback.bind_loopback(0)) as opened:
            held.append(await asyncio.open_connection(HOST, opened.port))
            ready(opened.port)
            await asyncio.Event().wait()

    port = await cancelled_inside(scenario)
    assert await refuses(port)
    assert tunnel_tasks() == set()
    assert await pending_tasks() == set()
    reader, writer = held[0]
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()


async def test_cancelled_forward_leaves_no_listener_and_no_task_and_keeps_the_chain(sshd: SSHD, echo: Target) -> None:
    ssh = sshd.settings()
    async with tunnel.connect(ssh, tunnel.load_credentials(ssh)) as chain:

        async def scenario(ready: Callable[[int], None]) -> None:
            async with tunnel.forward(chain, echo.host, echo.port) as opened:
                assert await echoes(opened.port) == b"ping"
                ready(opened.port)
                await asyncio.Event().wait()

        port = await cancelled_inside(scenario)
        assert await refuses(port)
        assert not chain.connection.is_closed()  # the chain belongs to connect(), shared by forwards
    assert tunnel_tasks() == set()
    assert await pending_tasks() == set()
    await until_no_connections(sshd)


async def test_cancelled_connect_closes_its_connections_and_leaves_no_task(sshd: SSHD) -> None:
    ssh = sshd.settings()

    async def scenario(ready: Callable[[int], None]) -> None:
        async with tunnel.connect(ssh, tunnel.load_credentials(ssh)):
            ready(0)
            await asyncio.Event().wait()

    await cancelled_inside(scenario)
    await until_no_connections(sshd)
    assert tunnel_tasks() == set()
    assert await pending_tasks() == set()


async def test_connect_cancelled_during_the_handshake_leaves_no_task(sshd: SSHD) -> None:
    with silent_listener() as port:
        ssh = sshd.settings(port=port)
        connecting = asyncio.ensure_future(tunnel.connect(ssh, tunnel.load_credentials(ssh)).__aenter__())
        await asyncio.sleep(0.1)
        assert not connecting.done()
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
    assert tunnel_tasks() == set()
    assert await pending_tasks() == set()


async def until_no_connections(sshd: SSHD) -> None:
    async with asyncio.timeout(2):
        while sshd.connections:  # noqa: ASYNC110 - the server's set changes on connection_lost, no event
            await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def rsa_host_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-rsa", key_size=2048)


def _sha1_only(key: asyncssh.SSHKey, **algs: list[str]) -> dict[str, Any]:
    """create_server options of an sshd from before OpenSSH 7.2: its RSA host key signs with SHA-1 only."""
    pair = asyncssh.load_keypairs([key])[0]
    pair.host_key_algorithms = [b"ssh-rsa"]
    return {"host_key": key, "server_host_keys": [pair], **algs}


_SHA1_KEX_AND_MACS = {
    "kex_algs": ["diffie-hellman-group14-sha1", "diffie-hellman-group-exchange-sha1"],
    "mac_algs": ["hmac-sha1", "hmac-sha1-96"],
    "encryption_algs": ["aes128-ctr"],
}


@pytest.mark.parametrize(
    ("host_key_sha1_only", "algs"),
    [
        pytest.param(False, {"kex_algs": ["diffie-hellman-group14-sha1"]}, id="sha1-kex"),
        pytest.param(False, {"kex_algs": ["diffie-hellman-group-exchange-sha1"]}, id="sha1-gex"),
        pytest.param(
            False, {"mac_algs": ["hmac-sha1-etm@openssh.com"], "encryption_algs": ["aes128-ctr"]}, id="sha1-mac"
        ),
        pytest.param(True, {}, id="ssh-rsa-host-key"),
        pytest.param(True, _SHA1_KEX_AND_MACS, id="all-sha1"),
    ],
)
@pytest.mark.filterwarnings(
    "ignore:Diffie-Hellman over finite fields:cryptography.utils.CryptographyDeprecationWarning"
)
async def test_a_sha1_only_server_is_refused_naming_the_input(
    rsa_host_key: asyncssh.SSHKey, host_key_sha1_only: bool, algs: dict[str, list[str]]
) -> None:
    options = _sha1_only(rsa_host_key, **algs) if host_key_sha1_only else {"host_key": rsa_host_key, **algs}
    async with start_sshd(**options) as old:
        error = await connect_error(old.settings())
    assert error.anchor == "legacy-algorithms"
    assert "SHA-1 algorithms" in error.message
    assert "ssh-legacy-algorithms: true" in (error.hint or "")


# The server's finite-field Diffie-Hellman (group14-sha1) is what cryptography deprecates.
@pytest.mark.filterwarnings(
    "ignore:Diffie-Hellman over finite fields:cryptography.utils.CryptographyDeprecationWarning"
)
async def test_ssh_legacy_algorithms_accepts_a_sha1_only_server(rsa_host_key: asyncssh.SSHKey, echo: Target) -> None:
    async with start_sshd(**_sha1_only(rsa_host_key, **_SHA1_KEX_AND_MACS)) as old:
        by_known_hosts = old.settings(legacy_algorithms=True)
        by_fingerprint = old.settings(legacy_algorithms=True, known_hosts=None, host_fingerprints=(old.fingerprint,))
        for ssh in (by_known_hosts, by_fingerprint):
            async with tunnel.open_tunnel(ssh, tunnel.load_credentials(ssh), echo.host, echo.port) as opened:
                assert await echoes(opened.port) == b"ping"


async def test_an_rsa_host_key_is_accepted_with_sha2_signatures(rsa_host_key: asyncssh.SSHKey, echo: Target) -> None:
    async with start_sshd(host_key=rsa_host_key) as server:
        ssh = server.settings()
        async with tunnel.open_tunnel(ssh, tunnel.load_credentials(ssh), echo.host, echo.port) as opened:
            assert await echoes(opened.port) == b"ping"


def test_asyncssh_loads_without_running_a_process_and_offers_the_same_algorithms_on_every_runner() -> None:
    # A fresh interpreter, so this import is asyncssh's first: its search for liboqs and nettle ran
    # ldconfig, the C compiler and the linker (about 30 ms of every run); the action needs neither.
    script = """
import ctypes.util, json, sys
spawned = []
sys.addaudithook(lambda event, args: spawned.append(str(args[0])) if event == "subprocess.Popen" else None)
search = ctypes.util.find_library
import bastion_action.tunnel
from asyncssh.crypto import pq
from asyncssh import mac
print(json.dumps({
    "spawned": spawned,
    "restored": ctypes.util.find_library is search,
    "sntrup": pq.sntrup_available,
    "mlkem": pq.mlkem_available,
    "umac": any(name.startswith(b"umac") for name in mac.get_mac_algs()),
}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    found = json.loads(done.stdout)
    assert found == {"spawned": [], "restored": True, "sntrup": False, "mlkem": True, "umac": False}
