"""bastion-migrate: Django migrations through an SSH bastion; ``__version__`` names the release that runs."""

from __future__ import annotations

import tomllib
from pathlib import Path

NAME = "bastion-migrate"
UNKNOWN_VERSION = "0+unknown"
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _checkout_version(pyproject: Path) -> str | None:
    """The version in the checkout the package runs from (the action is not installed), if it is one."""
    try:
        with pyproject.open("rb") as file:
            project = tomllib.load(file).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    version = project.get("version") if isinstance(project, dict) and project.get("name") == NAME else None
    return version if isinstance(version, str) and version else None


def _installed_version() -> str | None:
    # Imported only here: importlib.metadata costs every run ~10-30 ms, and a checkout does not need it.
    import importlib.metadata  # noqa: PLC0415

    try:
        return importlib.metadata.version(NAME)
    except importlib.metadata.PackageNotFoundError:
        return None


def _version(pyproject: Path = _PYPROJECT) -> str:
    # The checkout first: in an editable install its pyproject.toml is newer than the metadata written at install.
    return _checkout_version(pyproject) or _installed_version() or UNKNOWN_VERSION


__version__ = _version()
