"""The local CLI on the same engine: flags, secrets from <ENV>_* variables, the YAML topology file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from support import ROOT, secret_forms


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [sys.executable, "-m", "bastion_action", *args],
        env={**base, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def team_env(lab, database: str, prefix: str = "DEV") -> dict[str, str]:
    return {
        f"{prefix}_HOST": lab["bastion_host"],
        f"{prefix}_USER": lab["ssh_password_user"],
        f"{prefix}_SSH_PASSWORD": lab["ssh_password"],
        f"{prefix}_DB_HOST": lab["db_host"],
        f"{prefix}_DB_USER": lab["db_user"],
        f"{prefix}_DB_PASSWORD": lab["db_password"],
        f"{prefix}_DB_NAME": database,
        f"{prefix}_SECRET_KEY": "cli-secret-key-value",
    }


def assert_clean(done: subprocess.CompletedProcess[str], secrets: list[str]) -> None:
    text = done.stdout + done.stderr
    assert "::" not in text.replace("http://", ""), "no workflow commands off GitHub"
    leaked = [form for secret in secrets for form in secret_forms(secret) if form in text]
    assert not leaked, f"{len(leaked)} secret forms printed"


def test_cli_with_flags_and_team_variables(lab, fresh_db, tmp_path, secrets) -> None:
    args = ["--env", "dev", "--mode", "lightweight", "--command", "migrate", "--db-sslmode", "require"]
    args += ["--ssh-known-hosts", lab["ssh_known_hosts"], "--python", lab["runner_python"]]
    args += ["--working-directory", lab["sample_project"], "--django-settings-module", lab["django_settings_module"]]
    done = cli(args, team_env(lab, fresh_db), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Applying catalog.0001_initial... OK" in done.stdout
    assert "outputs:" in done.stdout
    assert "  applied-count: 6" in done.stdout
    assert "### ✅ bastion-migrate: `migrate` on dev — success" in done.stdout
    assert_clean(done, [*secrets, "cli-secret-key-value"])


def test_cli_reads_the_topology_file_and_fails_like_the_action(lab, fresh_db, tmp_path, secrets) -> None:
    (tmp_path / ".github").mkdir()
    config = {
        "defaults": {"mode": "lightweight", "db-sslmode": "require", "ssh-known-hosts": lab["ssh_known_hosts"]},
        "environments": {"uat": {"db-port": lab["db_port"], "command": "probe"}},
    }
    (tmp_path / ".github/bastion-migrate.yml").write_text(yaml.safe_dump(config))
    env = team_env(lab, fresh_db, "UAT")
    done = cli(["--env", "uat"], env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "probe: PostgreSQL 15" in done.stdout
    assert_clean(done, secrets)

    env["UAT_SSH_PASSWORD"] = "wrong-password-for-the-cli"
    failed = cli(["--env", "uat"], env, tmp_path)
    assert failed.returncode == 1
    assert "error [tunnel]: authentication to" in failed.stdout
    assert "hint: " in failed.stdout
    assert_clean(failed, [*secrets, "wrong-password-for-the-cli"])

    del env["UAT_DB_HOST"]
    missing = cli(["--env", "uat"], env, tmp_path)
    assert missing.returncode == 1
    assert "error [settings]: db-host: required" in missing.stdout


def test_cli_help_lists_every_input(tmp_path) -> None:
    done = cli(["--help"], {}, tmp_path)
    assert done.returncode == 0
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    for name in action["inputs"]:
        assert f"--{name}" in done.stdout
