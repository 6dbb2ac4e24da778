"""The command's road to the database: a local listener whose connections are held, then spliced to SSH channels.

asyncssh's public API only: a plain ``asyncio.Protocol`` per local connection and an
``asyncssh.SSHTCPSession`` per channel opened with ``SSHClientConnection.create_connection``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from bastion_action.sshlib import asyncssh

if TYPE_CHECKING:
    from bastion_action.tunnel import Tunnel


# Each channel's receive window and largest packet. asyncssh's defaults (2 MiB, 32 KiB) keep a bulk
# transfer (a COPY, a large result) waiting on window updates and cost Python work per 32 KiB; with
# these, sshd sends packets as large as it reads (bench/forward.py: COPY 200 MB).
CHANNEL_WINDOW = 8 * 1024 * 1024
CHANNEL_MAX_PACKET = 256 * 1024

# The command's socket buffers this much of what the database sent before the channel stops reading:
# a few of the channel's largest packets, not the event loop's 64 KiB (less than one such packet).
COMMAND_WRITE_BUFFER = 4 * CHANNEL_MAX_PACKET

# Bytes a held connection may send before the gate opens; beyond them the kernel queues the rest,
# and reading on (rather than pausing at once) is what notices a command that gives up while held.
_HOLD_LIMIT = 256 * 1024


def _no_packet_log(*_args: object, **_kwargs: object) -> None:
    pass


def lean_packets(handler: asyncssh.SSHClientConnection | asyncssh.SSHTCPChannel[bytes]) -> None:
    """No per-packet log formatting when asyncssh's debug log is off (it formats every packet's line first)."""
    if not logging.getLogger("asyncssh").isEnabledFor(logging.DEBUG):
        handler.log_sent_packet = _no_packet_log  # type: ignore[method-assign]
        handler.log_received_packet = _no_packet_log  # type: ignore[method-assign]


class Gate:
    """The command's road to the database: a local listener bound before the SSH connection exists.

    The command can start at once (its interpreter, imports and settings load while the
    tunnel, probe and lock are still under way): its connections are accepted, held, and
    forwarded over SSH only after ``open()`` — which the pipeline calls once the migration
    lock is held. So nothing the command does reaches the database before the lock.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self._target: tuple[asyncssh.SSHClientConnection, str, int] | None = None
        self.refusal: asyncssh.ChannelOpenError | None = None  # since the last channel the bastion opened
        self._closed = False
        self._held: list[_Command] = []
        self._commands: set[_Command] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self, tunnel: Tunnel, db_host: str, db_port: int) -> None:
        self.open_to(tunnel.connection, db_host, db_port)

    def open_to(self, connection: asyncssh.SSHClientConnection, db_host: str, db_port: int) -> None:
        self._target = (connection, db_host, db_port)
        held, self._held = self._held, []
        for command in held:
            self._splice(command)

    @property
    def target(self) -> tuple[str, int] | None:
        return None if self._target is None else self._target[1:]

    def close(self) -> None:
        """End every connection, held or forwarded, and any channel still being opened."""
        self._closed = True
        self._held = []
        for command in list(self._commands):
            command.close()
        for task in self._tasks:
            task.cancel()

    async def _settled(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accepted(self, command: _Command) -> None:
        if self._closed:
            command.close()
            return
        self._commands.add(command)
        if self._target is None:
            self._held.append(command)
        else:
            self._splice(command)

    def _lost(self, command: _Command) -> None:
        self._commands.discard(command)
        if command in self._held:
            self._held.remove(command)

    def _splice(self, command: _Command) -> None:
        if self._closed or self._target is None or command.closed:
            return
        task = asyncio.ensure_future(command.splice(self, *self._target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Command(asyncio.Protocol):
    """One connection of the command: held until the gate opens, then spliced to an SSH channel.

    Flow control is crossed over: a full local send buffer stops the channel's reading (which
    stops its window updates, so the bastion stops sending), and a full channel send buffer
    stops reading the local socket. Each direction's EOF is passed on; when both sides have
    sent theirs, or either side closes, both are closed.
    """

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self.transport: asyncio.Transport | None = None
        self.channel: asyncssh.SSHTCPChannel[bytes] | None = None
        self._held: list[bytes] = []
        self._held_size = 0
        self.eof = False  # the command sent EOF
        self.remote_eof = False  # the database's side sent EOF
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP server's transports are asyncio.Transport
        sock: socket.socket | None = transport.get_extra_info("socket")
        if sock is not None:
            # Not left to the event loop's defaults: every query is a small write waiting for its answer.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=COMMAND_WRITE_BUFFER)  # type: ignore[attr-defined]
        self._gate._accepted(self)  # noqa: SLF001

    def data_received(self, data: bytes) -> None:
        channel = self.channel
        if channel is None:
            self._held.append(data)
            self._held_size += len(data)
            if self._held_size >= _HOLD_LIMIT and self.transport is not None:
                self.transport.pause_reading()
            return
        # The per-chunk path: a bare try costs nothing, contextlib.suppress an object per call.
        try:  # noqa: SIM105
            channel.write(data)
        except OSError:  # the channel is closing; its connection_lost closes this side
            pass

    def eof_received(self) -> bool:
        self.eof = True
        if self.channel is not None:
            self.channel.write_eof()
        # Keep the socket open for the answer unless the database's side is done too.
        return not self.remote_eof

    def pause_writing(self) -> None:
        if self.channel is not None:
            self.channel.pause_reading()

    def resume_writing(self) -> None:
        if self.channel is not None:
            self.channel.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        self.closed = True
        self._gate._lost(self)  # noqa: SLF001
        if self.channel is not None:
            self.channel.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if self.channel is not None:
            self.channel.close()

    async def splice(self, gate: Gate, connection: asyncssh.SSHClientConnection, host: str, port: int) -> None:
        """Open the channel to ``host:port``, then pass on what was held and forward from then on."""
        try:
            channel, _ = await connection.create_connection(
                lambda: _Channel(self), host, port, window=CHANNEL_WINDOW, max_pktsize=CHANNEL_MAX_PACKET
            )
        except asyncssh.ChannelOpenError as exc:
            gate.refusal = exc  # kept before the command sees its connection end
            self.close()
            return
        except (OSError, asyncssh.Error):
            self.close()
            return
        except asyncio.CancelledError:
            self.close()
            raise
        gate.refusal = None
        lean_packets(channel)
        if self.closed:  # the command left while the channel was opening: nothing to pass on
            channel.close()
            return
        self.channel = channel
        held, self._held = b"".join(self._held), []
        if self._held_size >= _HOLD_LIMIT and self.transport is not None:
            self.transport.resume_reading()  # before the write, so a pause the channel asks for stands
        if held:
            channel.write(held)
        if self.eof:
            channel.write_eof()


class _Channel(asyncssh.SSHTCPSession[bytes]):
    """The SSH side of one command connection: what the database sends goes to the command's socket.

    These callbacks run inside asyncssh's packet handling, where an exception ends the whole SSH
    connection (every database's forward, in fan-out). The command's socket may be closed under
    them at any moment; then what arrives is dropped, as asyncio's transports do silently and
    uvloop's do not (they raise on a closed transport).
    """

    def __init__(self, command: _Command) -> None:
        self._command = command
        assert command.transport is not None  # noqa: S101 - a channel is opened for accepted connections only
        self._transport = command.transport

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:  # noqa: ARG002
        transport = self._transport
        if not transport.is_closing():
            transport.write(data)

    def eof_received(self) -> bool:
        self._command.remote_eof = True
        transport = self._transport
        if not transport.is_closing():
            # shutdown() fails on a socket the command has reset (ENOTCONN) before the loop noticed.
            with contextlib.suppress(OSError):
                transport.write_eof()
            if self._command.eof:
                transport.close()
        # True: the command may still send on its side (asyncssh would otherwise send our EOF at once).
        return True

    def pause_writing(self) -> None:
        if not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        self._transport.close()


@contextlib.asynccontextmanager
async def gate(sock: socket.socket) -> AsyncIterator[Gate]:
    """Serve a bound listening socket (bastion_action.loopback); forward through it once opened."""
    opened = Gate(sock)
    server = await asyncio.get_running_loop().create_server(lambda: _Command(opened), sock=sock)
    try:
        yield opened
    finally:
        server.close()
        opened.close()
        await opened._settled()  # noqa: SLF001
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)
