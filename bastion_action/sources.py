"""Where raw inputs come from, and which wins: explicit input > secrets by prefix > config file > default.

- explicit inputs: ``INPUT_*`` (the composite action) or CLI flags;
- secrets by prefix: the ``secrets`` input (``${{ toJSON(secrets) }}``), else environment
  variables, read as ``<PREFIX>_HOST``, ``<PREFIX>_DB_PASSWORD``, ... and ``DO_ACCESS_TOKEN``;
- the YAML topology file (``config-file``): ``defaults`` and ``environments.<name>``,
  non-secret keys only;
- the defaults of action.yml (applied later, by the settings reader).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bastion_action.errors import SettingsError
from bastion_action.inputs import INPUTS, INPUTS_BY_NAME, did_you_mean

DEFAULT_CONFIG_FILE = INPUTS_BY_NAME["config-file"].default

# Secret name (after "<PREFIX>_") -> input it fills.
PREFIXED_SECRETS: Mapping[str, str] = {spec.by_prefix: spec.name for spec in INPUTS if spec.by_prefix}
REGISTRY_TOKEN = "DO_ACCESS_TOKEN"  # noqa: S105 - a secret's name, not a secret. DigitalOcean's registry: the token is both username and password
REGISTRY_TOKEN_FILLS = ("registry-username", "registry-password")

# Keys the topology file may set: the rows marked in_file (no secret, nothing that picks the file or section).
FILE_KEYS = frozenset(spec.name for spec in INPUTS if spec.in_file)
# Keys that name no secret input but look like one (db_password, registry-token): refused as secrets
# too, since "unknown key" would invite the user to find the right spelling for a secret in a committed file.
_SECRET_WORDS = re.compile(r"password|passphrase|private-key|secret|token", re.IGNORECASE)


def _names_a_secret(key: str) -> bool:
    spec = INPUTS_BY_NAME.get(key)
    return (spec is not None and spec.secret) or (key not in FILE_KEYS and _SECRET_WORDS.search(key) is not None)


@dataclasses.dataclass(frozen=True)
class Layered:
    """The merged raw inputs, and where the secrets-by-prefix layer looked for each input."""

    values: dict[str, str]
    secret_names: dict[str, str]  # input -> the secret that would have filled it, e.g. ssh-host -> UAT_HOST
    secret_values: list[str]  # every value taken from secrets: all are masked
    registry_token: bool = False  # registry-username/-password came from DO_ACCESS_TOKEN


def default_prefix(environment: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", environment).upper()


def secrets_json(text: str) -> dict[str, str]:
    """The ``secrets`` input: a JSON object of names to strings; its content is never echoed."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(
            f"secrets: expected a JSON object, as ${{{{ toJSON(secrets) }}}} gives, got invalid JSON "
            f"(line {exc.lineno}, column {exc.colno})",
            hint="Pass `secrets: ${{ toJSON(secrets) }}`, or leave the input out.",
        ) from None
    if not isinstance(data, dict):
        raise SettingsError(
            f"secrets: expected a JSON object, as ${{{{ toJSON(secrets) }}}} gives, got a JSON {type(data).__name__}",
            hint="Pass `secrets: ${{ toJSON(secrets) }}`, or leave the input out.",
        )
    return {str(key): value if isinstance(value, str) else json.dumps(value) for key, value in data.items()}


def _by_prefix(source: Mapping[str, str], prefix: str, *, plain: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """Inputs filled from ``<PREFIX>_<NAME>`` secrets, and the secret each input was (or would be) read from.

    ``plain``: when ``<PREFIX>_<NAME>`` is not set, ``<NAME>`` itself fills the input — GitHub
    environment secrets (``jobs.<id>.environment``) usually have plain names. Only the secrets JSON
    is read so: plain ``HOST`` or ``USER`` in a process environment are the machine's, not the team's.
    """
    values, names = {}, {}
    for suffix, name in PREFIXED_SECRETS.items():
        candidates = [f"{prefix}_{suffix}"] if prefix else []
        if plain:
            candidates.append(suffix)
        if candidates:
            names[name] = candidates[0]
        for secret in candidates:
            if source.get(secret, "").strip():
                values[name] = source[secret]
                names[name] = secret
                break
    token = source.get(REGISTRY_TOKEN, "")
    if token.strip():
        values.update(dict.fromkeys(REGISTRY_TOKEN_FILLS, token))
    return values, names


def _scalar(value: Any, where: str) -> str:  # YAML gives any type
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str | int) for item in value):
        return "\n".join(str(item) for item in value)
    raise SettingsError(f"{where}: expected a text, number, boolean or list of texts, got a {type(value).__name__}")


