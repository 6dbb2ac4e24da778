"""The SSH side: asyncssh connections (jump hosts, then the bastion) and the local port-forward."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator

from bastion_action import loopback
from bastion_action.errors import ActionError, ProbeError, SettingsError, TunnelError
from bastion_action.gates import Gate, gate, lean_packets
from bastion_action.settings import JumpHost, SSHSettings
from bastion_action.sshlib import asyncssh

# A dead link is declared after this many unanswered keepalives (ronf/asyncssh#471:
# without keepalives asyncssh never notices a silently dead peer).
KEEPALIVE_COUNT_MAX = 3
# AES-GCM first: one AEAD call per packet in the cryptography library, where asyncssh's
# chacha20-poly1305 makes three cipher calls and a Poly1305 per packet (bench/forward.py).
# The rest is asyncssh's default order, so any server still finds a common cipher.
ENCRYPTION_ALGS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)

# What OpenSSH 8.8 stopped accepting by default, removed from asyncssh's own default lists (its
# "-pattern" syntax), unless ssh-legacy-algorithms: SHA-1 is broken for signatures (chosen-prefix
# collisions), and SHA-1 key exchange is as weak. OpenSSH still offers hmac-sha1; it goes too, as the
# AEAD ciphers above carry their own MAC and every server since OpenSSH 5.9 offers hmac-sha2.
MODERN_ALGS = {
    "kex_algs": "-*-sha1",
    "mac_algs": "-hmac-sha1*",
    "signature_algs": "-ssh-rsa",
    "server_host_key_algs": "-ssh-rsa,ssh-rsa-cert-v01@openssh.com",
}
LEGACY_INPUT = "ssh-legacy-algorithms"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What asyncssh needs, parsed up front so bad keys fail in the settings stage."""

    client_keys: list[asyncssh.SSHKey] | None
    known_hosts: asyncssh.SSHKnownHosts | None


def load_credentials(ssh: SSHSettings) -> Credentials:
    """Parse the private key and known_hosts text; errors name the input."""
    client_keys = None
    if ssh.private_key:
        try:
            key = asyncssh.import_private_key(ssh.private_key.strip() + "\n", ssh.passphrase)
        except asyncssh.KeyEncryptionError as exc:
            raise SettingsError(
                f"ssh-passphrase: expected the passphrase of ssh-private-key, it does not decrypt the key ({exc})",
                hint="Give the key's passphrase in ssh-passphrase.",
            ) from None
        except asyncssh.KeyImportError as exc:
            hint = "Paste the whole key text, including its BEGIN and END lines."
            if "passphrase" in str(exc).lower():
                hint = "The key is encrypted: give its passphrase in ssh-passphrase."
            msg = f"ssh-private-key: expected a private key, could not parse it ({exc})"
            raise SettingsError(msg, hint=hint) from None
        client_keys = [key]
    known_hosts = None
    if not ssh.insecure_skip_host_key_check:
        _check_known_hosts(ssh.known_hosts or "")
        try:
            known_hosts = asyncssh.import_known_hosts(ssh.known_hosts or "")
        except (ValueError, asyncssh.KeyImportError) as exc:
            raise SettingsError(
                f"ssh-known-hosts: expected known_hosts lines ('HOST KEYTYPE BASE64'), could not parse them ({exc})",
                hint="Use the output of `ssh-keyscan -p PORT HOST` as it is.",
            ) from None
    return Credentials(client_keys=client_keys, known_hosts=known_hosts)


def _check_known_hosts(text: str) -> None:
    """Every line must be a known_hosts entry: asyncssh skips malformed lines silently, and then trusts nothing."""
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0].startswith("@"):  # @cert-authority / @revoked markers
            fields = fields[1:]
        problem = None
        if len(fields) < 3:  # noqa: PLR2004 - hosts, key type, key
            problem = "expected 'HOSTS KEYTYPE BASE64KEY'"
        else:
            try:
                asyncssh.import_public_key(f"{fields[1]} {fields[2]}")
            except (asyncssh.KeyImportError, ValueError) as exc:
                problem = f"the key does not parse ({exc})"
        if problem:
            raise SettingsError(
                f"ssh-known-hosts: line {number}: {problem}",
                hint="Use the output of `ssh-keyscan -p PORT HOST` as it is (one entry per line).",
            )


class _Client(asyncssh.SSHClient):
    """Accepts a host key by fingerprint, and remembers what the bastion presented."""

    def __init__(self, fingerprints: tuple[str, ...]) -> None:
        self.fingerprints = fingerprints
        self.presented: str | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:  # noqa: ARG002
        self.presented = key.get_fingerprint("sha256")
        return self.presented in self.fingerprints


