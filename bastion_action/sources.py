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
import difflib
import json
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion_action.errors import SettingsError, SettingsProblems
from bastion_action.inputs import INPUTS, INPUTS_BY_NAME, Origin, Source, did_you_mean

if TYPE_CHECKING:
    import yaml

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
    """The merged raw inputs, where each came from, and where each unset one was looked for."""

    values: dict[str, str]
    origins: dict[str, Origin]  # input -> where its value came from (every key of values)
    looked: dict[str, str]  # input -> "not set: ...", the places an input with no value was looked for
    secret_values: list[str]  # every value taken from secrets: all are masked
    registry_token: bool = False  # registry-username/-password came from DO_ACCESS_TOKEN
    prefix: str = ""  # the secret names' prefix (DEV for DEV_HOST)
    json_source: bool = False  # secrets came from the secrets input (else from the environment)


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


@dataclasses.dataclass
class _BySecret:
    values: dict[str, str] = dataclasses.field(default_factory=dict)
    origins: dict[str, Origin] = dataclasses.field(default_factory=dict)
    candidates: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # input -> the names looked for


def _by_prefix(source: Mapping[str, str], prefix: str, *, json_source: bool) -> _BySecret:
    """Inputs filled from ``<PREFIX>_<NAME>`` secrets, and the names each input was looked for under.

    From the secrets JSON (``json_source``), when ``<PREFIX>_<NAME>`` is not set, ``<NAME>`` itself fills
    the input — GitHub environment secrets (``jobs.<id>.environment``) usually have plain names. A process
    environment is read by prefix only: plain ``HOST`` or ``USER`` there are the machine's, not the team's.
    """
    found = _BySecret()
    kind = Source.SECRET if json_source else Source.ENVIRONMENT
    for suffix, name in PREFIXED_SECRETS.items():
        candidates = [f"{prefix}_{suffix}"] if prefix else []
        if json_source:
            candidates.append(suffix)
        found.candidates[name] = candidates
        for secret in candidates:
            if source.get(secret, "").strip():
                found.values[name] = source[secret]
                found.origins[name] = Origin(kind, secret, plain=secret == suffix)
                break
    token = source.get(REGISTRY_TOKEN, "")
    if token.strip():
        for name in REGISTRY_TOKEN_FILLS:
            found.values[name] = token
            found.origins[name] = Origin(kind, REGISTRY_TOKEN)
    return found


def _longest_suffix(key: str) -> str:
    ends = [suffix for suffix in PREFIXED_SECRETS if key.endswith(f"_{suffix}")]
    return max(ends, key=len, default="")


def _misspelling(secret: str, prefix: str, others: list[str]) -> str | None:
    """A name in the JSON that is ``secret`` misspelt: in its suffix (DEV_SSH_PASWORD), or in its prefix
    (DEVV_HOST). A well-formed name of another environment (UAT_DB_HOST for QA_DB_HOST) is not one."""
    suffix = secret.removeprefix(f"{prefix}_")
    odd = [key for key in others if not _longest_suffix(key)]
    found = difflib.get_close_matches(secret, odd, n=1, cutoff=0.85)
    if found:
        return found[0]
    same_suffix = {key[: -len(suffix) - 1]: key for key in others if _longest_suffix(key) == suffix}
    found = difflib.get_close_matches(prefix, list(same_suffix), n=1, cutoff=0.75)
    return same_suffix[found[0]] if found else None


def _near_secrets(source: Mapping[str, str], prefix: str, secret: str) -> str:
    """For an unset secret: a misspelt name in the JSON, or the prefixes it does have; never a value."""
    known = {f"{prefix}_{suffix}" for suffix in PREFIXED_SECRETS} | set(PREFIXED_SECRETS)
    others = [key for key in source if key not in known and source[key].strip()]
    misspelt = _misspelling(secret, prefix, others)
    if misspelt:
        return f"; the secrets input has {misspelt}: a misspelling of {secret}?"
    prefixes = sorted({key[: -len(_longest_suffix(key)) - 1] for key in others if _longest_suffix(key)} - {prefix})
    prefixes = [other for other in prefixes if other]
    if prefixes and not any(key.startswith(f"{prefix}_") for key in source):
        shown = ", ".join(f"{other}_*" for other in prefixes[:4])
        return (
            f"; the secrets input has no {prefix}_* secret but has {shown}: "
            f"set secret-prefix: {prefixes[0]} or environment: {prefixes[0].lower()}"
        )
    return ""


