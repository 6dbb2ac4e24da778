"""In-process SSH servers and TCP targets on 127.0.0.1: the tunnel's real peers, without root or the lab.

As asyncssh's own tests do (tests/server.py): ``asyncssh.create_server`` on an ephemeral port with a
generated host key, password and public-key auth, and direct-tcpip forwarding to any target.

    async with start_sshd() as sshd, tcp_target() as echo:   # an echo server by default
        ssh = sshd.settings()                      # an SSHSettings for bastion_action.tunnel
        async with tunnel.open_tunnel(ssh, tunnel.load_credentials(ssh), echo.host, echo.port) as opened:
            ...
        sshd.refuse_forwarding = True              # channels: "administratively prohibited"
        sshd.drop()                                # ends every client connection from the server side

        sshd.open_delay = 0.5                      # channels are answered late (races with closing)

``sshd.settings(**overrides)`` fills every SSHSettings field (password auth, known_hosts); for key
auth pass ``password=None, private_key=sshd.client_key``; ``sshd.known_hosts`` and
``sshd.fingerprint`` serve raw action inputs too. ``start_sshd(client_key)`` shares a client key
between servers (jump hosts: ``jump_hosts=(jump.hop,)``). A forward to ``closed_port()`` fails with
"connect failed"; ``silent_listener()`` accepts TCP connections and never answers (a connect
timeout). ``refuses(port)``, ``pending_tasks()`` and ``tunnel_tasks()`` check that nothing is left
behind. The pytest fixtures ``sshd`` and ``echo`` are in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncssh

from bastion_action.settings import JumpHost, SSHSettings

HOST = "127.0.0.1"
USER = "deploy"
PASSWORD = "tunnel-test-password"


@dataclasses.dataclass
class SSHD:
    """One running in-process SSH server, with what a client needs to reach and trust it."""

    host: str
    port: int
    user: str
    password: str
    client_key: str  # OpenSSH private key text; its public key is authorized
    known_hosts: str  # the line `ssh-keyscan -p PORT 127.0.0.1` would print
    fingerprint: str  # SHA256:... of the host key
    host_key: asyncssh.SSHKey
    refuse_forwarding: bool = False  # answer direct-tcpip with "administratively prohibited"
    open_delay: float = 0.0  # seconds before a direct-tcpip request is answered
    opened: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # direct-tcpip requests, in order
    connections: set[asyncssh.SSHServerConnection] = dataclasses.field(default_factory=set)

    def settings(self, **overrides: Any) -> SSHSettings:
        """Settings for this server, password auth and known_hosts by default; fields as in SSHSettings."""
        fields: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "private_key": None,
            "passphrase": None,
            "known_hosts": self.known_hosts,
            "host_fingerprints": (),
            "insecure_skip_host_key_check": False,
            "insecure_skip_ignored": False,
            "jump_hosts": (),
            "keepalive_interval": 30.0,
            "connect_timeout": 5.0,
        }
        return SSHSettings(**(fields | overrides))

    @property
    def hop(self) -> JumpHost:
        """This server as a jump host (for ``SSHSettings.jump_hosts``)."""
        return JumpHost(user=self.user, host=self.host, port=self.port)

    def drop(self) -> None:
        """End every client connection from the server side, as killing its sshd process would."""
        for connection in list(self.connections):
            connection.abort()


class _Server(asyncssh.SSHServer):
    def __init__(self, sshd: SSHD) -> None:
        self._sshd = sshd
        self._connection: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._connection = conn
        self._sshd.connections.add(conn)

    def connection_lost(self, _exc: Exception | None) -> None:
        if self._connection is not None:
            self._sshd.connections.discard(self._connection)

    def begin_auth(self, _username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == self._sshd.user and password == self._sshd.password

    def connection_requested(
        self, dest_host: str, dest_port: int, _orig_host: str, _orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        self._sshd.opened.append((dest_host, dest_port))
        if self._sshd.refuse_forwarding:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "open failed")
        return self._forward(dest_host, dest_port)

    async def _forward(self, dest_host: str, dest_port: int) -> Any:  # asyncssh's SSHForwarder, an internal type
        # asyncssh's own forwarder; a refused connect becomes "connect failed" (Connection refused).
        await asyncio.sleep(self._sshd.open_delay)
        assert self._connection is not None
        return await self._connection.forward_connection(dest_host, dest_port)


def _keys() -> tuple[asyncssh.SSHKey, asyncssh.SSHKey]:
    return asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key("ssh-ed25519")


@contextlib.asynccontextmanager
async def start_sshd(
    client_key: asyncssh.SSHKey | None = None, host_key: asyncssh.SSHKey | None = None, **options: Any
) -> AsyncIterator[SSHD]:
    """An SSH server on 127.0.0.1:<ephemeral>; ``client_key`` shares one client key between servers.

    ``options`` go to ``asyncssh.create_server`` (``kex_algs=[...]`` for an old server's algorithms;
    ``server_host_keys=[keypair]`` for a key pair whose ``host_key_algorithms`` were narrowed).
    """
    generated_host_key, generated = _keys()
    host_key = host_key or generated_host_key
    client_key = client_key or generated
    public = client_key.export_public_key().decode()
    sshd = SSHD(
        host=HOST,
        port=0,
        user=USER,
        password=PASSWORD,
        client_key=client_key.export_private_key().decode(),
        known_hosts="",
        fingerprint=host_key.get_fingerprint("sha256"),
        host_key=host_key,
    )
    options.setdefault("server_host_keys", [host_key])
    acceptor = await asyncssh.create_server(
        lambda: _Server(sshd),
        HOST,
        0,
        authorized_client_keys=asyncssh.import_authorized_keys(public),
        allow_pty=False,
        **options,
    )
    sshd.port = acceptor.get_port()
    sshd.known_hosts = f"[{HOST}]:{sshd.port} {host_key.export_public_key().decode().strip()}"
    try:
        yield sshd
    finally:
        acceptor.close()
        sshd.drop()
        await acceptor.wait_closed()


@dataclasses.dataclass
class Target:
    """A TCP server on 127.0.0.1 standing in for the database; it counts connections accepted and ended."""

    host: str
    port: int
    accepted: int = 0
    ended: int = 0


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then send EOF: a half-close is passed back, not mistaken for the end."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()


@contextlib.asynccontextmanager
async def tcp_target(handler: Handler = echo) -> AsyncIterator[Target]:
    """A TCP server running ``handler`` per connection (closed after it); every handler ends on exit."""
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await handler(reader, writer)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            handlers.discard(task)
            writer.close()
            target.ended += 1

    server = await asyncio.start_server(serve, HOST, 0)
    target = Target(host=HOST, port=server.sockets[0].getsockname()[1])
    try:
        yield target
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port whose kernel completes the TCP handshake but no one ever speaks: a connect timeout."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


async def pending_tasks(within: float = 2.0) -> set[asyncio.Task[Any]]:
    """The tasks besides the caller's still running after ``within`` seconds (empty as soon as none are)."""
    current = asyncio.current_task()
    deadline = asyncio.get_running_loop().time() + within
    while True:
        pending = {task for task in asyncio.all_tasks() if task is not current and not task.done()}
        if not pending or asyncio.get_running_loop().time() > deadline:
            return pending
        await asyncio.sleep(0.01)


async def refuses(port: int) -> bool:
    """Whether 127.0.0.1:port refuses connections (no listener left)."""
    try:
        _, writer = await asyncio.open_connection(HOST, port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def tunnel_tasks() -> set[asyncio.Task[Any]]:
    """Unfinished tasks running bastion_action.tunnel's code: none may outlive its context."""
    from bastion_action import tunnel  # noqa: PLC0415 - sshd.py itself needs only the settings

    return {
        task
        for task in asyncio.all_tasks()
        if not task.done()
        and getattr(task.get_coro(), "cr_code", None) is not None
        and task.get_coro().cr_code.co_filename == tunnel.__file__  # type: ignore[union-attr]
    }