@dataclasses.dataclass
class Tunnel:
    """An open forward: ``127.0.0.1:port`` reaches the database through the bastion.

    ``connection`` is the bastion's; ``hops`` are the jump hosts' connections it runs over, in order;
    ``forwards`` serves ``port`` (it remembers why the bastion refused a forwarded connection).
    """

    port: int
    connection: asyncssh.SSHClientConnection
    hops: tuple[asyncssh.SSHClientConnection, ...] = ()
    forwards: Gate | None = None

    def forward_failure(self) -> ActionError | None:
        """Why the bastion did not connect the last connection made to ``port``, translated; None if it did.

        sshd checks forwarding only when a connection goes through the forward, and answers with
        a channel-open failure: "administratively prohibited" (AllowTcpForwarding, PermitOpen) or
        "connect failed" (nothing listens at db-host:db-port, as seen from the bastion).
        """
        gate = self.forwards
        if gate is None or gate.refusal is None or gate.target is None:
            return None
        refusal, (host, port) = gate.refusal, gate.target
        if refusal.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
            return TunnelError(
                f"the bastion refused to forward to {host}:{port} (administratively prohibited: {refusal.reason})",
                hint="The bastion's sshd must allow TCP forwarding for ssh-user to the database: "
                "AllowTcpForwarding yes (or local) and, if PermitOpen is set, db-host:db-port in it, "
                "written as in db-host.",
                anchor="forward-refused",
            )
        if refusal.code == asyncssh.OPEN_CONNECT_FAILED:
            return ProbeError(
                f"the bastion cannot reach the database at {host}:{port}: {refusal.reason}",
                hint="Check db-host and db-port as the bastion sees them (`nc -vz DB-HOST DB-PORT` on the bastion), "
                "that the database is running, and that no firewall between the bastion and it rejects the bastion.",
                anchor="database-unreachable",
            )
        return ProbeError(
            f"the bastion could not open a connection to {host}:{port}: {refusal.reason}",
            hint="The bastion's sshd refused the forwarded connection; see its log (LogLevel VERBOSE).",
            anchor="database-unreachable",
        )

    def closed(self) -> bool:
        """Whether an SSH connection of the chain has ended: nothing reaches the database through it any more."""
        return any(connection.is_closed() for connection in (*self.hops, self.connection))

    async def wait_closed(self) -> None:
        """Return when any SSH connection of the chain ends (closed, dropped, or keepalive timeout)."""
        if not self.hops:
            await self.connection.wait_closed()
            return
        waiters = [asyncio.ensure_future(conn.wait_closed()) for conn in (*self.hops, self.connection)]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)


def hop_chain(ssh: SSHSettings) -> tuple[JumpHost, ...]:
    """Every SSH server to connect to, in order: the jump hosts, then the bastion (last)."""
    return (*ssh.jump_hosts, JumpHost(user=ssh.user, host=ssh.host, port=ssh.port))


def describe_hop(chain: tuple[JumpHost, ...], index: int) -> str:
    """How messages name hop ``index`` of ``chain``: ``jump host u@h:p (hop 1 of 3)`` or ``the bastion u@h:p``."""
    hop = chain[index]
    if index == len(chain) - 1:
        return f"the bastion {hop}"
    return f"jump host {hop} (hop {index + 1} of {len(chain)})"


