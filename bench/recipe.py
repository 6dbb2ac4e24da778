"""The shell recipe the action replaces, as close to its usual form as the lab allows.

Only two things differ from the copy-pasted original: the local port is a free
one (so the benchmark can run beside tests) and the password goes through
``sshpass -e`` (so it is not on a command line here either).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url(lab: dict[str, Any], port: int, database: str) -> str:
    user, password = quote(lab["db_user"], safe=""), quote(lab["db_password"], safe="")
    return f"postgresql://{user}:{password}@127.0.0.1:{port}/{database}?sslmode=require"


@contextmanager
def ssh_forward(lab: dict[str, Any]) -> Iterator[int]:
    """`sshpass ssh -o StrictHostKeyChecking=no -N -L port:db:5432 user@bastion &`, then wait for the port."""
    port = free_port()
    argv = [
        "sshpass", "-e", "ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-N", "-L", f"{port}:{lab['db_host']}:{lab['db_port']}",
        "-p", str(lab["ssh_port"]), f"{lab['ssh_password_user']}@{lab['bastion_host']}",
    ]  # fmt: skip
    env = {**os.environ, "SSHPASS": lab["ssh_password"]}
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                msg = "the recipe's ssh -L never listened"
                raise RuntimeError(msg)
            time.sleep(0.01)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def psql_probe(lab: dict[str, Any], port: int, database: str) -> None:
    """The recipe's `psql ... -c 'select version()'` connectivity check."""
    subprocess.run(
        ["psql", database_url(lab, port, database), "-qAt", "-c", "select version()"],
        check=True,
        capture_output=True,
    )