def _looked_for(
    by_secret: _BySecret, source: Mapping[str, str], prefix: str, *, json_source: bool, file: str, unset: set[str]
) -> dict[str, str]:
    """For each ``unset`` input: where a value was looked for (``not set: ...``), with any near secret name."""
    looked = {}
    for spec in INPUTS:
        if spec.name not in unset:
            continue
        places = [f"input {spec.name}"]
        names = by_secret.candidates.get(spec.name, [])
        if names:
            kind = "secret" if json_source else "environment variable"
            places.append(f"{kind} {' or '.join(names)}")
        if spec.in_file and file:
            places.append(file)
        text = "not set: " + ", ".join(places)
        if names and json_source:
            text += _near_secrets(source, prefix, names[0])
        looked[spec.name] = text
    return looked


def _scalar(value: Any) -> str | None:  # YAML gives any type; None for one no input takes
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str | int) for item in value):
        return "\n".join(str(item) for item in value)
    return None


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line of every key of the file's first three mapping levels: ("environments", "dev", "db-port") -> 7."""
    import yaml  # noqa: PLC0415 - only a run with a topology file reads YAML (its import is ~12 ms)

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node | None, path: tuple[str, ...]) -> None:
        if not isinstance(node, yaml.MappingNode) or len(path) > 2:  # noqa: PLR2004 - environments.<name>.<key>
            return
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines[(*path, str(key.value))] = key.start_mark.line + 1
                walk(value, (*path, str(key.value)))

    walk(root, ())
    return lines


def _in_repository(name: str) -> str:
    """The file as an annotation can place it: a path in the repository, not an absolute one."""
    return "" if Path(name).is_absolute() else name


@dataclasses.dataclass(frozen=True)
class _File:
    name: str  # as the user wrote it (or the default), for messages and annotations
    lines: Mapping[tuple[str, ...], int]

    def origin(self, path: tuple[str, ...]) -> Origin:
        return Origin(Source.FILE, ".".join(path), file=self.name, line=self.lines.get(path, 0))

    def error(self, path: tuple[str, ...], message: str, hint: str = "") -> SettingsError:
        line = self.lines.get(path, 0)
        at = f" line {line}" if line else ""
        return SettingsError(
            f"{self.name}{at}: {'.'.join(path)}: {message}", hint=hint, file=_in_repository(self.name), line=line
        )


def _section(data: Any, path: tuple[str, ...], file: _File, into: dict[str, tuple[str, Origin]]) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise file.error(path, "expected a mapping of input names to values")
    problems = []
    for key, value in data.items():
        name = str(key)
        where = (*path, name)
        if _names_a_secret(name):
            problems.append(
                file.error(
                    where,
                    "secrets do not belong in the config file",
                    hint="Keep secrets in GitHub secrets and pass them as inputs or through `secrets`.",
                )
            )
        elif name not in FILE_KEYS:
            suggestion = did_you_mean(name, sorted(FILE_KEYS))
            meant = f" ({suggestion})" if suggestion else ""
            problems.append(
                file.error(
                    where,
                    f"unknown key{meant}; expected one of: {', '.join(sorted(FILE_KEYS))}",
                    hint="Keys are the action's input names (kebab-case); a typo must not silently do nothing.",
                )
            )
        elif (text := _scalar(value)) is None:
            problems.append(
                file.error(where, f"expected a text, number, boolean or list of texts, got a {type(value).__name__}")
            )
        else:
            into[name] = (text, file.origin(where))
    if problems:
        raise SettingsProblems.of(problems)


def _load_yaml(path: Path, name: str) -> tuple[Any, str]:
    import yaml  # noqa: PLC0415 - only a run with a topology file reads YAML (its import is ~12 ms)

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"config-file: cannot read {name}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text), text
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SettingsError(
            f"config-file: {name} is not valid YAML{at}",
            hint="Fix the YAML syntax.",
            file=_in_repository(name),
            line=mark.line + 1 if mark else 0,
        ) from None


