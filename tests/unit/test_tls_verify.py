"""db-sslrootcert: the settings it needs, the TLS context the action's session uses, and the command's URL and file.

The context is tested against an in-process TLS server on 127.0.0.1, dialled as asyncpg dials the
tunnel (the address as the server name): the certificate must be checked against db-host instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ssl
import stat
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from certs import CA, make_ca
from factories import make_settings

from bastion_action import cafile, database
from bastion_action.errors import ProbeError, SettingsError
from bastion_action.report import ServerInfo
from bastion_action.settings import DatabaseSettings

NAME = "db.example"
ADDRESS = "10.0.0.5"


@pytest.fixture(scope="module")
def ca() -> CA:
    return make_ca()


@contextlib.asynccontextmanager
async def tls_server(
    ca: CA, *, dns: tuple[str, ...] = (NAME,), ips: tuple[str, ...] = (ADDRESS,)
) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 presenting a certificate from ``ca`` for these names; yields its port."""
    issued = ca.issue(dns=dns, ips=ips)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with cafile.written(issued.cert) as cert, cafile.written(issued.key) as key:
        context.load_cert_chain(str(cert), str(key))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def handshake(db: DatabaseSettings, port: int) -> None:
    """Connect as asyncpg does through the tunnel: to 127.0.0.1, naming 127.0.0.1."""
    context = database.tls_context(db)
    assert isinstance(context, ssl.SSLContext)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


def db_settings(ca: CA, sslmode: str = "verify-full", host: str = NAME) -> DatabaseSettings:
    return make_settings(db_host=host, db_sslmode=sslmode, db_sslrootcert=ca.cert).db


@pytest.mark.parametrize(
    ("sslmode", "host"),
    [
        pytest.param("verify-full", NAME, id="verify-full-by-name"),
        pytest.param("verify-full", ADDRESS, id="verify-full-by-address-in-the-certificate"),
        pytest.param("verify-ca", "another.example", id="verify-ca-ignores-the-name"),
    ],
)
async def test_the_certificate_is_checked_against_db_host_not_the_tunnel(ca: CA, sslmode: str, host: str) -> None:
    async with tls_server(ca) as port:
        await handshake(db_settings(ca, sslmode, host), port)


@pytest.mark.parametrize(
    ("wrong", "message", "reason"),
    [
        pytest.param(
            "name",
            "the database's certificate does not name other.example (db-host): ",
            "Hostname mismatch, certificate is not valid for 'other.example'",
            id="another-name",
        ),
        pytest.param(
            "ca",
            "the database's certificate is not signed by db-sslrootcert: ",
            "unable to get local issuer certificate",
            id="another-ca",
        ),
    ],
)
async def test_an_untrusted_certificate_is_a_probe_error_naming_why(
    ca: CA, wrong: str, message: str, reason: str
) -> None:
    db = db_settings(ca, host="other.example") if wrong == "name" else db_settings(make_ca("someone else's CA"))
    async with tls_server(ca) as port:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await handshake(db, port)
    error = database._fatal(caught.value, db)
    assert isinstance(error, ProbeError)
    assert error.message.startswith(message)
    assert reason in error.message
    assert error.anchor == "database-certificate"


def test_without_a_ca_asyncpg_gets_the_sslmode_name() -> None:
    assert database.tls_context(make_settings(db_sslmode="require").db) == "require"


@pytest.mark.parametrize(
    ("sslmode", "expected"),
    [
        pytest.param("verify-full", "on, verified as db.example", id="verify-full"),
        pytest.param("verify-ca", "on, CA verified (name not checked)", id="verify-ca"),
    ],
)
def test_the_summary_says_what_was_verified(ca: CA, sslmode: str, expected: str) -> None:
    db = db_settings(ca, sslmode)
    server = ServerInfo(
        "15.14", "app", "migrator", ssl=True, rtt_ms=1.0, applied_migrations=None,
        ca_verified=True, verified_as=database.verified_name(db),
    )  # fmt: skip
    assert server.ssl_state == expected
    assert ServerInfo("15.14", "app", "migrator", ssl=True, rtt_ms=1.0, applied_migrations=None).ssl_state == (
        "on, not verified"
    )


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
def test_verifying_modes_require_the_ca(sslmode: str) -> None:
    with pytest.raises(SettingsError) as caught:
        make_settings(db_sslmode=sslmode)
    assert caught.value.message.startswith(f"db-sslrootcert: required with db-sslmode: {sslmode}, ")


@pytest.mark.parametrize("sslmode", ["prefer", "require", "disable"])
def test_a_ca_with_a_mode_that_ignores_it_is_refused(ca: CA, sslmode: str) -> None:
    with pytest.raises(SettingsError) as caught:
        make_settings(db_sslmode=sslmode, db_sslrootcert=ca.cert)
    assert caught.value.message == (
        f"db-sslmode: expected verify-ca or verify-full with db-sslrootcert, got {sslmode}: the CA would not be checked"
        " (from the step's input db-sslmode, the step's input db-sslrootcert)"
    )


def test_a_ca_that_is_not_pem_is_refused() -> None:
    with pytest.raises(SettingsError) as caught:
        make_settings(db_sslmode="verify-ca", db_sslrootcert="-----BEGIN CERTIFICATE-----\nnot base64\n")
    assert caught.value.message.startswith("db-sslrootcert: expected PEM certificates")


def test_verify_full_url_names_db_host_and_dials_the_tunnel(ca: CA) -> None:
    url = urlsplit(db_settings(ca).url(40001, sslrootcert="/tmp/x/root.crt"))  # noqa: S108 - a path in a URL
    assert (url.hostname, url.port) == (NAME, 40001)
    assert parse_qs(url.query) == {
        "sslmode": ["verify-full"],
        "hostaddr": ["127.0.0.1"],
        "sslrootcert": ["/tmp/x/root.crt"],  # noqa: S108
    }


def test_verify_ca_url_keeps_the_tunnels_address(ca: CA) -> None:
    url = urlsplit(db_settings(ca, "verify-ca").url(40001, sslrootcert="/r.crt"))
    assert (url.hostname, url.port) == ("127.0.0.1", 40001)
    assert parse_qs(url.query) == {"sslmode": ["verify-ca"], "sslrootcert": ["/r.crt"]}


def test_the_ca_file_is_private_while_the_run_lasts_and_removed_after(ca: CA) -> None:
    with cafile.written(ca.cert) as path:
        assert path is not None
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
        assert Path(path).read_text() == ca.cert.strip() + "\n"
    assert not Path(path).parent.exists()
    with cafile.written(None) as nothing:
        assert nothing is None


def test_the_container_gets_the_file_at_the_urls_path(ca: CA) -> None:
    db = db_settings(ca)
    with cafile.written(ca.cert) as path:
        archive = cafile.archive_for(db.url(5432, sslrootcert=path))
    assert archive is not None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.getmember(str(path).lstrip("/"))
        assert member.mode == 0o644
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read().decode() == ca.cert.strip() + "\n"
    assert cafile.archive_for(make_settings().db.url(5432)) is None


def test_a_runner_that_cannot_take_the_ca_file_is_told_before_any_connection(
    ca: CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TEMP", str(tmp_path / "gone"))
    with pytest.raises(SettingsError) as info, cafile.written(ca.cert):
        pass
    assert info.value.message.startswith(
        f"db-sslrootcert: the CA certificate could not be written to RUNNER_TEMP ({tmp_path / 'gone'}) for the "
        "command to read: [Errno 2] No such file or directory"
    )
    assert "The runner's disk is full" in info.value.hint
