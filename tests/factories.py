"""Settings for unit tests, parsed the way the action parses its inputs (no connection is made)."""

from __future__ import annotations

from pathlib import Path

from bastion_action import settings

FINGERPRINT = "SHA256:" + "A" * 43


# A complete lightweight `migrate` run's inputs, as a step would give them (no connection is made).
BASE_INPUTS: dict[str, str] = {
    "mode": "lightweight",
    "command": "migrate",
    "ssh-host": "bastion.example.com",
    "ssh-user": "deploy",
    "ssh-password": "s3cret:pw",
    "ssh-host-fingerprint": FINGERPRINT,
    "db-host": "10.0.0.5",
    "db-name": "app",
    "db-user": "migrator",
    "db-password": "p@ss:w/rd#%x",
}


def make_settings(workspace: Path | str = "/ws", **overrides: str) -> settings.Settings:
    """``settings.parse`` of ``BASE_INPUTS`` with ``overrides`` (``db_name=`` for db-name)."""
    raw = BASE_INPUTS | {name.replace("_", "-"): value for name, value in overrides.items()}
    return settings.parse(raw, environ={"GITHUB_WORKSPACE": str(workspace)})
