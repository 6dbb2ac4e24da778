"""Load: parallel runs on separate databases, and many sequential runs leave nothing growing."""

from __future__ import annotations

import contextlib
import subprocess
import time

import psutil
from support import admin_sql, finish_action, live_processes, start_action, unique

PARALLEL = 10
SEQUENTIAL = 50


# What a run talks to; the machine's other processes (the test runner's, the sandbox's) churn on their own.
SERVICES = frozenset({"sshd", "postgres", "dockerd", "containerd", "docker-registry"})


def _services() -> list[psutil.Process]:
    return [process for process in live_processes() if _name(process) in SERVICES]


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return ""


def open_files() -> int:
    """Open descriptors of the services a run uses, plus this process's own."""
    total = psutil.Process().num_fds()
    for process in _services():
        with contextlib.suppress(psutil.Error):
            total += process.num_fds()
    return total


def process_count() -> int:
    """Processes of the services a run uses (per-connection sshd and postgres backends included)."""
    return len(_services())


def container_count() -> int:
    done = subprocess.run(["docker", "ps", "-aq"], capture_output=True, text=True, check=True)
    return len(done.stdout.split())


def test_parallel_runs_on_separate_databases(lab, base_inputs, tmp_path, secrets) -> None:
    databases = [unique("load") for _ in range(PARALLEL)]
    for name in databases:
        admin_sql(lab, f'CREATE DATABASE "{name}" OWNER "{lab["db_user"]}"')
    try:
        started = time.monotonic()
        processes = [
            start_action({**base_inputs, "command": "migrate", "db-name": name}, tmp_path / name) for name in databases
        ]
        runs = [finish_action(p, tmp_path / name, started) for p, name in zip(processes, databases, strict=True)]
        for run in runs:
            assert run.returncode == 0, run.explain()
            assert run.outputs["applied-count"] == "6"
            assert not run.leaks(secrets)
        ports = {run.outputs["tunnel-port"] for run in runs}
        assert len(ports) == PARALLEL, "each run has its own ephemeral port"
    finally:
        for name in databases:
            admin_sql(lab, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_sequential_runs_leave_nothing_growing(action, base_inputs) -> None:
    inputs = {**base_inputs, "command": "showmigrations"}
    action(inputs)  # warm caches before the baseline
    time.sleep(1)
    baseline = (open_files(), process_count(), container_count())
    for _ in range(SEQUENTIAL):
        run = action(inputs)
        assert run.returncode == 0, run.explain()
    time.sleep(2)  # let the bastion's per-connection sshd processes and backends exit
    files, processes, containers = open_files(), process_count(), container_count()
    assert containers == baseline[2]
    assert processes <= baseline[1], f"processes grew from {baseline[1]} to {processes}"
    assert files <= baseline[0] + 8, f"open files grew from {baseline[0]} to {files}"