def config_file(
    path: Path, environment: str, *, name: str, explicit: bool, placeholders: Mapping[str, str]
) -> dict[str, tuple[str, Origin]]:
    """The topology file's values for ``environment`` (its defaults, then its section), each with its key's line."""
    if not path.is_file():
        if explicit:
            raise SettingsError(
                f"config-file: {name} does not exist", hint="Check the path (relative to the repository root)."
            )
        return {}
    data, text = _load_yaml(path, name)
    if data is None:
        return {}
    file = _File(name, _key_lines(text))
    if not isinstance(data, dict) or set(data) - {"defaults", "environments"}:
        raise SettingsError(
            f"{name}: expected a mapping with 'defaults' and/or 'environments' at the top",
            hint="See docs/usage.md for the file's shape.",
            file=_in_repository(name),
        )
    values: dict[str, tuple[str, Origin]] = {}
    _section(data.get("defaults"), ("defaults",), file, values)
    environments = data.get("environments") or {}
    if not isinstance(environments, dict):
        raise file.error(("environments",), "expected a mapping of environment names to settings")
    if environment:
        if environments and environment not in environments:
            known = [str(key) for key in environments]
            suggestion = did_you_mean(environment, known)
            raise SettingsError(
                f"environment: {environment!r} is not in {name} (it has: {', '.join(sorted(known))})"
                + (f"; {suggestion}" if suggestion else ""),
                hint="Add the environment to the file, or fix the environment input.",
                inputs=("environment",),
            )
        _section(environments.get(environment), ("environments", environment), file, values)
    if "image-tag" in values:
        tag, origin = values["image-tag"]
        try:
            values["image-tag"] = (tag.format_map(placeholders), origin)
        except (KeyError, ValueError) as exc:
            raise SettingsError(
                f"{name} line {origin.line}: {origin.key}: unknown placeholder {exc}; "
                "expected {environment}, {sha} or {short_sha}",
                file=_in_repository(name),
                line=origin.line,
            ) from None
    return values


def layer(explicit: Mapping[str, str], environ: Mapping[str, str], flags: Collection[str] = ()) -> Layered:
    """Merge the sources; explicit non-empty inputs win, then secrets by prefix, then the file.

    ``flags``: the explicit inputs given as CLI flags (the rest came from the step's ``INPUT_*``).
    """
    given = {name: value for name, value in explicit.items() if value.strip()}
    environment = given.get("environment", "").strip()
    prefix = given.get("secret-prefix", "").strip() or default_prefix(environment)
    json_source = "secrets" in given
    source = secrets_json(given["secrets"]) if json_source else environ
    by_secret = _by_prefix(source, prefix, json_source=json_source)
    base = Path(environ.get("GITHUB_WORKSPACE") or Path.cwd())
    file_name = given.get("config-file", "").strip()
    path = Path(file_name or DEFAULT_CONFIG_FILE)
    sha = environ.get("GITHUB_SHA", "")
    full_path = path if path.is_absolute() else base / path
    from_file = config_file(
        full_path,
        environment,
        name=str(path),
        explicit=bool(file_name),
        placeholders={"environment": environment, "sha": sha, "short_sha": sha[:7]},
    )
    origins = {name: origin for name, (_, origin) in from_file.items()}
    origins |= by_secret.origins
    origins |= {name: Origin(Source.FLAG if name in flags else Source.INPUT) for name in given}
    values = {name: value for name, (value, _) in from_file.items()} | by_secret.values | given
    values.pop("secrets", None)
    origins.pop("secrets", None)
    token = source.get(REGISTRY_TOKEN, "").strip()
    registry_token = bool(token) and not any(name in given for name in REGISTRY_TOKEN_FILLS)
    file = str(path) if full_path.is_file() else ""
    unset = {spec.name for spec in INPUTS} - set(values)
    looked = _looked_for(by_secret, source, prefix, json_source=json_source, file=file, unset=unset)
    return Layered(
        values=values,
        origins=origins,
        looked=looked,
        secret_values=list(by_secret.values.values()),
        registry_token=registry_token,
        prefix=prefix,
        json_source=json_source,
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
    return list(_by_prefix(environ, prefix, json_source=False).values.values())