def _translate(  # noqa: PLR0911
    exc: BaseException, ssh: SSHSettings, client: _Client | None, chain: tuple[JumpHost, ...] = (), index: int = -1
) -> TunnelError:
    """A hop-aware TunnelError for ``exc``, raised while connecting to ``chain[index]`` (default: the bastion)."""
    chain = chain or hop_chain(ssh)
    index = index % len(chain)
    hop = chain[index]
    direct = len(chain) == 1
    who = describe_hop(chain, index)
    where = f"{hop.user}@{hop.host}:{hop.port}" if direct else who
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        presented = client.presented if client and client.presented else "unknown"
        if direct:
            message = (
                f"host key of {hop.host}:{hop.port} is not trusted (possible man-in-the-middle); "
                f"the bastion presented {presented}"
            )
        else:
            message = f"host key of {who} is not trusted (possible man-in-the-middle); it presented {presented}"
        return TunnelError(
            message,
            hint=f"If the key of {hop.host}:{hop.port} really changed, verify it out of band "
            f"(`ssh-keygen -lf` on that host, or `ssh-keyscan -p {hop.port} {hop.host}` from a trusted network"
            + ("" if direct or index == 0 else f", i.e. from {chain[index - 1].host}")
            + ") and update ssh-known-hosts or ssh-host-fingerprint"
            + ("" if direct else " (one line or fingerprint per hop)")
            + ".",
            anchor="host-key",
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        offered = [
            name for name, value in (("ssh-private-key", ssh.private_key), ("ssh-password", ssh.password)) if value
        ]
        return TunnelError(
            f"authentication to {where} was refused" + ssh.source("ssh-user", *offered),
            hint="Check ssh-user and ssh-password / ssh-private-key; a key must be in the user's authorized_keys"
            + ("." if direct else " on every hop (jump hosts use the same credentials as the bastion)."),
            anchor="authentication",
        )
    if isinstance(exc, TimeoutError):
        what = f"{hop.host}:{hop.port}" if direct else f"{who} (connect-timeout covers the whole chain)"
        return TunnelError(
            f"no SSH answer from {what} within {ssh.connect_timeout:g} s"
            + (ssh.source("ssh-host", "ssh-port") if direct else ""),
            hint="Check ssh-host and ssh-port, and that the bastion's firewall admits this runner's address."
            if direct
            else "Check ssh-jump-hosts, ssh-host and ssh-port, and that each hop admits the previous one.",
            anchor="timeout",
        )
    if index > 0 and isinstance(exc, asyncssh.ChannelOpenError):
        return TunnelError(
            f"{describe_hop(chain, index - 1)} could not connect to {hop.host}:{hop.port}: {exc.reason}",
            hint="Check the address of the next hop as seen from the previous one, "
            "and that the previous hop allows TCP forwarding (AllowTcpForwarding).",
        )
    if isinstance(exc, ConnectionRefusedError):
        return TunnelError(
            f"{hop.host}:{hop.port} refused the connection"
            + (ssh.source("ssh-host", "ssh-port") if direct else f" ({who})"),
            hint="Check ssh-port, and that sshd is running on the bastion."
            if direct
            else "Check the port in ssh-jump-hosts / ssh-port, and that sshd is running there.",
        )
    if isinstance(exc, socket.gaierror):
        return TunnelError(
            f"cannot resolve {hop.host!r} ({exc.strerror})" + (ssh.source("ssh-host") if direct else f" ({who})"),
            hint="Check ssh-host." if direct else "Check ssh-jump-hosts and ssh-host.",
        )
    if isinstance(exc, asyncssh.Error):
        return _refused_by_protocol(exc, ssh, where)
    return TunnelError(f"SSH connection to {where} failed: {exc}", hint="Check ssh-host and ssh-port.")


def _refused_by_protocol(exc: asyncssh.Error, ssh: SSHSettings, where: str) -> TunnelError:
    """The SSH handshake failed: no algorithm in common (perhaps only SHA-1 ones offered), or another reason."""
    if not isinstance(exc, asyncssh.KeyExchangeFailed):
        return TunnelError(
            f"SSH connection to {where} failed: {exc.reason}",
            hint="Check that the address is an SSH server (the bastion) and the settings match it.",
        )
    if ssh.legacy_algorithms:
        return TunnelError(
            f"SSH connection to {where} failed: no algorithm in common ({exc.reason})",
            hint="The server offers none of the algorithms asyncssh supports; see its sshd_config "
            "(KexAlgorithms, HostKeyAlgorithms, Ciphers, MACs).",
            anchor="legacy-algorithms",
        )
    return TunnelError(
        f"SSH connection to {where} failed: no algorithm in common ({exc.reason}); SHA-1 algorithms "
        "(ssh-rsa signatures, SHA-1 key exchange and MACs) are refused, as by OpenSSH 8.8 and newer",
        hint=f"Update the server's sshd (or give it an ed25519 host key); until then, {LEGACY_INPUT}: true "
        "accepts SHA-1 algorithms, which weakens the connection's protection.",
        anchor="legacy-algorithms",
    )


# asyncssh's packet type of an SSH_MSG_IGNORE, and the empty string it carries before every packet.
_MSG_IGNORE = 2
_EMPTY_STRING = b"\x00\x00\x00\x00"


def _lean_connection(connection: asyncssh.SSHClientConnection) -> None:
    """Per packet, only what the protocol needs: what a forwarded query costs is this Python work.

    asyncssh puts an empty SSH_MSG_IGNORE before every packet once keys are in use, encrypted and
    written on its own: two packets, two socket writes and two TCP segments for each query. That
    is a countermeasure for CBC ciphers (predictable IVs, RFC 4251 9.3.1), which ENCRYPTION_ALGS
    never offers; with the AEAD and CTR ciphers the empty packet carries nothing, so it is left out.
    """
    lean_packets(connection)
    if str(connection.get_extra_info("send_cipher", "")).endswith("-cbc"):
        return
    send_packet = connection.send_packet

    def without_empty_ignore(pkttype: int, *args: bytes, handler: object = None) -> None:
        if pkttype == _MSG_IGNORE and args == (_EMPTY_STRING,):
            return
        send_packet(pkttype, *args, handler=handler)  # type: ignore[arg-type]

    connection.send_packet = without_empty_ignore  # type: ignore[method-assign]


async def _close(connection: asyncssh.SSHClientConnection) -> None:
    connection.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.wait_closed(), timeout=5)


