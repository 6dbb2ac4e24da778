"""scripts/setup-venv.sh on a cold runner: a named failure when it cannot reach its index or has an old python3;
lightweight mode's smaller set, which runs the action, and a full set that serves every mode."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import ROOT, action_env, parse_output_file

SETUP = ROOT / "scripts" / "setup-venv.sh"
UV = Path(sys.executable).parent / "uv"


def cold_setup(tmp_path: Path, path: str, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """The set-up with empty caches (tool cache, uv's, pip's), as a fresh runner meets it."""
    clean = {
        "PATH": path,
        "HOME": str(tmp_path / "home"),
        "RUNNER_TOOL_CACHE": str(tmp_path / "tool-cache"),
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "PIP_NO_CACHE_DIR": "1",
        "BASTION_MIGRATE_BASE_PYTHON": sys.executable,
        # The machine's trust store (a network may reach the index only through a TLS proxy): no cache.
        **{name: os.environ[name] for name in ("SSL_CERT_FILE", "SSL_CERT_DIR") if name in os.environ},
    }
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(SETUP), *args], env=clean | env, capture_output=True, text=True, timeout=120, check=False
    )
    return done, time.monotonic() - started


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    [line] = [line for line in done.stdout.splitlines() if line.startswith("::error")]
    return line


@pytest.mark.parametrize("with_uv", [True, False], ids=["uv-on-path", "pip-bootstraps-uv"])
def test_an_unreachable_index_fails_within_seconds_naming_it(tmp_path, lab, with_uv) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if with_uv:
        (bin_dir / "uv").symlink_to(UV)
    index = f"http://{lab['blackhole_host']}:9/simple"  # packets dropped: nothing ever answers
    done, seconds = cold_setup(tmp_path, f"{bin_dir}:/usr/bin:/bin", PIP_INDEX_URL=index)
    assert done.returncode == 1, done.stdout + done.stderr
    assert seconds < 15, f"{seconds:.1f} s"
    line = error_line(done)
    assert line.startswith("::error title=bastion-migrate: setup failed::could not install ")
    assert f"if the package index {index} cannot be reached from this runner, set UV_DEFAULT_INDEX" in line


def test_an_old_python3_is_refused_with_the_fix(tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    old = bin_dir / "python3"
    old.write_text('#!/bin/sh\necho "0 /usr/bin/python3.10 3.10.12"\n')
    old.chmod(0o755)
    done, _ = cold_setup(tmp_path, f"{bin_dir}:/usr/bin:/bin", BASTION_MIGRATE_BASE_PYTHON="python3")
    assert done.returncode == 1
    assert error_line(done) == (
        "::error title=bastion-migrate: setup failed::bastion-migrate needs Python 3.11 or newer; 'python3' is "
        "3.10.12 (ubuntu-22.04's is 3.10): add actions/setup-python (python-version: '3.12') before this step, "
        "or set BASTION_MIGRATE_BASE_PYTHON to a Python 3.11+ interpreter."
    )


def test_lightweight_mode_installs_no_docker_client_and_a_full_set_serves_it_later(tmp_path, base_inputs) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "uv").symlink_to(UV)
    path = f"{bin_dir}:/usr/bin:/bin"
    github_env = tmp_path / "github-env"

    done, _ = cold_setup(tmp_path, path, " Lightweight ", GITHUB_ENV=str(github_env))
    assert done.returncode == 0, done.stdout + done.stderr
    light = Path(done.stdout.split()[-1])
    assert light.parents[1].name.startswith("venv-lightweight-")
    assert github_env.read_text() == f"BASTION_MIGRATE_VENV_KEY={light.parents[1].name.removeprefix('venv-')}\n"
    missing = "import importlib.util as u; print([m for m in ('aiodocker', 'aiohttp') if u.find_spec(m)])"
    assert subprocess.run([light, "-c", missing], capture_output=True, text=True, check=True).stdout == "[]\n"

    # The action runs from it: lightweight mode never loads the Docker client.
    workdir = tmp_path / "run"
    workdir.mkdir()
    for name in ("output", "summary"):
        (workdir / name).write_text("")
    inputs = base_inputs | {"command": "showmigrations"}
    run = subprocess.run(
        [light, str(ROOT / "entrypoint.py")],
        env=action_env(inputs, workdir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert parse_output_file((workdir / "output").read_text())["result"] == "success"

    # Any other mode (or none: the config file may choose docker) builds the full set beside it ...
    done, _ = cold_setup(tmp_path, path, "docker")
    assert done.returncode == 0, done.stdout + done.stderr
    full = Path(done.stdout.split()[-1])
    assert full.parents[1].name.startswith("venv-full-")
    assert subprocess.run([full, "-c", "import aiodocker"], check=False).returncode == 0
    assert Path(cold_setup(tmp_path, path)[0].stdout.split()[-1]) == full
    # ... which later lightweight runs use: it holds every lightweight pin.
    assert Path(cold_setup(tmp_path, path, "lightweight")[0].stdout.split()[-1]) == full
