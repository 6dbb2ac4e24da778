"""The action's inputs: one row per input holding every fact about it, and typed reading of their raw text."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from bastion_action.errors import SettingsError, SettingsProblems, input_error, input_message

_E = TypeVar("_E", bound=enum.StrEnum)
_T = TypeVar("_T")
_U = TypeVar("_U")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One input: action.yml, the CLI flags, the env names, the docs and the sources' tables derive from it."""

    name: str
    description: str
    default: str = ""
    secret: bool = False  # masked, used exactly as given (not trimmed), never allowed in the config file
    in_file: bool = False  # the topology file (config-file) may set it
    by_prefix: str = ""  # read from the secret <PREFIX>_<by_prefix> (the `secrets` JSON or the environment)
    # Text, lists and scripts span lines; every other value is one line, so a newline in it is an injection
    # (`::error::` in a host name) or a paste error. Secrets are never checked: any character is a legal password.
    multi_line: bool = False

    def __post_init__(self) -> None:
        if self.secret and self.in_file:
            msg = f"{self.name}: a secret input cannot be allowed in the config file, which is committed"
            raise ValueError(msg)

    @property
    def env(self) -> str:
        return "INPUT_" + self.name.upper().replace("-", "_")


# environment, config-file and secret-prefix are not file keys: they decide which file, section and secrets are read.
INPUTS: tuple[InputSpec, ...] = (
    InputSpec(
        "environment",
        "Environment name (dev, uat, prod, ...): picks <ENV>_* secrets and the config file's section.",
    ),
    InputSpec(
        "mode",
        "Where the command runs: docker (in the image), lightweight (on the runner), "
        "or compare (showmigrations in both; fails when they differ).",
        "docker",
        in_file=True,
    ),
    InputSpec(
        "command",
        "showmigrations | plan | check | migrate | rollback | lint | probe | custom (custom: the command line is in "
        "args; rollback: migrate each app back to rollback-targets; lint: the pending migrations' lock and rewrite "
        "hazards, weighed with the tables' live size).",
        "showmigrations",
        in_file=True,
    ),
    InputSpec(
        "args",
        "Extra arguments for the command (custom: the whole command line), split as shell words.",
        in_file=True,
        multi_line=True,
    ),
    InputSpec(
        "config-file", "YAML topology file (non-secret settings per environment).", ".github/bastion-migrate.yml"
    ),
    InputSpec(
        "secrets",
        "All secrets as JSON (toJSON(secrets) of the workflow); <PREFIX>_* names are read from it, "
        "and plain names (HOST, DB_PASSWORD, ...: GitHub environment secrets) where the prefixed one is not set.",
        secret=True,
        multi_line=True,
    ),
    InputSpec("secret-prefix", "Prefix of the secret names read from `secrets`; default: the environment, upper case."),
    InputSpec("ssh-host", "Bastion host name or address.", in_file=True, by_prefix="HOST"),
    InputSpec("ssh-port", "Bastion SSH port.", "22", in_file=True, by_prefix="SSH_PORT"),
    InputSpec("ssh-user", "User on the bastion.", in_file=True, by_prefix="USER"),
    InputSpec("ssh-password", "Password of the bastion user.", secret=True, by_prefix="SSH_PASSWORD"),
    InputSpec(
        "ssh-private-key",
        "Private key text (OpenSSH or PEM) for the bastion user.",
        secret=True,
        by_prefix="SSH_PRIVATE_KEY",
        multi_line=True,
    ),
    InputSpec("ssh-passphrase", "Passphrase of ssh-private-key.", secret=True, by_prefix="SSH_PASSPHRASE"),
    InputSpec(
        "ssh-known-hosts",
        "known_hosts text for the bastion, as ssh-keyscan prints it.",
        in_file=True,
        by_prefix="SSH_KNOWN_HOSTS",
        multi_line=True,
    ),
    InputSpec(
        "ssh-host-fingerprint",
        "Host key fingerprint(s) of the bastion (and jump hosts), SHA256:<base64> as ssh-keygen -lf prints it; "
        "several separated by commas, spaces or newlines.",
        in_file=True,
        multi_line=True,
    ),
    InputSpec(
        # Not in the file: turning host key checking off must be visible in the workflow that does it.
        "ssh-insecure-skip-host-key-check",
        "Skip host key verification (true/false). Exposes the credentials to a man in the middle.",
        "false",
    ),
    InputSpec(
        # Not in the file, as the skip flag: weakening the SSH algorithms must be visible in the workflow.
        "ssh-legacy-algorithms",
        "Also accept SHA-1 SSH algorithms (ssh-rsa signatures, SHA-1 key exchange and MACs) for an old bastion "
        "(true/false); a warning says so on every run.",
        "false",
    ),
    InputSpec(
        "ssh-jump-hosts",
        "Hops before the bastion, in order: [user@]host[:port], separated by commas or newlines. "
        "Each hop's host key is checked against ssh-known-hosts / ssh-host-fingerprint; hops use the same credentials.",
        in_file=True,
        by_prefix="SSH_JUMP_HOSTS",
        multi_line=True,
    ),
    InputSpec(
        "ssh-keepalive-interval",
        "Seconds between SSH keepalives; a dead link fails after 3 missed.",
        "15",
        in_file=True,
    ),
    InputSpec(
        "connect-timeout",
        "Seconds allowed for the SSH connection and for each database connect.",
        "20",
        in_file=True,
    ),
    InputSpec("db-host", "Database host as seen from the bastion.", in_file=True, by_prefix="DB_HOST"),
    InputSpec("db-port", "Database port as seen from the bastion.", "5432", in_file=True, by_prefix="DB_PORT"),
    InputSpec("db-name", "Database name.", in_file=True, by_prefix="DB_NAME"),
    InputSpec("db-user", "Database user.", in_file=True, by_prefix="DB_USER"),
    InputSpec("db-password", "Database password.", secret=True, by_prefix="DB_PASSWORD"),
    InputSpec("db-sslmode", "libpq sslmode for the database connection.", "prefer", in_file=True),
    InputSpec(
        "db-sslrootcert",
        "CA certificate text (PEM) that signed the database's certificate; verify-ca and verify-full check it.",
        in_file=True,
        by_prefix="DB_SSLROOTCERT",
        multi_line=True,
    ),
    InputSpec(
        "databases",
        "Fan-out: several databases behind the same bastion, [host[:port]/]name separated by commas or newlines "
        "(host and port default to db-host and db-port); replaces db-name. One SSH connection serves them all.",
        in_file=True,
        multi_line=True,
    ),
    InputSpec("concurrency", "Fan-out: how many databases are worked on at once.", "4", in_file=True),
    InputSpec("local-port", "Local port of the tunnel; 0 picks a free one.", "0", in_file=True),
    InputSpec(
        "django-settings-module",
        "DJANGO_SETTINGS_MODULE for the command.",
        in_file=True,
        by_prefix="DJANGO_SETTINGS_MODULE",
    ),
    InputSpec("secret-key", "SECRET_KEY for the command.", secret=True, by_prefix="SECRET_KEY"),
    InputSpec("extra-env", "More environment for the command, one NAME=value per line.", in_file=True, multi_line=True),
    InputSpec(
        "database-url-env",
        "Name of the variable that receives the database URL.",
        "DATABASE_URL",
        in_file=True,
    ),
    InputSpec("manage-py", "Path of manage.py, relative to working-directory.", "manage.py", in_file=True),
    InputSpec(
        "working-directory",
        "Directory the command runs in (relative: to GITHUB_WORKSPACE).",
        ".",
        in_file=True,
    ),
    InputSpec(
        "python",
        "Interpreter for manage.py in lightweight mode: a name on PATH or an absolute path.",
        "python",
        in_file=True,
    ),
    InputSpec("fake-initial", "Pass --fake-initial to migrate (true/false).", "true", in_file=True),
    InputSpec(
        # Not in the file: what to roll back to is one run's, the output of the migrate step it undoes.
        "rollback-targets",
        'command: rollback: JSON of app -> the migration to go back to, or "zero" (a migrate step\'s '
        "rollback-targets output); with databases, one such object per database name. Nothing is unapplied when "
        "any migration on the way back is irreversible.",
        multi_line=True,
    ),
    InputSpec(
        "show-sql",
        "Also collect each pending (plan, check) or applied (migrate) migration's SQL with sqlmigrate for the step "
        "summary and the JSON report (true/false); each migration's SQL is capped at 64 KiB, all of it at 512 KiB.",
        "false",
        in_file=True,
    ),
    InputSpec(
        "lint",
        "plan and check: also judge each pending migration's PostgreSQL lock and rewrite hazards, as command: lint "
        "does (true/false).",
        "false",
        in_file=True,
    ),
    InputSpec(
        "fail-on-risk",
        "lint (and plan, check with lint: true): fail the run when a finding not acknowledged is at least this risky: "
        "high | medium | low | never.",
        "never",
        in_file=True,
    ),
    InputSpec(
        "lint-rows-medium",
        "lint: a hazard on a table of at least this many rows (pg_class's estimate) is medium risk; below, low.",
        "100000",
        in_file=True,
    ),
    InputSpec(
        "lint-rows-high",
        "lint: a hazard on a table of at least this many rows is high risk.",
        "10000000",
        in_file=True,
    ),
    InputSpec(
        "lint-transaction-seconds",
        "lint: a transaction at least this old holding a lock on a table a hazard touches raises the hazard's risk "
        "one level (the migration's lock would queue behind it, and every query behind the migration).",
        "60",
        in_file=True,
    ),
    InputSpec("timeout", "Seconds allowed for the whole run.", "1800", in_file=True),
    InputSpec(
        "debug",
        "Debug lines for every stage (true/false), secrets still masked; GitHub's re-run with debug logging "
        "(RUNNER_DEBUG=1) turns them on too.",
        "false",
        in_file=True,
    ),
    InputSpec(
        "lock",
        "Take the database's migration lock: auto (migrate, rollback and custom), true or false.",
        "auto",
        in_file=True,
    ),
    InputSpec("lock-timeout", "Seconds to wait for the migration lock.", "300", in_file=True),
    InputSpec(
        "lock-lease-seconds",
        "The migration lock is a lease: once held, the database ends the lock's session after this many seconds "
        "without a word from the action (PostgreSQL 14+), so a vanished runner cannot hold it longer; the action "
        "speaks every third of it.",
        "60",
        in_file=True,
    ),
    InputSpec(
        "lock-break-stale",
        "When the migration lock is held by a session of this action that has been idle longer than "
        "lock-lease-seconds (a dead run the server did not end), end that session (pg_terminate_backend) and take "
        "the lock (true/false). A holder that is not stale is never ended.",
        "false",
        in_file=True,
    ),
    InputSpec(
        "db-idle-in-transaction-timeout",
        "Seconds the command's database sessions may sit idle inside a transaction before the server ends them "
        "(idle_in_transaction_session_timeout, through PGOPTIONS), so a dead run's transaction and locks do not "
        "linger; 0 turns it off.",
        "300",
        in_file=True,
    ),
    InputSpec(
        "db-lock-timeout",
        "Seconds a statement of the command may wait for a lock before the server cancels it "
        "(lock_timeout, through PGOPTIONS); 0 is off.",
        "0",
        in_file=True,
    ),
    InputSpec(
        "db-statement-timeout",
        "Seconds a statement of the command may run before the server cancels it "
        "(statement_timeout, through PGOPTIONS); 0 is off.",
        "0",
        in_file=True,
    ),
    InputSpec("image", "Docker mode: image reference; may carry its own :tag or @sha256: digest.", in_file=True),
    InputSpec("image-tag", "Docker mode: tag appended to image when it has none.", "latest", in_file=True),
    InputSpec(
        "registry",
        "Docker mode: registry the credentials are for; must be the image reference's host, which is the default.",
        in_file=True,
    ),
    InputSpec("registry-username", "Docker mode: registry user (DigitalOcean: the access token).", in_file=True),
    InputSpec("registry-password", "Docker mode: registry password or token.", secret=True),
    InputSpec("pull", "Docker mode: always | missing | never.", "missing", in_file=True),
)