async def _connect_hop(
    ssh: SSHSettings,
    credentials: Credentials,
    hop: JumpHost,
    client: _Client,
    through: asyncssh.SSHClientConnection | None,
) -> asyncssh.SSHClientConnection:
    """One SSH connection (directly, or tunnelled through the previous hop's connection)."""
    return await asyncssh.connect(
        hop.host,
        hop.port,
        tunnel=through,
        username=hop.user,
        password=ssh.password,
        client_keys=credentials.client_keys,
        known_hosts=credentials.known_hosts,
        client_factory=lambda: client,
        config=None,
        agent_path=None,
        keepalive_interval=ssh.keepalive_interval,
        keepalive_count_max=KEEPALIVE_COUNT_MAX,
        encryption_algs=ENCRYPTION_ALGS,
        **({} if ssh.legacy_algorithms else MODERN_ALGS),
        connect_timeout=ssh.connect_timeout,
        login_timeout=ssh.connect_timeout,
    )


async def _connect_chain(
    ssh: SSHSettings, credentials: Credentials, stack: contextlib.AsyncExitStack
) -> list[asyncssh.SSHClientConnection]:
    """Connect hop by hop, each through the previous one; every connection is closed by ``stack``."""
    chain = hop_chain(ssh)
    connections: list[asyncssh.SSHClientConnection] = []
    client = None
    try:
        # connect-timeout bounds the whole chain, not each hop.
        async with asyncio.timeout(ssh.connect_timeout):
            for hop in chain:
                client = _Client(ssh.host_fingerprints)
                connection = await _connect_hop(ssh, credentials, hop, client, connections[-1] if connections else None)
                _lean_connection(connection)
                # Innermost first on exit: the bastion's connection closes before the hops it runs over.
                stack.push_async_callback(_close, connection)
                connections.append(connection)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise _translate(exc, ssh, client, chain, len(connections)) from exc
    return connections


@contextlib.asynccontextmanager
async def open_tunnel(
    ssh: SSHSettings, credentials: Credentials, db_host: str, db_port: int, local_port: int = 0
) -> AsyncIterator[Tunnel]:
    """Connect to the bastion (through any jump hosts) and forward ``127.0.0.1:<port>`` to ``db_host:db_port``."""
    async with connect(ssh, credentials) as chain, forward(chain, db_host, db_port, local_port) as opened:
        yield opened


def negotiated(connection: asyncssh.SSHClientConnection) -> str:
    """What the server and this connection agreed on, for debug lines."""
    info = connection.get_extra_info
    return (
        f"{info('server_version', '?')}, cipher {info('send_cipher', '?')}, mac {info('send_mac', '?')}, "
        f"compression {info('send_compression', '?')}"
    )


@dataclasses.dataclass(frozen=True)
class Chain:
    """The SSH connections of one run: the jump hosts' in order, then the bastion's."""

    connection: asyncssh.SSHClientConnection
    hops: tuple[asyncssh.SSHClientConnection, ...] = ()


@contextlib.asynccontextmanager
async def connect(ssh: SSHSettings, credentials: Credentials) -> AsyncIterator[Chain]:
    """Connect to the bastion through any jump hosts; every connection is closed on exit."""
    async with contextlib.AsyncExitStack() as stack:
        *hops, connection = await _connect_chain(ssh, credentials, stack)
        yield Chain(connection=connection, hops=tuple(hops))


@contextlib.asynccontextmanager
async def forward(chain: Chain, db_host: str, db_port: int, local_port: int = 0) -> AsyncIterator[Tunnel]:
    """Forward ``127.0.0.1:<port>`` over an open chain to ``db_host:db_port`` (several may share one chain)."""
    async with contextlib.AsyncExitStack() as stack:
        # A gate opened at once rather than asyncssh's forward_local_port: a refused channel's
        # reason is kept (forward_local_port's listener swallows it).
        sock = loopback.bind_loopback(local_port)
        stack.callback(sock.close)
        forwards = await stack.enter_async_context(gate(sock))
        forwards.open_to(chain.connection, db_host, db_port)
        yield Tunnel(port=forwards.port, connection=chain.connection, hops=chain.hops, forwards=forwards)
