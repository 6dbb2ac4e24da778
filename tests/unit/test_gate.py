"""The gate against a real in-process SSH server: holding, forwarding, flow control, EOF, refusals, closing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator

import asyncssh
import pytest
from sshd import HOST, SSHD, Target, closed_port, pending_tasks, refuses, tcp_target, tunnel_tasks

from bastion_action import gates, loopback, tunnel
from bastion_action.errors import ProbeError, TunnelError

MB = 1 << 20


@dataclasses.dataclass
class Pump:
    """Writes ``payload`` to a stream as fast as the stream drains, then EOF; ``sent`` is the progress."""

    payload: bytes
    sent: int = 0

    async def run(self, writer: asyncio.StreamWriter) -> None:
        view = memoryview(self.payload)
        while self.sent < len(view):
            writer.write(view[self.sent : self.sent + 256 * 1024])
            await writer.drain()
            self.sent = min(self.sent + 256 * 1024, len(view))
        writer.write_eof()


@contextlib.asynccontextmanager
async def chain_to(sshd: SSHD) -> AsyncIterator[tunnel.Chain]:
    ssh = sshd.settings()
    async with tunnel.connect(ssh, tunnel.load_credentials(ssh)) as chain:
        yield chain


@contextlib.asynccontextmanager
async def forwarded(sshd: SSHD, target: Target) -> AsyncIterator[tunnel.Tunnel]:
    async with chain_to(sshd) as chain, tunnel.forward(chain, target.host, target.port) as opened:
        yield opened


@contextlib.asynccontextmanager
async def held_gate() -> AsyncIterator[gates.Gate]:
    async with gates.gate(loopback.bind_loopback(0)) as opened:
        yield opened


_clients: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    for writer in _clients:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    _clients.clear()


async def client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A command's connection to the gate; closed after the test."""
    reader, writer = await asyncio.open_connection(HOST, port)
    _clients.append(writer)
    return reader, writer


async def read_to_end(reader: asyncio.StreamReader, within: float = 10) -> bytes:
    """Everything until EOF (a reset counts as the end); a missing EOF fails the test."""
    chunks = []
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(MB):
                chunks.append(chunk)
    return b"".join(chunks)


async def exactly(reader: asyncio.StreamReader, size: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(size), 5)


def transport(command: gates._Command) -> asyncio.Transport:
    assert command.transport is not None  # accepted connections have one
    return command.transport


def commands(gate: gates.Gate) -> list[gates._Command]:
    return list(gate._commands)


