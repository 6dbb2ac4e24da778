"""Shared by the benchmarks: the lab, a scratch database, running the action, medians and ratios."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAB_DIR = Path(os.environ.get("LAB_DIR", "/var/lib/bastion-migrate-lab"))


def load_lab() -> dict[str, Any]:
    return json.loads((LAB_DIR / "lab.json").read_text())


def admin(lab: dict[str, Any], sql: str, database: str = "postgres") -> str:
    argv = list(lab["db_admin_argv"])
    argv[argv.index("-d") + 1] = database
    return subprocess.run([*argv, "-c", sql], check=True, capture_output=True, text=True).stdout.strip()


def drop_databases(lab: dict[str, Any], *names: str) -> None:
    """Gone, whoever is still connected to them."""
    for name in names:
        admin(lab, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def fresh_database(lab: dict[str, Any], name: str, *, migrated: bool = True) -> None:
    """A database with the sample migrations applied (through the bastion namespace, no tunnel)."""
    drop_databases(lab, name)
    admin(lab, f'CREATE DATABASE {name} OWNER "{lab["db_user"]}"')
    if migrated:
        floor_run(lab, name, ["migrate", "--noinput"])


def cloned_database(lab: dict[str, Any], name: str, template: str) -> None:
    """A copy of ``template`` (a file copy on the server: many databases in seconds), owned by the lab's user."""
    drop_databases(lab, name)
    admin(lab, f'CREATE DATABASE {name} TEMPLATE {template} OWNER "{lab["db_user"]}"')


def direct_url(lab: dict[str, Any], database: str) -> str:
    from urllib.parse import quote  # noqa: PLC0415

    user, password = quote(lab["db_user"], safe=""), quote(lab["db_password"], safe="")
    return f"postgresql://{user}:{password}@{lab['db_host']}:{lab['db_port']}/{database}?sslmode=require"


def floor_run(lab: dict[str, Any], database: str, args: list[str]) -> None:
    """The floor: the Django command from inside the bastion namespace, straight to the database."""
    env = {
        **os.environ,
        "DATABASE_URL": direct_url(lab, database),
        "DJANGO_SETTINGS_MODULE": lab["django_settings_module"],
        "SECRET_KEY": "bench",
    }
    subprocess.run(
        ["ip", "netns", "exec", lab["bastion_ns"], lab["runner_python"], "manage.py", *args],
        cwd=lab["sample_project"],
        env=env,
        check=True,
        capture_output=True,
    )


def action_python() -> str:
    done = subprocess.run(["bash", str(ROOT / "scripts/setup-venv.sh")], check=True, capture_output=True, text=True)
    return done.stdout.split()[-1]


def action_inputs(lab: dict[str, Any], database: str, **extra: str) -> dict[str, str]:
    return {
        "ssh-host": lab["bastion_host"],
        "ssh-port": str(lab["ssh_port"]),
        "ssh-user": lab["ssh_password_user"],
        "ssh-password": lab["ssh_password"],
        "ssh-known-hosts": lab["ssh_known_hosts"],
        "db-host": lab["db_host"],
        "db-port": str(lab["db_port"]),
        "db-name": database,
        "db-user": lab["db_user"],
        "db-password": lab["db_password"],
        "db-sslmode": "require",
        "django-settings-module": lab["django_settings_module"],
        "secret-key": "bench",
        **extra,
    }


def action_env(inputs: dict[str, str]) -> dict[str, str]:
    """The environment the action's step gets: this one's less any INPUT_/GITHUB_ variable, plus the inputs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INPUT_", "GITHUB_"))}
    env.update({"INPUT_" + k.upper().replace("-", "_"): v for k, v in inputs.items()})
    return env


def run_action(python: str, inputs: dict[str, str]) -> str:
    """One run of the action as its composite step runs it (off GitHub: it prints its summary); its output."""
    env = action_env(inputs)
    done = subprocess.run([python, str(ROOT / "entrypoint.py")], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"the action failed:\n{done.stdout[-3000:]}")
    return done.stdout


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def measure(variants: dict[str, Callable[[], object]], runs: int, warmup: int = 1) -> dict[str, list[float]]:
    """Interleaved runs, so drift in the machine hits every variant alike."""
    for _ in range(warmup):
        for function in variants.values():
            function()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, function in variants.items():
            samples[name].append(timed(function))
    return samples


def report(title: str, samples: dict[str, list[float]], unit: str = "s") -> dict[str, float]:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"\n{title} (medians of {len(next(iter(samples.values())))} runs)")
    for name, value in medians.items():
        values = samples[name]
        print(f"  {name:28} {value:8.4f} {unit}   (min {min(values):.4f}, max {max(values):.4f})")
    return medians


def ratio(name: str, value: float, target: str) -> None:
    print(f"  RATIO {name:46} {value:6.2f}   target {target}")
