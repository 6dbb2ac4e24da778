"""scripts/setup-venv.sh on a cold runner that cannot reach its index, or with an old python3: a named failure."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import ROOT

SETUP = ROOT / "scripts" / "setup-venv.sh"
UV = Path(sys.executable).parent / "uv"


def cold_setup(tmp_path: Path, path: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """The set-up with empty caches (tool cache, uv's, pip's), as a fresh runner meets it."""
    clean = {
        "PATH": path,
        "HOME": str(tmp_path / "home"),
        "RUNNER_TOOL_CACHE": str(tmp_path / "tool-cache"),
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "PIP_NO_CACHE_DIR": "1",
        "BASTION_MIGRATE_BASE_PYTHON": sys.executable,
    }
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(SETUP)], env=clean | env, capture_output=True, text=True, timeout=120, check=False
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
