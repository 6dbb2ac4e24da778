"""The package's declared dependencies are the action's own pins; lightweight mode's lock is a part of the full one."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")
_HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")


def pins_of(requirements_in: Path) -> list[str]:
    """The pins of a requirements .in file, with its `-r` files expanded in place."""
    pins: list[str] = []
    for line in requirements_in.read_text().splitlines():
        text = line.split("#")[0].strip()
        if text.startswith("-r "):
            pins += pins_of(requirements_in.parent / text.removeprefix("-r ").strip())
        elif text:
            pins.append(text)
    return pins


def locked(lock: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """A hash-pinned lock file: name -> (version, hashes)."""
    packages: dict[str, tuple[str, frozenset[str]]] = {}
    name = ""
    for line in lock.read_text().splitlines():
        if match := _PIN.match(line):
            name = match[1].lower()
            packages[name] = (match[2], frozenset())
        elif hashes := _HASH.findall(line):
            version, known = packages[name]
            packages[name] = (version, known | set(hashes))
    return packages


def test_the_packages_dependencies_are_the_pins_of_requirements_in() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == pins_of(ROOT / "requirements.in")
    assert project["scripts"] == {"bastion-migrate": "bastion_action.cli:run_and_exit"}


def test_lightweight_mode_needs_all_but_the_docker_client() -> None:
    full, light = pins_of(ROOT / "requirements.in"), pins_of(ROOT / "requirements-lightweight.in")
    assert set(full) - set(light) == {"aiodocker==0.27.0"}
    assert set(light) < set(full)


def test_the_lightweight_lock_is_a_subset_of_the_full_lock_with_the_same_pins() -> None:
    full, light = locked(ROOT / "requirements.txt"), locked(ROOT / "requirements-lightweight.txt")
    assert light, "requirements-lightweight.txt holds no pins"
    assert all(hashes for _, hashes in [*full.values(), *light.values()]), "a pin without hashes"
    for name, pin in light.items():
        assert full.get(name) == pin, f"{name}: {pin[0]} in requirements-lightweight.txt, {full.get(name)} in the full"
    assert "aiodocker" in full
    assert not {"aiodocker", "aiohttp"} & set(light), "the Docker client in the lightweight lock"


def test_one_author_in_the_licence_the_package_and_the_action() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [author] = [entry["name"] for entry in project["authors"]]
    assert f"Copyright (c) 2026 {author}\n" in (ROOT / "LICENSE").read_text()
    assert f"\nauthor: {author}\n" in (ROOT / "action.yml").read_text()
