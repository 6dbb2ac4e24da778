"""Bad input is rejected before any network connection, naming the input and what was expected."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from support import assert_report

# An address whose packets the lab drops: had the action connected first, it would hang for connect-timeout.
UNREACHABLE = "192.0.2.1"


@pytest.fixture
def unreachable(base_inputs) -> dict[str, str]:
    return {**base_inputs, "ssh-host": UNREACHABLE, "connect-timeout": "30", "command": "migrate"}


def assert_rejected(run, expected: str, problems: int = 1) -> None:
    assert run.returncode == 1, run.explain()
    errors = [line for line in run.annotations if line.startswith("::error")]
    assert len(errors) == problems, run.explain()  # every problem of the run, one annotation each
    assert all(error.startswith("::error title=bastion-migrate%3A settings failed::") for error in errors)
    assert expected in errors[0], run.explain()
    assert run.seconds < 5, "rejected at once, before any connection"
    assert_report(run, "settings")
    assert "tunnel-port" not in run.outputs


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({"ssh-user": ""}, "ssh-user: required", id="empty-ssh-user"),
        pytest.param({"db-name": " "}, "db-name: required", id="blank-db-name"),
        pytest.param({"ssh-password": ""}, "ssh-password or ssh-private-key: one is required", id="no-credentials"),
        pytest.param({"ssh-port": "70000"}, "ssh-port: expected a port number 1-65535", id="port"),
        pytest.param({"mode": "k8s"}, "mode: expected one of", id="mode"),
        pytest.param({"command": "makemigrations"}, "command: expected one of", id="command"),
        pytest.param({"mode": "docker", "image": "Bad//Ref"}, "image: expected an image reference", id="image"),
        pytest.param({"ssh-known-hosts": "not a known_hosts line"}, "ssh-known-hosts: line 1:", id="known-hosts"),
        pytest.param(
            {"ssh-password": "", "ssh-private-key": "-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n"},
            "ssh-private-key: expected a private key",
            id="key-garbage",
        ),
        pytest.param({"secrets": "{not json"}, "secrets: expected a JSON object", id="secrets-json"),
        pytest.param({"timeout": "0"}, "timeout: expected a number of seconds greater than 0", id="timeout"),
        pytest.param({"lock-timeout": "-1"}, "lock-timeout: expected a number of seconds", id="lock-timeout"),
        pytest.param({"config-file": "missing.yml"}, "config-file:", id="config-missing"),
        pytest.param(
            # A second `::error::` line would fail the one-annotation check: the value is described, not echoed.
            {"db-host": "10.0.0.5\n::error::x"},
            "db-host: expected a single line without control characters, got a newline (U+000A) at position 9",
            id="newline-in-db-host",
        ),
    ],
)
def test_rejected_before_connecting(action, unreachable, overrides, expected) -> None:
    assert_rejected(action({**unreachable, **overrides}), expected)


def test_encrypted_key_without_passphrase(action, unreachable, lab) -> None:
    key = Path(lab["ssh_encrypted_key_path"]).read_text()
    run = action({**unreachable, "ssh-password": "", "ssh-private-key": key})
    assert_rejected(run, "ssh-private-key")
    assert "passphrase" in run.annotations[0]


def test_local_port_in_use(action, unreachable) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = action({**unreachable, "local-port": str(port)})
    assert_rejected(run, f"local-port: expected a free port, 127.0.0.1:{port} is not")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param("environments: {prod: {}}", "environment: 'lab' is not in", id="unknown-environment"),
        pytest.param("defaults: {mode: [unclosed", "is not valid YAML", id="invalid-yaml"),
        pytest.param("defaults: {db-password: x}", "secrets do not belong in the config file", id="secret-in-file"),
        pytest.param("defaults: {db-prot: 5432}", "defaults.db-prot: unknown key", id="typo-in-file"),
    ],
)
def test_config_file_errors(action, unreachable, tmp_path, config, expected) -> None:
    path = tmp_path / "topology.yml"
    path.write_text(config)
    assert_rejected(action({**unreachable, "config-file": str(path)}), expected)


def test_missing_prefixed_secret_is_named(action, unreachable) -> None:
    team = {"LAB_HOST": UNREACHABLE, "LAB_USER": "team-user", "LAB_SSH_PASSWORD": "team-pw", "LAB_DB_USER": "dbu"}
    inputs = {k: v for k, v in unreachable.items() if not k.startswith(("db-host", "db-name", "db-password"))}
    run = action({**inputs, "secrets": json.dumps(team), "db-user": "", "ssh-host": "", "ssh-user": ""})
    assert_rejected(run, "(not set: input db-host, secret LAB_DB_HOST or DB_HOST)", problems=3)
    assert "db-name: required" in run.annotations[1]
    assert "db-password: required" in run.annotations[2]
    assert all("team-pw" not in annotation for annotation in run.annotations)