def _section(data: Any, path: str, where: str) -> dict[str, str]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{where}: {path}: expected a mapping of input names to values")
    values = {}
    for key, value in data.items():
        name = str(key)
        if _names_a_secret(name):
            raise SettingsError(
                f"{where}: {path}.{name}: secrets do not belong in the config file",
                hint="Keep secrets in GitHub secrets and pass them as inputs or through `secrets`.",
            )
        if name not in FILE_KEYS:
            suggestion = did_you_mean(name, sorted(FILE_KEYS))
            meant = f" ({suggestion})" if suggestion else ""
            raise SettingsError(
                f"{where}: {path}.{name}: unknown key{meant}; expected one of: {', '.join(sorted(FILE_KEYS))}",
                hint="Keys are the action's input names (kebab-case); a typo must not silently do nothing.",
            )
        values[name] = _scalar(value, f"{where}: {path}.{name}")
    return values


def _load_yaml(path: Path) -> Any:
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SettingsError(f"config-file: {where} is not valid YAML{at}", hint="Fix the YAML syntax.") from None
    except OSError as exc:
        raise SettingsError(f"config-file: cannot read {where}: {exc.strerror}") from None
    return data


def config_file(path: Path, environment: str, *, explicit: bool, placeholders: Mapping[str, str]) -> dict[str, str]:
    """The topology file's values for ``environment``: its defaults, then its environment section."""
    where = str(path)
    if not path.is_file():
        if explicit:
            raise SettingsError(
                f"config-file: {where} does not exist", hint="Check the path (relative to the repository root)."
            )
        return {}
    data = _load_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {"defaults", "environments"}:
        raise SettingsError(
            f"{where}: expected a mapping with 'defaults' and/or 'environments' at the top",
            hint="See docs/usage.md for the file's shape.",
        )
    values = _section(data.get("defaults"), "defaults", where)
    environments = data.get("environments") or {}
    if not isinstance(environments, dict):
        raise SettingsError(f"{where}: environments: expected a mapping of environment names to settings")
    if environment:
        if environments and environment not in environments:
            known = ", ".join(sorted(map(str, environments)))
            raise SettingsError(
                f"environment: {environment!r} is not in {where} (it has: {known})",
                hint="Add the environment to the file, or fix the environment input.",
            )
        values |= _section(environments.get(environment), f"environments.{environment}", where)
    if "image-tag" in values:
        try:
            values["image-tag"] = values["image-tag"].format_map(placeholders)
        except (KeyError, ValueError) as exc:
            raise SettingsError(
                f"{where}: image-tag: unknown placeholder {exc}; expected {{environment}}, {{sha}} or {{short_sha}}"
            ) from None
    return values


def layer(explicit: Mapping[str, str], environ: Mapping[str, str]) -> Layered:
    """Merge the sources; explicit non-empty inputs win, then secrets by prefix, then the file."""
    given = {name: value for name, value in explicit.items() if value.strip()}
    environment = given.get("environment", "").strip()
    prefix = given.get("secret-prefix", "").strip() or default_prefix(environment)
    source = secrets_json(given["secrets"]) if "secrets" in given else environ
    from_secrets, secret_names = _by_prefix(source, prefix, plain="secrets" in given)
    if "secrets" not in given:
        # Off the secrets JSON, only what the prefix names is read from the environment.
        secret_names = {name: secret for name, secret in secret_names.items() if name in from_secrets}
    base = Path(environ.get("GITHUB_WORKSPACE") or Path.cwd())
    file_name = given.get("config-file", "").strip()
    path = Path(file_name or DEFAULT_CONFIG_FILE)
    sha = environ.get("GITHUB_SHA", "")
    from_file = config_file(
        path if path.is_absolute() else base / path,
        environment,
        explicit=bool(file_name),
        placeholders={"environment": environment, "sha": sha, "short_sha": sha[:7]},
    )
    values = {**from_file, **from_secrets, **given}
    values.pop("secrets", None)
    token = source.get(REGISTRY_TOKEN, "").strip()
    registry_token = bool(token) and not any(name in given for name in REGISTRY_TOKEN_FILLS)
    return Layered(
        values=values,
        secret_names=secret_names,
        secret_values=list(from_secrets.values()),
        registry_token=registry_token,
    )


def early_masks(explicit: Mapping[str, str], environ: Mapping[str, str]) -> list[str]:
    """Every secret value the sources hold, found before anything is validated or printed."""
    given = {name: value for name, value in explicit.items() if value.strip()}
    if "secrets" in given:
        try:
            source = secrets_json(given["secrets"])
        except SettingsError:
            return []
        return [value for value in source.values() if value.strip()]
    prefix = given.get("secret-prefix", "").strip() or default_prefix(given.get("environment", "").strip())
    return list(_by_prefix(environ, prefix)[0].values())
