"""A throwaway PostgreSQL cluster on 127.0.0.1 for the unit layer: real server, no lab, no root needed.

The cluster is initialised in a temporary directory and started with ``pg_ctl``; as root
(PostgreSQL refuses to run as root) it runs as the ``postgres`` user. Password (scram)
authentication over TCP, as the action meets it through a tunnel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

USER = "admin"
PASSWORD = "local-pg-password"


@dataclasses.dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}?sslmode=disable"


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """Start a cluster; stop it and remove its files on exit. Raises when PostgreSQL is not installed."""
    bindir = _bindir()
    if bindir is None:
        msg = "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql"
        raise RuntimeError(msg)
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    with tempfile.TemporaryDirectory(prefix="bm-pg-") as tmp:
        base = Path(tmp)
        data, pwfile = base / "data", base / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if as_root:
            owner = pwd.getpwnam("postgres")
            for path in (base, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        port = _free_port()
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {base} -c fsync=off -c max_connections=100"
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        try:
            yield Postgres(host="127.0.0.1", port=port, user=USER, password=PASSWORD)
        finally:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                check=False, capture_output=True, timeout=60,
            )  # fmt: skip
