"""The SSH side: asyncssh connection to the bastion and the local port-forward."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator

import asyncssh

from bastion_action.errors import SettingsError, TunnelError
from bastion_action.settings import SSHSettings

# A dead link is declared after this many unanswered keepalives (ronf/asyncssh#471:
# without keepalives asyncssh never notices a silently dead peer).
KEEPALIVE_COUNT_MAX = 3


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
        try:
            known_hosts = asyncssh.import_known_hosts(ssh.known_hosts or "")
        except (ValueError, asyncssh.KeyImportError) as exc:
            raise SettingsError(
                f"ssh-known-hosts: expected known_hosts lines ('HOST KEYTYPE BASE64'), could not parse them ({exc})",
                hint="Use the output of `ssh-keyscan -p PORT HOST` as it is.",
            ) from None
    return Credentials(client_keys=client_keys, known_hosts=known_hosts)


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
    """An open forward: ``127.0.0.1:port`` reaches the database through the bastion."""

    port: int
    connection: asyncssh.SSHClientConnection

    async def wait_closed(self) -> None:
        """Return when the SSH connection ends (closed, dropped, or keepalive timeout)."""
        await self.connection.wait_closed()


def _translate(exc: BaseException, ssh: SSHSettings, client: _Client | None) -> TunnelError:  # noqa: PLR0911
    where = f"{ssh.user}@{ssh.host}:{ssh.port}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        presented = client.presented if client and client.presented else "unknown"
        return TunnelError(
            f"host key of {ssh.host}:{ssh.port} is not trusted (possible man-in-the-middle); "
            f"the bastion presented {presented}",
            hint="If the bastion's key really changed, verify it out of band "
            f"(`ssh-keygen -lf` on the bastion, or `ssh-keyscan -p {ssh.port} {ssh.host}` from a trusted network) "
            "and update ssh-known-hosts or ssh-host-fingerprint.",
            anchor="host-key",
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return TunnelError(
            f"authentication to {where} was refused",
            hint="Check ssh-user and ssh-password / ssh-private-key; a key must be in the user's authorized_keys.",
            anchor="authentication",
        )
    if isinstance(exc, TimeoutError):
        return TunnelError(
            f"no SSH answer from {ssh.host}:{ssh.port} within {ssh.connect_timeout:g} s",
            hint="Check ssh-host and ssh-port, and that the bastion's firewall admits this runner's address.",
            anchor="timeout",
        )
    if isinstance(exc, ConnectionRefusedError):
        return TunnelError(
            f"{ssh.host}:{ssh.port} refused the connection",
            hint="Check ssh-port, and that sshd is running on the bastion.",
        )
    if isinstance(exc, socket.gaierror):
        return TunnelError(f"cannot resolve {ssh.host!r} ({exc.strerror})", hint="Check ssh-host.")
    if isinstance(exc, asyncssh.Error):
        return TunnelError(
            f"SSH connection to {where} failed: {exc.reason}",
            hint="Check that the address is an SSH server (the bastion) and the settings match it.",
        )
    return TunnelError(f"SSH connection to {where} failed: {exc}", hint="Check ssh-host and ssh-port.")


@contextlib.asynccontextmanager
async def open_tunnel(
    ssh: SSHSettings, credentials: Credentials, db_host: str, db_port: int, local_port: int = 0
) -> AsyncIterator[Tunnel]:
    """Connect to the bastion and forward ``127.0.0.1:<port>`` to ``db_host:db_port``."""
    client = _Client(ssh.host_fingerprints)
    try:
        async with asyncio.timeout(ssh.connect_timeout):
            connection = await asyncssh.connect(
                ssh.host,
                ssh.port,
                username=ssh.user,
                password=ssh.password,
                client_keys=credentials.client_keys,
                known_hosts=credentials.known_hosts,
                client_factory=lambda: client,
                config=None,
                agent_path=None,
                keepalive_interval=ssh.keepalive_interval,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
                connect_timeout=ssh.connect_timeout,
                login_timeout=ssh.connect_timeout,
            )
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise _translate(exc, ssh, client) from exc
    try:
        try:
            listener = await connection.forward_local_port("127.0.0.1", local_port, db_host, db_port)
        except OSError as exc:
            msg = f"cannot listen on 127.0.0.1:{local_port} ({exc.strerror})"
            raise TunnelError(msg, hint="Leave local-port at 0 to get a free port.") from exc
        except asyncssh.Error as exc:
            raise TunnelError(
                f"the bastion refused to forward to {db_host}:{db_port}: {exc.reason}",
                hint="The bastion must allow TCP forwarding (AllowTcpForwarding, PermitOpen) to the database.",
            ) from exc
        try:
            yield Tunnel(port=listener.get_port(), connection=connection)
        finally:
            listener.close()
            await listener.wait_closed()
    finally:
        connection.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.wait_closed(), timeout=5)
