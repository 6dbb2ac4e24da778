"""Fixtures shared by the integration and end-to-end tests: the real lab."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ActionRun, load_lab, owned_databases, run_action, unique


@pytest.fixture(scope="session")
def lab() -> dict[str, Any]:
    return load_lab()


@pytest.fixture
def fresh_db(lab: dict[str, Any]) -> Iterator[str]:
    """A new, empty database owned by the lab's migration user; dropped afterwards."""
    with owned_databases(lab, [unique("it")]) as (name,):
        yield name


@pytest.fixture
def secrets(lab: dict[str, Any]) -> list[str]:
    """Every secret the lab hands to the action; no run may print any of them."""
    key_text = Path(lab["ssh_private_key_path"]).read_text()
    enc_text = Path(lab["ssh_encrypted_key_path"]).read_text()
    return [
        lab["ssh_password"],
        lab["db_password"],
        lab["ssh_key_passphrase"],
        key_text,
        enc_text,
        SECRET_KEY,
    ]


SECRET_KEY = "django-insecure-lab-secret-key-9f3b2c"


@pytest.fixture
def base_inputs(lab: dict[str, Any], fresh_db: str) -> dict[str, str]:
    """Inputs for a lightweight run against the lab, password auth, on a fresh database."""
    return {
        "environment": "lab",
        "mode": "lightweight",
        "command": "probe",
        "ssh-host": lab["bastion_host"],
        "ssh-port": str(lab["ssh_port"]),
        "ssh-user": lab["ssh_password_user"],
        "ssh-password": lab["ssh_password"],
        "ssh-known-hosts": lab["ssh_known_hosts"],
        "db-host": lab["db_host"],
        "db-port": str(lab["db_port"]),
        "db-name": fresh_db,
        "db-user": lab["db_user"],
        "db-password": lab["db_password"],
        "db-sslmode": "require",
        "python": lab["runner_python"],
        "working-directory": lab["sample_project"],
        "django-settings-module": lab["django_settings_module"],
        "secret-key": SECRET_KEY,
        "connect-timeout": "10",
    }


@pytest.fixture
def action(tmp_path: Path, secrets: list[str]) -> Callable[..., ActionRun]:
    """Run entrypoint.py as the composite action does; every run is scanned for leaks."""
    counter = iter(range(1000))

    def run(inputs: dict[str, str], extra_env: dict[str, str] | None = None) -> ActionRun:
        result = run_action(inputs, tmp_path / f"run{next(counter)}", extra_env)
        leaked = result.leaks(secrets)
        assert not leaked, f"secret forms printed: {len(leaked)}\n{result.explain()}"
        return result

    return run