INPUTS_BY_NAME: Mapping[str, InputSpec] = {spec.name: spec for spec in INPUTS}


def raw_from_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``INPUT_*`` variables that name known inputs, keyed by kebab-case name.

    These raw inputs (or the local CLI's flags) are text as GitHub gives them: an empty
    string means "not given", as in GitHub's composite actions.
    """
    return {spec.name: environ[spec.env] for spec in INPUTS if spec.env in environ}


# High enough that makemigrations (0.71 to showmigrations) is not offered as a spelling of a command it is not.
SUGGESTION_CUTOFF = 0.8


def close_matches(word: str, candidates: Iterable[str]) -> list[str]:
    """What a near miss of ``word`` most likely meant: snake_case or upper case first, then close spellings."""
    choices = list(candidates)
    normal = word.strip().lower().replace("_", "-")
    if normal in choices:
        return [normal]
    return difflib.get_close_matches(normal, choices, n=2, cutoff=SUGGESTION_CUTOFF)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``did you mean 'migrate'?`` for a near miss, else ''."""
    matches = close_matches(word, candidates)
    return f"did you mean {' or '.join(map(repr, matches))}?" if matches else ""


_CHARACTER_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL", "\x1b": "an escape"}
# Cc: C0, DEL and C1 controls; Zl/Zp: U+2028/U+2029, which splitlines() and some viewers break lines at.
_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def single_line_problems(values: Mapping[str, str]) -> list[SettingsError]:
    """A control character inside any value of an input that is not multi-line (its row says which).

    Checked as the reader will use the value (trimmed), so a secret stored with its trailing newline still
    works; the error describes the character, never the value, which may come from a secret.
    """
    problems = []
    for name, value in values.items():
        spec = INPUTS_BY_NAME.get(name)
        if spec is None or spec.secret or spec.multi_line:
            continue
        for position, character in enumerate(value.strip(), start=1):
            if unicodedata.category(character) in _CONTROL_CATEGORIES:
                described = _CHARACTER_NAMES.get(character, "a control character")
                problems.append(
                    SettingsError(
                        f"{name}: expected a single line without control characters, "
                        f"got {described} (U+{ord(character):04X}) at position {position}",
                        hint=f"Check the '{name}' input of the step.",
                        inputs=(name,),
                    )
                )
                break
    return problems


def check_single_line(values: Mapping[str, str]) -> None:
    """Refuse a control character in a single-line input (see ``single_line_problems``)."""
    problems = single_line_problems(values)
    if problems:
        raise problems[0]


class Source(enum.Enum):
    """Where an input's value came from, highest precedence first."""

    INPUT = "input"  # the step's `with:` (INPUT_*)
    FLAG = "flag"  # the local CLI
    SECRET = "secret"  # noqa: S105 - a key of the `secrets` JSON
    ENVIRONMENT = "environment"  # a <PREFIX>_* variable of the job's environment
    FILE = "file"  # the topology file
    DEFAULT = "default"  # action.yml's default


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where one input's value came from: enough to name it in an error and to say where to fix it."""

    source: Source
    key: str = ""  # the secret's or variable's name, or the file's key path (environments.dev.db-port)
    file: str = ""
    line: int = 0
    plain: bool = False  # a secret found by its plain name (an environment secret), not <PREFIX>_<NAME>

    @property
    def hides_value(self) -> bool:
        """Values from secrets are masked everywhere: an error describes them instead of showing '***'."""
        return self.source in {Source.SECRET, Source.ENVIRONMENT}

    def describe(self, name: str) -> str:
        """``secret DEV_DB_PORT (secrets input)``: where the value of ``name`` was read."""
        return self._wording()[0].format(name=name, origin=self)

    def fix(self, name: str) -> str:
        """Where to change the value: the hint of an error about it."""
        return self._wording()[1].format(name=name, origin=self)

    def _wording(self) -> tuple[str, str]:
        if self.source is Source.SECRET and self.plain:
            return _PLAIN_SECRET_WORDING
        return _WORDING[self.source]


# Source -> (where the value was read, where to fix it), formatted with the input's name and the Origin.
_WORDING = {
    Source.INPUT: ("the step's input {name}", "Fix the '{name}' input of the step."),
    Source.FLAG: ("the flag --{name}", "Fix --{name} on the command line."),
    Source.SECRET: (
        "secret {origin.key} (secrets input)",
        "Fix the secret {origin.key} in the repository's, organisation's or environment's secrets.",
    ),
    Source.ENVIRONMENT: (
        "environment variable {origin.key}",
        "Fix the environment variable {origin.key} (the job's or step's env).",
    ),
    Source.FILE: (
        "{origin.file} line {origin.line} ({origin.key})",
        "Fix {origin.key} at line {origin.line} of {origin.file}.",
    ),
    Source.DEFAULT: ("the default of {name}", "Set the '{name}' input: its default does not fit here."),
}
_PLAIN_SECRET_WORDING = (
    "environment secret {origin.key} (secrets input)",
    "Fix the secret {origin.key} in the job's environment secrets.",
)


DEFAULT_ORIGIN = Origin(Source.DEFAULT)


def _described(value: str) -> str:
    return f"a value of {len(value)} character{'s' if len(value) != 1 else ''} (not shown: it is read from a secret)"


class Reader:
    """Typed access to raw inputs that collects every problem instead of stopping at the first.

    A read that fails records the problem (once per input), named with where the value came from and
    where to fix it, and returns a stand-in so the rest is still checked; ``raise_problems`` ends it.
    """

    def __init__(
        self,
        raw: Mapping[str, str],
        origins: Mapping[str, Origin] | None = None,
        looked: Mapping[str, str] | None = None,
    ) -> None:
        self._raw = raw
        self._origins = origins or {}
        self._looked = looked or {}  # input -> where an unset value was looked for (secret names, the file)
        self.problems: list[SettingsError] = []

    def origin(self, name: str) -> Origin:
        value = self._raw.get(name, "")
        return self._origins.get(name, DEFAULT_ORIGIN) if value.strip() else DEFAULT_ORIGIN

    def placed(self, error: SettingsError) -> SettingsError:
        """``error`` saying where its input's value came from, its hint where to fix it."""
        if not error.inputs:
            return error
        name = error.inputs[0]
        origin = self.origin(name)
        if origin.source is Source.DEFAULT and not INPUTS_BY_NAME[name].default:
            return error  # nothing was given: the message says what is missing and where it was looked for
        message = error.message
        if error.expected:
            got = error.got
            if got is not None:
                got = _described(got) if origin.hides_value else repr(got)
            message = input_message(name, error.expected, got, error.suggestion)
        sources = [self.origin(other).describe(other) for other in error.inputs]
        message += f" (from {', '.join(sources)})" if len(error.inputs) > 1 else f" (from {sources[0]})"
        generic = error.hint == f"Check the '{name}' input of the step."
        hint = origin.fix(name) if generic or not error.hint else f"{error.hint} {origin.fix(name)}"
        placed = SettingsError(message, hint=hint, anchor=error.anchor, inputs=error.inputs)
        if origin.source is Source.FILE and not origin.file.startswith("/"):  # annotations take repository paths
            placed.file, placed.line = origin.file, origin.line
        return placed

    def problem(self, error: SettingsError) -> None:
        """Record ``error`` (placed), unless its input already has a problem: the first says it best."""
        if error.inputs and any(error.inputs[0] in known.inputs for known in self.problems):
            return
        self.problems.append(self.placed(error))

    def attempt(self, parse: Callable[[], _T], fallback: _U) -> _T | _U:
        """``parse()``, or ``fallback`` with its error recorded."""
        try:
            return parse()
        except SettingsError as exc:
            self.problem(exc)
            return fallback

    def failed(self, *names: str) -> bool:
        return any(name in problem.inputs for problem in self.problems for name in names)

    def raise_problems(self) -> None:
        if self.problems:
            raise SettingsProblems.of(self.problems)

    def text(self, name: str) -> str:
        value = self._raw.get(name, "")
        if not value.strip():
            value = INPUTS_BY_NAME[name].default
        return value if INPUTS_BY_NAME[name].secret else value.strip()

    def optional(self, name: str) -> str | None:
        return self.text(name) or None

    def unset(self, *names: str) -> str:
        """`` (not set: secret DEV_HOST, ...)`` for unset inputs: where each was looked for; else ''."""
        looked = [self._looked[name] for name in names if name in self._looked]
        return f" ({'; '.join(looked)})" if looked else ""

    def neither(self, names: tuple[str, str], *, hint: str, purpose: str = "") -> None:
        """Record that one of two inputs is required and neither was given."""
        self.problem(
            SettingsError(
                f"{names[0]} or {names[1]}: one is required{purpose}, got neither{self.unset(*names)}",
                hint=hint,
                inputs=names,
            )
        )

    def required(self, name: str, what: str) -> str:
        value = self.text(name)
        if not value.strip():
            self.problem(
                SettingsError(
                    f"{name}: required, expected {what}, got nothing{self.unset(name)}",
                    hint=f"Set the '{name}' input (or the secret it is read from); an unset secret expands to ''.",
                    inputs=(name,),
                )
            )
        return value

    def port(self, name: str, *, allow_zero: bool = False) -> int:
        value = self.text(name)
        low = 0 if allow_zero else 1
        if not re.fullmatch(r"[0-9]{1,5}", value) or not low <= int(value) <= 65535:  # noqa: PLR2004
            self.problem(input_error(name, f"a port number {low}-65535", value))
            return low
        return int(value)

    def seconds(self, name: str) -> float:
        value = self.text(name)
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            self.problem(input_error(name, "a number of seconds greater than 0", value))
            return float(INPUTS_BY_NAME[name].default or 1)
        return number

    def boolean(self, name: str) -> bool:
        value = self.text(name).lower()
        expected = "auto, true or false" if INPUTS_BY_NAME[name].default == "auto" else "true or false"
        if value in {"true", "yes", "1", "on"}:
            return True
        if value in {"false", "no", "0", "off"}:
            return False
        self.problem(input_error(name, expected, value))
        return False

    def choice(self, name: str, enum_type: type[_E]) -> _E:
        value = self.text(name).lower()
        try:
            return enum_type(value)
        except ValueError:
            values = [member.value for member in enum_type]
            suggestion = did_you_mean(value, values)
            self.problem(input_error(name, f"one of {' | '.join(values)}", value, suggestion=suggestion))
            return enum_type(INPUTS_BY_NAME[name].default)