async def until(condition: object, within: float = 2.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110 - states no event signals
            await asyncio.sleep(0.01)


async def test_gate_holds_connections_and_their_bytes_until_opened(sshd: SSHD, echo: Target) -> None:
    async with chain_to(sshd) as chain, held_gate() as gate:
        reader, writer = await client(gate.port)
        writer.write(b"sent before the lock")
        await writer.drain()
        await asyncio.sleep(0.2)
        assert echo.accepted == 0
        assert sshd.opened == []
        assert gate.target is None
        gate.open_to(chain.connection, echo.host, echo.port)
        assert await exactly(reader, 20) == b"sent before the lock"
        writer.write(b" and after")
        assert await exactly(reader, 10) == b" and after"
        assert gate.target == (echo.host, echo.port)
        assert sshd.opened == [(echo.host, echo.port)]
        writer.close()


async def test_held_connection_is_read_only_up_to_the_hold_limit_then_passed_on_in_order(
    sshd: SSHD, echo: Target
) -> None:
    payload = os.urandom(4 * MB)
    async with chain_to(sshd) as chain, held_gate() as gate:
        reader, writer = await client(gate.port)
        writer.write(payload)
        sending = asyncio.ensure_future(writer.drain())
        await until(lambda: commands(gate) and not transport(commands(gate)[0]).is_reading())
        (held,) = commands(gate)
        assert gates._HOLD_LIMIT <= held._held_size <= gates._HOLD_LIMIT + 256 * 1024
        opened = tunnel.Tunnel(port=gate.port, connection=chain.connection, forwards=gate)
        gate.open(opened, echo.host, echo.port)
        writer.write_eof()
        assert await read_to_end(reader) == payload
        await asyncio.wait_for(sending, 10)


async def test_eof_sent_while_held_is_passed_on_after_the_held_bytes(sshd: SSHD) -> None:
    async with tcp_target(digest_after_eof) as target, chain_to(sshd) as chain, held_gate() as gate:
        reader, writer = await client(gate.port)
        writer.write(b"query")
        writer.write_eof()
        await until(lambda: commands(gate) and commands(gate)[0].eof)
        gate.open_to(chain.connection, target.host, target.port)
        assert await read_to_end(reader, 5) == struct.pack("!Q", 5) + hashlib.sha256(b"query").digest()


async def test_forward_carries_megabytes_both_ways_at_once(sshd: SSHD, echo: Target) -> None:
    payload = os.urandom(8 * MB)
    async with forwarded(sshd, echo) as opened:
        reader, writer = await client(opened.port)
        sending = asyncio.ensure_future(Pump(payload).run(writer))
        received = await read_to_end(reader)
        await asyncio.wait_for(sending, 10)
        assert len(received) == len(payload)
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        assert opened.forward_failure() is None


async def test_each_query_leaves_as_one_packet_in_one_socket_write(sshd: SSHD, echo: Target) -> None:
    """No empty SSH_MSG_IGNORE of its own before each packet (asyncssh's CBC countermeasure, no CBC offered)."""
    async with forwarded(sshd, echo) as opened:
        reader, writer = await client(opened.port)
        writer.write(b"warm")
        assert await exactly(reader, 4) == b"warm"
        connection = opened.connection
        writes: list[bytes] = []
        send = connection._send

        def counted(data: bytes) -> None:
            writes.append(data)
            send(data)

        connection._send = counted  # type: ignore[method-assign]
        for n in range(50):
            writer.write(b"query %02d" % n)
            assert await exactly(reader, 8) == b"query %02d" % n
        assert 50 <= len(writes) <= 52  # one a query; a window update may fall in
        assert str(connection.get_extra_info("send_cipher")).endswith("gcm@openssh.com")


async def test_channels_advertise_a_large_window_and_packet_and_the_command_socket_buffers_a_few(
    sshd: SSHD, echo: Target
) -> None:
    async with forwarded(sshd, echo) as opened:
        reader, writer = await client(opened.port)
        writer.write(b"x")
        assert await exactly(reader, 1) == b"x"
        assert opened.forwards is not None
        (command,) = commands(opened.forwards)
        assert command.channel is not None
        assert command.channel._init_recv_window == gates.CHANNEL_WINDOW
        assert command.channel._recv_pktsize == gates.CHANNEL_MAX_PACKET
        # The loop's default (64 KiB) would stop the channel's reading on every large packet.
        assert transport(command).get_write_buffer_limits()[1] == gates.COMMAND_WRITE_BUFFER


async def digest_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer only after the client's EOF: its size and digest."""
    digest = hashlib.sha256()
    size = 0
    while data := await reader.read(MB):
        digest.update(data)
        size += len(data)
    writer.write(struct.pack("!Q", size) + digest.digest())


async def test_command_half_close_reaches_the_database_and_the_answer_still_comes_back(sshd: SSHD) -> None:
    payload = os.urandom(3 * MB)
    async with tcp_target(digest_after_eof) as target, forwarded(sshd, target) as opened:
        reader, writer = await client(opened.port)
        writer.write(payload)
        writer.write_eof()
        answer = await read_to_end(reader, 5)
        assert answer == struct.pack("!Q", len(payload)) + hashlib.sha256(payload).digest()


async def test_database_half_close_reaches_the_command_which_may_still_send(sshd: SSHD) -> None:
    received: list[int] = []

    async def greet_then_count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        writer.write_eof()
        size = 0
        while data := await reader.read(MB):
            size += len(data)
        received.append(size)

    async with tcp_target(greet_then_count) as target, forwarded(sshd, target) as opened:
        reader, writer = await client(opened.port)
        assert await read_to_end(reader, 5) == b"hello"
        writer.write(b"x" * MB)
        await writer.drain()
        writer.write_eof()
        await until(lambda: received)
        assert received == [MB]
        # Both sides have sent EOF: the gate closes the connection and forgets it.
        await until(lambda: not commands(opened.forwards))  # type: ignore[arg-type]
        assert target.ended == 1


async def test_flow_control_stops_the_database_when_the_command_does_not_read(sshd: SSHD) -> None:
    source = Pump(b"d" * 48 * MB)

    async def serve(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await source.run(writer)

    async with tcp_target(serve) as target, forwarded(sshd, target) as opened:
        reader, writer = await client(opened.port)
        writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        await stalled(lambda: source.sent)
        (command,) = commands(opened.forwards)  # type: ignore[arg-type]
        # The gate keeps at most its write buffer's high-water mark and one packet, not the backlog.
        assert transport(command).get_write_buffer_size() <= gates.COMMAND_WRITE_BUFFER + gates.CHANNEL_MAX_PACKET
        assert source.sent < len(source.payload)
        assert await read_to_end(reader, 20) == source.payload
        writer.close()


async def test_flow_control_stops_the_command_when_the_database_does_not_read(sshd: SSHD) -> None:
    command_side = Pump(b"u" * 48 * MB)
    release = asyncio.Event()
    received = 0

    async def late_sink(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await release.wait()
        while data := await reader.read(MB):
            received += len(data)

    async with tcp_target(late_sink) as target, forwarded(sshd, target) as opened:
        _, writer = await client(opened.port)
        sending = asyncio.ensure_future(command_side.run(writer))
        await stalled(lambda: command_side.sent)
        (command,) = commands(opened.forwards)  # type: ignore[arg-type]
        assert command.channel is not None
        assert command.channel.get_write_buffer_size() < MB
        assert not transport(command).is_reading()
        assert command_side.sent < len(command_side.payload)
        release.set()
        await asyncio.wait_for(sending, 20)
        await until(lambda: received == len(command_side.payload), 20)


async def stalled(progress: object, quiet: float = 0.3) -> None:
    """Wait until ``progress()`` has not moved for ``quiet`` seconds (at most 10 s)."""
    async with asyncio.timeout(10):
        last = -1
        while (now := progress()) != last:  # type: ignore[operator]
            last = now
            await asyncio.sleep(quiet)


async def test_reset_command_while_the_database_ends_does_not_end_the_ssh_connection(sshd: SSHD, echo: Target) -> None:
    async with chain_to(sshd) as chain, tunnel.forward(chain, echo.host, echo.port) as opened:
        reader, writer = await client(opened.port)
        writer.write(b"ping")
        assert await exactly(reader, 4) == b"ping"
        (command,) = commands(opened.forwards)  # type: ignore[arg-type]
        # Reading paused (as flow control does), so the gate has not seen the reset when the database's EOF comes.
        transport(command).pause_reading()
        reset(writer)
        await asyncio.sleep(0.05)
        assert command.channel is not None
        command.channel.write_eof()  # the echo server answers EOF with EOF
        await until(lambda: not commands(opened.forwards))  # type: ignore[arg-type]
        assert not chain.connection.is_closed()
        reader, writer = await client(opened.port)
        writer.write(b"still up")
        assert await exactly(reader, 8) == b"still up"
        writer.close()


@pytest.mark.parametrize(
    ("refuse", "error", "anchor", "reason"),
    [
        pytest.param(True, TunnelError, "forward-refused", "administratively prohibited: open failed", id="prohibited"),
        # The in-process server's own connect error: asyncio's and uvloop's texts differ, errno not.
        pytest.param(False, ProbeError, "database-unreachable", "[Errno 111]", id="connect-failed"),
    ],
)
async def test_refusal_is_kept_and_translated_then_cleared_by_a_good_channel(
    sshd: SSHD, echo: Target, refuse: bool, error: type[Exception], anchor: str, reason: str
) -> None:
    sshd.refuse_forwarding = refuse
    port = echo.port if refuse else closed_port()
    async with chain_to(sshd) as chain, tunnel.forward(chain, HOST, port) as opened:
        assert opened.forward_failure() is None
        reader, writer = await client(opened.port)
        assert await read_to_end(reader, 5) == b""
        failure = opened.forward_failure()
        assert isinstance(failure, error)
        assert failure.anchor == anchor
        assert f"{HOST}:{port}" in failure.message
        assert reason in failure.message
        assert opened.forwards is not None
        expected = asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED if refuse else asyncssh.OPEN_CONNECT_FAILED
        assert opened.forwards.refusal is not None
        assert opened.forwards.refusal.code == expected
        writer.close()

        sshd.refuse_forwarding = False
        opened.forwards.open_to(chain.connection, echo.host, echo.port)
        reader, writer = await client(opened.port)
        writer.write(b"ok")
        assert await exactly(reader, 2) == b"ok"
        assert opened.forward_failure() is None
        writer.close()


async def test_gate_closed_before_opening_ends_held_connections_and_leaves_nothing(echo: Target) -> None:
    async with held_gate() as gate:
        port = gate.port
        reader, writer = await client(port)
        writer.write(b"never forwarded")
        await until(lambda: commands(gate))
    assert await read_to_end(reader, 2) == b""
    assert await refuses(port)
    assert tunnel_tasks() == set()
    assert await pending_tasks() == set()
    assert echo.accepted == 0
    writer.close()


async def test_gate_closed_while_a_channel_is_opening_ends_the_connection_and_its_task(
    sshd: SSHD, echo: Target
) -> None:
    sshd.open_delay = 0.5
    async with chain_to(sshd) as chain:
        async with held_gate() as gate:
            port = gate.port
            gate.open_to(chain.connection, echo.host, echo.port)
            reader, writer = await client(port)
            writer.write(b"x")
            await until(lambda: sshd.opened)
            assert len(gate._tasks) == 1
        assert not gate._tasks  # ended by the gate's exit itself, not later
        assert tunnel_tasks() == set()
        assert await read_to_end(reader, 2) == b""
        assert await refuses(port)
        # The SSH connection outlives the gate: the channel's late confirmation harms nothing.
        await asyncio.sleep(0.6)
        assert not chain.connection.is_closed()
        writer.close()
    assert await pending_tasks() == set()


async def test_gate_closed_after_opening_ends_forwarded_connections(sshd: SSHD, echo: Target) -> None:
    async with chain_to(sshd) as chain:
        async with held_gate() as gate:
            gate.open_to(chain.connection, echo.host, echo.port)
            reader, writer = await client(gate.port)
            writer.write(b"ping")
            assert await exactly(reader, 4) == b"ping"
        assert await read_to_end(reader, 2) == b""
        writer.close()
    assert tunnel_tasks() == set()
    assert await pending_tasks() == set()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a killed process's socket ends: no EOF, the connection is gone."""
    sock = writer.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_command_gone_while_held_is_not_forwarded(sshd: SSHD, echo: Target) -> None:
    async with chain_to(sshd) as chain, held_gate() as gate:
        _, writer = await client(gate.port)
        writer.write(b"gone before the lock")
        await until(lambda: commands(gate))
        reset(writer)
        await until(lambda: not commands(gate))
        gate.open_to(chain.connection, echo.host, echo.port)
        await asyncio.sleep(0.1)
        assert sshd.opened == []
        assert echo.accepted == 0


async def test_command_gone_while_its_channel_opens_gets_the_channel_closed(sshd: SSHD, echo: Target) -> None:
    sshd.open_delay = 0.3
    async with chain_to(sshd) as chain, tunnel.forward(chain, echo.host, echo.port) as opened:
        _, writer = await client(opened.port)
        await until(lambda: sshd.opened)
        reset(writer)
        await until(lambda: echo.ended == 1)
        assert echo.accepted == 1
        assert opened.forwards is not None
        assert not opened.forwards._tasks


async def test_ssh_side_drops_what_comes_for_a_command_socket_already_closed() -> None:
    # The database's data, EOF and flow control may reach a command socket closed a moment before its
    # connection_lost: they are dropped. On uvloop such a call raises, and an exception there
    # would end the whole SSH connection (every database's forward, in fan-out).
    async with held_gate() as opened:
        await client(opened.port)
        await until(lambda: commands(opened))
        (command,) = commands(opened)
        channel = gates._Channel(command)
        transport(command).close()
        await until(lambda: command.closed)  # its connection_lost has run: the transport is gone
        channel.data_received(b"late", None)
        channel.pause_writing()
        channel.resume_writing()
        assert channel.eof_received() is True
        channel.connection_lost(None)
