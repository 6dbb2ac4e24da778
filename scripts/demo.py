"""`make demo`: the action's job against the lab, as a workflow step runs it.

Builds the action's cached venv with its own setup script, then runs
probe -> showmigrations -> migrate -> showmigrations on a fresh database
through the bastion, printing each step's log and summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB_DIR = Path(os.environ.get("LAB_DIR", "/var/lib/bastion-migrate-lab"))
DEMO_DB = "demo"


def admin(lab: dict[str, str], sql: str) -> None:
    subprocess.run([*lab["db_admin_argv"], "-c", sql], check=True, capture_output=True)


def main() -> int:
    lab = json.loads((LAB_DIR / "lab.json").read_text())
    admin(lab, f"DROP DATABASE IF EXISTS {DEMO_DB} WITH (FORCE)")
    admin(lab, f'CREATE DATABASE {DEMO_DB} OWNER "{lab["db_user"]}"')
    setup = subprocess.run(["bash", str(ROOT / "scripts/setup-venv.sh")], check=True, capture_output=True, text=True)
    python = setup.stdout.strip().splitlines()[-1]
    inputs = {
        "environment": "lab",
        "mode": "lightweight",
        "ssh-host": lab["bastion_host"],
        "ssh-port": str(lab["ssh_port"]),
        "ssh-user": lab["ssh_password_user"],
        "ssh-password": lab["ssh_password"],
        "ssh-known-hosts": lab["ssh_known_hosts"],
        "db-host": lab["db_host"],
        "db-port": str(lab["db_port"]),
        "db-name": DEMO_DB,
        "db-user": lab["db_user"],
        "db-password": lab["db_password"],
        "db-sslmode": "require",
        "python": lab["runner_python"],
        "working-directory": lab["sample_project"],
        "django-settings-module": lab["django_settings_module"],
        "secret-key": "demo-secret-key-not-for-production",
    }
    status = 0
    for command in ("probe", "showmigrations", "migrate", "showmigrations"):
        print(f"\n######## bastion-migrate command={command}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("INPUT_", "GITHUB_"))}
            env.update({"INPUT_" + k.upper().replace("-", "_"): v for k, v in inputs.items()})
            env["INPUT_COMMAND"] = command
            env["GITHUB_WORKSPACE"] = tmp
            status = subprocess.run([python, str(ROOT / "entrypoint.py")], env=env, check=False).returncode
        if status:
            break
    return status


if __name__ == "__main__":
    sys.exit(main())
