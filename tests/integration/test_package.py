"""`pip install .` anywhere gives the local CLI: `bastion-migrate --version`, `--help`, and a real run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

from bastion_action.inputs import INPUTS_BY_NAME

UV = Path(sys.executable).parent / "uv"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with the package installed from it; its console script."""
    venv = tmp_path_factory.mktemp("pkg") / "venv"
    subprocess.run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(UV), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(ROOT)],
        check=True,
        timeout=300,
    )
    return venv / "bin" / "bastion-migrate"


def cli(script: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items() if not name.startswith(("INPUT_", "GITHUB_"))}
    return subprocess.run(
        [str(script), *args], cwd=cwd, env=clean | (env or {}), capture_output=True, text=True, timeout=120
    )


def test_version_and_help_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    import tomllib  # noqa: PLC0415

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    done = cli(installed, "--version", cwd=tmp_path)
    assert (done.returncode, done.stdout.strip()) == (0, f"bastion-migrate {version}"), done.stderr
    done = cli(installed, "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "--ssh-host" in done.stdout
    assert not str(installed).startswith(str(ROOT))


def test_the_installed_cli_runs_showmigrations_against_the_lab(installed: Path, base_inputs, tmp_path: Path) -> None:
    inputs = {**base_inputs, "command": "showmigrations"}
    secret = {name for name in inputs if INPUTS_BY_NAME[name].secret}
    flags = [f"--{name}={value}" for name, value in inputs.items() if name not in secret]
    env = {INPUTS_BY_NAME[name].env: inputs[name] for name in secret}  # secrets never on a command line
    done = cli(installed, *flags, cwd=tmp_path, env=env | {"GITHUB_WORKSPACE": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("bastion-migrate ")
    assert "  result: success" in lines
    assert " [ ] 0001_initial" in lines
