"""The package's declared dependencies are the action's own pins."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_packages_dependencies_are_the_pins_of_requirements_in() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.in").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert project["dependencies"] == pins
    assert project["scripts"] == {"bastion-migrate": "bastion_action.cli:run_and_exit"}


def test_one_author_in_the_licence_the_package_and_the_action() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [author] = [entry["name"] for entry in project["authors"]]
    assert f"Copyright (c) 2026 {author}\n" in (ROOT / "LICENSE").read_text()
    assert f"\nauthor: {author}\n" in (ROOT / "action.yml").read_text()
