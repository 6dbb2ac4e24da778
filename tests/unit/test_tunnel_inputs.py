"""What the tunnel takes from the settings, against real keys and servers: keys, known_hosts, the local port."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import asyncssh
import pytest
from sshd import HOST, SSHD, Target, tcp_target

from bastion_action import loopback, tunnel
from bastion_action.errors import SettingsError, TunnelError


def encrypted(key_text: str, passphrase: str) -> str:
    """The key encrypted with few KDF rounds: as real as ssh-keygen's, quicker to open."""
    key = asyncssh.import_private_key(key_text)
    return key.export_private_key(passphrase=passphrase, rounds=4, ignore_few_rounds=True).decode()


async def test_encrypted_key_with_its_passphrase_connects(sshd: SSHD) -> None:
    ssh = sshd.settings(password=None, private_key=encrypted(sshd.client_key, "opens"), passphrase="opens")
    async with tunnel.connect(ssh, tunnel.load_credentials(ssh)) as chain:
        assert not chain.connection.is_closed()


@pytest.mark.parametrize(
    ("overrides", "message", "hint"),
    [
        pytest.param(
            {"private_key": "encrypted", "passphrase": "wrong"},
            "ssh-passphrase: expected the passphrase of ssh-private-key",
            "Give the key's passphrase in ssh-passphrase.",
            id="wrong-passphrase",
        ),
        pytest.param(
            {"private_key": "encrypted", "passphrase": None},
            "ssh-private-key: expected a private key, could not parse it",
            "The key is encrypted: give its passphrase in ssh-passphrase.",
            id="missing-passphrase",
        ),
        pytest.param(
            {"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n-----END OPENSSH PRIVATE KEY-----"},
            "ssh-private-key: expected a private key, could not parse it",
            "Paste the whole key text, including its BEGIN and END lines.",
            id="garbage-key",
        ),
        pytest.param(
            {"known_hosts": "[127.0.0.1]:22 ssh-ed25519"},
            "ssh-known-hosts: line 1: expected 'HOSTS KEYTYPE BASE64KEY'",
            "ssh-keyscan",
            id="short-known-hosts-line",
        ),
        pytest.param(
            {"known_hosts": "# comment\n\n@cert-authority * ssh-ed25519 AAAAnotbase64"},
            "ssh-known-hosts: line 3: the key does not parse",
            "one entry per line",
            id="bad-known-hosts-key",
        ),
    ],
)
def test_bad_credentials_name_the_input(sshd: SSHD, overrides: dict[str, Any], message: str, hint: str) -> None:
    if overrides.get("private_key") == "encrypted":
        overrides = overrides | {"private_key": encrypted(sshd.client_key, "right")}
    with pytest.raises(SettingsError) as caught:
        tunnel.load_credentials(sshd.settings(**overrides))
    assert caught.value.message.startswith(message)
    assert hint in caught.value.hint


def test_no_known_hosts_when_the_check_is_skipped(sshd: SSHD) -> None:
    ssh = sshd.settings(known_hosts=None, insecure_skip_host_key_check=True)
    assert tunnel.load_credentials(ssh) == tunnel.Credentials(client_keys=None, known_hosts=None)


async def not_ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """What this machine's transparent proxy answers to anything: an HTTP error, then close."""
    await reader.readline()
    writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")


async def test_a_server_that_is_not_ssh_is_named(sshd: SSHD) -> None:
    async with tcp_target(not_ssh) as target:
        ssh = sshd.settings(port=target.port)
        with pytest.raises(TunnelError) as caught:
            async with tunnel.connect(ssh, tunnel.load_credentials(ssh)):
                pytest.fail("connected")
    assert caught.value.message.startswith(f"SSH connection to {sshd.user}@{HOST}:{target.port} failed: ")
    assert "is an SSH server" in caught.value.hint


def test_local_port_in_use_names_the_input() -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(SettingsError) as caught:
            loopback.bind_loopback(port)
    assert caught.value.message.startswith(f"local-port: expected a free port, 127.0.0.1:{port} is not")


async def test_a_fixed_local_port_is_used(sshd: SSHD, echo: Target) -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    ssh = sshd.settings()
    async with tunnel.open_tunnel(ssh, tunnel.load_credentials(ssh), echo.host, echo.port, local_port=port) as opened:
        assert opened.port == port
