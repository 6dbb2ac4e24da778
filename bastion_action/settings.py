"""The run's settings: raw inputs parsed once into frozen, validated data; every error names the input."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import shlex
import ssl
from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path
from urllib.parse import quote, urlencode

from bastion_action import rollback, sources
from bastion_action.errors import SettingsError, SettingsProblems, input_error
from bastion_action.inputs import (
    DEFAULT_ORIGIN,
    INPUTS,
    INPUTS_BY_NAME,
    InputSpec,
    Reader,
    close_matches,
    did_you_mean,
    raw_from_environ,
    single_line_problems,
)
from bastion_action.lint import Risk, Thresholds
from bastion_action.redaction import masks, secret_forms
from bastion_action.references import (
    DatabaseTarget,
    ImageReference,
    JumpHost,
    is_digitalocean,
    is_registry_host,
    parse_databases,
    parse_fingerprints,
    parse_image_reference,
    parse_jump_hosts,
    same_registry,
)

# Other modules import these from here; inputs, references and redaction own some of them.
__all__ = [
    "INPUTS",
    "INPUTS_BY_NAME",
    "AppSettings",
    "Command",
    "DatabaseSettings",
    "ImageReference",
    "ImageSettings",
    "InputSpec",
    "JumpHost",
    "Mode",
    "PullPolicy",
    "SSHSettings",
    "SessionBounds",
    "Settings",
    "parse",
    "parse_image_reference",
    "raw_from_environ",
    "secret_forms",
]


class Mode(enum.StrEnum):
    LIGHTWEIGHT = "lightweight"
    DOCKER = "docker"
    COMPARE = "compare"  # showmigrations on the runner and in the image; fails when they differ

    @property
    def on_runner(self) -> bool:
        return self in {Mode.LIGHTWEIGHT, Mode.COMPARE}

    @property
    def in_image(self) -> bool:
        return self in {Mode.DOCKER, Mode.COMPARE}


class Command(enum.StrEnum):
    PROBE = "probe"
    SHOWMIGRATIONS = "showmigrations"
    PLAN = "plan"
    CHECK = "check"
    MIGRATE = "migrate"
    ROLLBACK = "rollback"  # migrate each app back to its rollback-targets entry, after checking the way back
    LINT = "lint"  # the pending migrations' lock and rewrite hazards; changes nothing
    CUSTOM = "custom"

    @property
    def django(self) -> bool:
        return self not in {Command.PROBE, Command.CUSTOM}

    @property
    def read_only(self) -> bool:
        """Django commands that only read the database: they cannot apply anything."""
        return self in {Command.SHOWMIGRATIONS, Command.PLAN, Command.CHECK, Command.LINT}

    @property
    def plans(self) -> bool:
        """Commands that run ``migrate --plan``: their pending migrations are known in apply order."""
        return self in {Command.PLAN, Command.CHECK, Command.LINT}


class PullPolicy(enum.StrEnum):
    ALWAYS = "always"
    MISSING = "missing"
    NEVER = "never"


SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclasses.dataclass(frozen=True)
class SSHSettings:
    host: str
    port: int
    user: str
    password: str | None
    private_key: str | None
    passphrase: str | None
    known_hosts: str | None
    host_fingerprints: tuple[str, ...]
    insecure_skip_host_key_check: bool  # only when nothing to verify with was given
    insecure_skip_ignored: bool  # asked for, but pinned keys were given: they are verified
    jump_hosts: tuple[JumpHost, ...]
    keepalive_interval: float
    connect_timeout: float
    legacy_algorithms: bool = False  # SHA-1 signatures, key exchange and MACs accepted too
    # input -> "ssh-password from secret DEV_SSH_PASSWORD (secrets input)": runtime errors name the source
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    def source(self, *names: str) -> str:
        """`` (ssh-user from ..., ssh-password from ...)`` for the inputs that were given; else ''."""
        return _source_note(self.sources, names)


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    host: str
    port: int
    name: str
    user: str
    password: str
    sslmode: str
    local_port: int
    sslrootcert: str | None = None  # PEM text of the CA; given exactly when sslmode is verify-ca or verify-full
    rollback_targets: tuple[tuple[str, str], ...] = ()  # command: rollback: (app, migration or "zero") for this one
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)  # as SSHSettings'
    # Fan-out: how the log, the outputs and the summary name this database: ``host:port/name`` when another
    # database of the run has the same name (on another server), else "" (its name).
    label: str = ""

    @property
    def key(self) -> str:
        """This database among the run's: its name, or ``host:port/name`` when the name alone is not one."""
        return self.label or self.name

    def source(self, *names: str) -> str:
        return _source_note(self.sources, names)

    def url(self, port: int, host: str = "127.0.0.1", sslrootcert: str | None = None) -> str:
        """The ``postgresql://`` URL for the tunnel's end, every part percent-encoded.

        ``sslrootcert`` is the path of the CA file the command reads. With verify-full the URL's host
        is db-host, the name the certificate must carry, and libpq's ``hostaddr`` the tunnel's end.
        """
        user = quote(self.user, safe="")
        password = quote(self.password, safe="")
        options = {"sslmode": self.sslmode}
        if self.sslmode == "verify-full":
            options["hostaddr"] = host
            host = self.host
        if sslrootcert:
            options["sslrootcert"] = sslrootcert
        return (
            f"postgresql://{user}:{password}@{_url_host(host)}:{port}/{quote(self.name, safe='')}?{urlencode(options)}"
        )


def _source_note(sources: Mapping[str, str], names: tuple[str, ...]) -> str:
    known = [sources[name] for name in names if name in sources]
    return f" ({'; '.join(known)})" if known else ""


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    reference: ImageReference
    registry: str
    username: str | None
    password: str | None
    pull: PullPolicy


@dataclasses.dataclass(frozen=True)
class SessionBounds:
    """Server-side bounds on the command's own database sessions, in seconds; 0 is off."""

    idle_in_transaction: float
    lock: float
    statement: float


@dataclasses.dataclass(frozen=True)
class AppSettings:
    django_settings_module: str | None
    secret_key: str | None
    extra_env: Mapping[str, str]
    database_url_env: str
    manage_py: str
    working_directory: Path
    python: str
    fake_initial: bool
    bounds: SessionBounds


@dataclasses.dataclass(frozen=True)
class Settings:
    environment: str
    mode: Mode
    command: Command
    args: tuple[str, ...]
    ssh: SSHSettings
    db: DatabaseSettings
    app: AppSettings
    image: ImageSettings | None
    targets: tuple[DatabaseSettings, ...]  # fan-out (`databases`): each database to run on; empty for one
    concurrency: int
    timeout: float
    debug: bool
    lock: bool
    lock_timeout: float
    lock_lease: float
    lock_break_stale: bool
    secrets: tuple[str, ...]
    resolved: tuple[str, ...] = ()  # each input's source, for the log (no secret value)
    show_sql: bool = False  # plan, check, migrate: collect each migration's SQL (sqlmigrate) for the report
    lint: bool = False  # the lint step runs (command lint; plan and check with lint: true)
    fail_on_risk: Risk | None = None  # lint: the risk that fails the run; None: never
    lint_thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _parse_extra_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _ENV_NAME.fullmatch(name):
            msg = f"extra-env: line {number}: expected NAME=value with NAME a valid variable name"
            raise SettingsError(msg, hint="Put one NAME=value per line.", inputs=("extra-env",))
        env[name] = value
    return env


def _resolve_directory(value: str, environ: Mapping[str, str]) -> Path:
    path = Path(value)
    if not path.is_absolute():
        base = environ.get("GITHUB_WORKSPACE") or Path.cwd()
        path = Path(base) / path
    return path


def _ssh_settings(read: Reader) -> SSHSettings:
    password = read.optional("ssh-password")
    private_key = read.optional("ssh-private-key")
    if not password and not private_key:
        read.neither(
            ("ssh-password", "ssh-private-key"), hint="Give the bastion user's password or private key (as text)."
        )
    fingerprints = read.attempt(lambda: parse_fingerprints(read.text("ssh-host-fingerprint")), ())
    known_hosts = read.optional("ssh-known-hosts")
    insecure = read.boolean("ssh-insecure-skip-host-key-check")
    if not (known_hosts or fingerprints or insecure or read.failed("ssh-host-fingerprint")):
        read.neither(
            ("ssh-known-hosts", "ssh-host-fingerprint"),
            purpose=" to verify the bastion",
            hint="Run `ssh-keyscan -p PORT HOST` from a trusted network and store its output in ssh-known-hosts.",
        )
    user = read.required("ssh-user", "the user on the bastion")
    return SSHSettings(
        host=read.required("ssh-host", "the bastion's host name or address"),
        port=read.port("ssh-port"),
        user=user,
        password=password,
        private_key=private_key,
        passphrase=read.optional("ssh-passphrase"),
        known_hosts=known_hosts,
        host_fingerprints=fingerprints,
        insecure_skip_host_key_check=insecure and not (known_hosts or fingerprints),
        insecure_skip_ignored=insecure and bool(known_hosts or fingerprints),
        jump_hosts=read.attempt(lambda: parse_jump_hosts(read.text("ssh-jump-hosts"), user), ()),
        keepalive_interval=read.seconds("ssh-keepalive-interval"),
        connect_timeout=read.seconds("connect-timeout"),
        legacy_algorithms=read.boolean("ssh-legacy-algorithms"),
    )


VERIFYING_SSLMODES = ("verify-ca", "verify-full")


def _sslrootcert(read: Reader, sslmode: str) -> str | None:
    """The CA's PEM text: exactly when the mode verifies, and loadable, or an error naming both inputs."""
    pem = read.optional("db-sslrootcert")
    if sslmode in VERIFYING_SSLMODES and not pem:
        read.problem(
            SettingsError(
                f"db-sslrootcert: required with db-sslmode: {sslmode}, expected the CA certificate (PEM text) "
                "that signed the database's certificate, got nothing" + read.unset("db-sslrootcert"),
                hint="Paste the CA certificate your provider hands out (DigitalOcean: the cluster's "
                "'CA certificate' download), BEGIN and END lines included.",
                inputs=("db-sslrootcert",),
            )
        )
    elif pem and sslmode not in VERIFYING_SSLMODES:
        read.problem(
            SettingsError(
                f"db-sslmode: expected verify-ca or verify-full with db-sslrootcert, got {sslmode}: "
                "the CA would not be checked",
                hint="Set db-sslmode: verify-full (the certificate must name db-host) or verify-ca.",
                inputs=("db-sslmode", "db-sslrootcert"),
            )
        )
    elif pem:
        try:
            ssl.create_default_context(cadata=pem)
        except (ssl.SSLError, ValueError) as exc:
            read.problem(
                SettingsError(
                    "db-sslrootcert: expected PEM certificates ('-----BEGIN CERTIFICATE-----'), "
                    f"could not load them ({exc})",
                    hint="Paste the CA certificate's text as it is, BEGIN and END lines included.",
                    inputs=("db-sslrootcert",),
                )
            )
    return pem


def _db_settings(read: Reader) -> DatabaseSettings:
    sslmode = read.text("db-sslmode").lower()
    if sslmode not in SSLMODES:
        read.problem(input_error("db-sslmode", "one of " + " | ".join(SSLMODES), sslmode))
        sslmode = INPUTS_BY_NAME["db-sslmode"].default
    sslrootcert = _sslrootcert(read, sslmode)
    fan_out = bool(read.text("databases").strip())
    return DatabaseSettings(
        host=read.required("db-host", "the database host as seen from the bastion"),
        port=read.port("db-port"),
        name=read.text("db-name") if fan_out else read.required("db-name", "the database name"),
        user=read.required("db-user", "the database user"),
        password=read.required("db-password", "the database user's password"),
        sslmode=sslmode,
        local_port=read.port("local-port", allow_zero=True),
        sslrootcert=sslrootcert,
    )


MAX_BOUND_SECONDS = 2_147_483  # PostgreSQL keeps these timeouts as int4 milliseconds


def _bound(read: Reader, name: str) -> float:
    value = read.text(name)
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number <= MAX_BOUND_SECONDS:  # NaN and infinities fail too
        read.problem(input_error(name, f"a number of seconds up to {MAX_BOUND_SECONDS}, or 0 for off", value))
        return 0
    return number


def _app_settings(read: Reader, environ: Mapping[str, str]) -> AppSettings:
    url_env = read.text("database-url-env")
    if not _ENV_NAME.fullmatch(url_env):
        read.problem(input_error("database-url-env", "a valid environment variable name", url_env))
    return AppSettings(
        django_settings_module=read.optional("django-settings-module"),
        secret_key=read.optional("secret-key"),
        extra_env=read.attempt(lambda: _parse_extra_env(read.text("extra-env")), {}),
        database_url_env=url_env,
        manage_py=read.text("manage-py"),
        working_directory=_resolve_directory(read.text("working-directory"), environ),
        python=read.text("python"),
        fake_initial=read.boolean("fake-initial"),
        bounds=SessionBounds(
            idle_in_transaction=_bound(read, "db-idle-in-transaction-timeout"),
            lock=_bound(read, "db-lock-timeout"),
            statement=_bound(read, "db-statement-timeout"),
        ),
    )


def _image_settings(read: Reader, pull: PullPolicy, *, token_filled: bool) -> ImageSettings | None:
    image = read.required("image", "the image to run the command in")
    reference = read.attempt(lambda: parse_image_reference(image, read.text("image-tag")), None) if image else None
    given = read.text("registry")
    if given and not is_registry_host(given):
        read.problem(input_error("registry", "a registry host[:port], like registry.digitalocean.com", given))
    username, password = read.optional("registry-username"), read.optional("registry-password")
    if bool(username) != bool(password):
        read.problem(
            SettingsError(
                "registry-username and registry-password: expected both or neither, got only "
                + ("registry-username" if username else "registry-password"),
                hint="DigitalOcean's registry takes the access token as both.",
                inputs=("registry-username", "registry-password"),
            )
        )
    if reference is None:
        return None
    # The daemon sends the credentials to the registry the image is pulled from, whatever `registry` says.
    if username and given and not same_registry(given, reference.registry):
        read.problem(
            SettingsError(
                f"registry and image: registry is {given} but image is on {reference.registry}; "
                f"the credentials would be sent to {reference.registry}",
                hint=f"Credentials go to the image's own registry: name {given} in image "
                f"({given}/team/app), or leave registry out.",
                inputs=("registry", "image"),
            )
        )
    if token_filled and not is_digitalocean(reference.registry):
        username = password = None  # DO_ACCESS_TOKEN is DigitalOcean's; no other registry is offered it
    registry = given or reference.registry
    return ImageSettings(
        reference=reference,
        registry=registry,
        username=username,
        password=password,
        pull=pull,
    )


MIN_LEASE_SECONDS = 3.0  # a heartbeat every third of it: one second between them at least


def _lease(read: Reader) -> float:
    lease = read.seconds("lock-lease-seconds")
    if lease < MIN_LEASE_SECONDS:
        read.problem(
            input_error("lock-lease-seconds", f"a number of seconds, at least {MIN_LEASE_SECONDS:g}", f"{lease:g}")
        )
        return MIN_LEASE_SECONDS
    return lease


# Words of a pasted `manage.py` command line, and the command input that runs it.
_DJANGO_WORDS = {"showmigrations": Command.SHOWMIGRATIONS, "migrate": Command.MIGRATE}
_MIGRATE_FLAGS = {"--plan": Command.PLAN, "--check": Command.CHECK}
_ADDED_FLAGS = {*_MIGRATE_FLAGS, "--noinput"}  # the action passes these itself


def _command_line_suggestion(text: str) -> str:
    """For a command line pasted into ``command``: the command input (and args) that run it, else ''."""
    if not re.search(r"\s|/|\.py$", text):
        return ""
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    for at, word in enumerate(words):
        command = _DJANGO_WORDS.get(word)
        if command is None:
            continue
        rest = words[at + 1 :]
        if command is Command.MIGRATE:
            command = next((_MIGRATE_FLAGS[flag] for flag in rest if flag in _MIGRATE_FLAGS), command)
            rest = [word for word in rest if word not in _ADDED_FLAGS]
        args = f" and args: {shlex.join(rest)}" if rest else ""
        return f"it looks like a command line: use command: {command.value}{args}"
    return f"it looks like a command line: use command: custom and args: {text}"


def _command(read: Reader) -> Command:
    text = read.text("command")
    suggestion = _command_line_suggestion(text)
    if suggestion:
        choices = " | ".join(command.value for command in Command)
        read.problem(input_error("command", f"one of {choices}", text, suggestion=suggestion))
        return Command.SHOWMIGRATIONS
    return read.choice("command", Command)


def _check_known(raw: Mapping[str, str]) -> None:
    unknown = sorted(set(raw) - set(INPUTS_BY_NAME))
    if not unknown:
        return
    msg = f"unknown input(s): {', '.join(unknown)}"
    meant = {name: close_matches(name, INPUTS_BY_NAME) for name in unknown}
    if len(unknown) == 1 and meant[unknown[0]]:
        msg += f"; {did_you_mean(unknown[0], INPUTS_BY_NAME)}"
    elif any(meant.values()):
        pairs = [f"{' or '.join(map(repr, names))} for {name!r}" for name, names in meant.items() if names]
        msg += f"; did you mean {', '.join(pairs)}?"
    raise SettingsError(msg, hint="Input names are kebab-case, as listed in action.yml.")


def debug_requested(environ: Mapping[str, str]) -> bool:
    """GitHub's "re-run with debug logging" sets RUNNER_DEBUG=1 for every step."""
    return environ.get("RUNNER_DEBUG") == "1"


def parse(raw: Mapping[str, str], environ: Mapping[str, str] | None = None, *, flags: Collection[str] = ()) -> Settings:
    """Raw inputs -> one validated ``Settings``; raises ``SettingsError`` naming each input at fault.

    Every problem is found in one pass (``SettingsProblems`` holds them all), each naming where the
    value came from; the error carries the ``resolved`` inputs too, for the log. ``flags``: the inputs
    given as CLI flags.
    """
    environ = os.environ if environ is None else environ
    _check_known(raw)
    problems = single_line_problems(raw)  # the explicit inputs first: environment and config-file pick the rest
    if problems:
        raise SettingsProblems.of(problems)
    layered = sources.layer(raw, environ, flags)
    resolved = resolved_inputs(layered)
    read = Reader(layered.values, layered.origins, layered.looked)
    for problem in single_line_problems(layered.values):
        read.problem(problem)
    try:
        parsed = _settings(read, layered, environ)
        read.raise_problems()
    except SettingsError as exc:
        exc.resolved = resolved
        raise
    assert parsed is not None  # noqa: S101 - no problem means every part was built
    return dataclasses.replace(parsed, resolved=resolved)


def _settings(read: Reader, layered: sources.Layered, environ: Mapping[str, str]) -> Settings | None:
    mode = read.choice("mode", Mode)
    command = _command(read)
    try:
        args = tuple(shlex.split(read.text("args")))
    except ValueError as exc:
        read.problem(input_error("args", f"shell-words ({exc})"))
        args = ()
    if command is Command.CUSTOM and not args and not read.failed("args"):
        read.problem(
            SettingsError(
                "args: required with command: custom, expected the command line to run, got nothing",
                hint="For example: command: custom, args: alembic upgrade head",
                inputs=("args",),
            )
        )
    lock_text = read.text("lock").lower()
    mutating = {Command.MIGRATE, Command.ROLLBACK, Command.CUSTOM}
    lock = command in mutating if lock_text == "auto" else read.boolean("lock")
    ssh = _ssh_settings(read)
    db = _db_settings(read)
    fan_out = read.attempt(lambda: parse_databases(read.text("databases"), db.host, db.port), ())
    targets = _fan_out_targets(db, fan_out)
    db, targets = _rollback_targets(read, command, db, targets)
    concurrency_text = read.text("concurrency")
    concurrency = 1
    if not re.fullmatch(r"[0-9]{1,2}", concurrency_text) or not 1 <= int(concurrency_text) <= 32:  # noqa: PLR2004
        read.problem(input_error("concurrency", "a number of databases at once, 1-32", concurrency_text))
    else:
        concurrency = int(concurrency_text)
    if targets and db.local_port:
        read.problem(
            SettingsError(
                "local-port: expected 0 with databases (each database gets its own free port)",
                hint="Leave local-port out when running on several databases.",
                inputs=("local-port", "databases"),
            )
        )
    if targets and mode is Mode.COMPARE:
        read.problem(
            SettingsError(
                "databases: expected one database with mode: compare",
                hint="Compare one database at a time, with db-name.",
                inputs=("databases", "mode"),
            )
        )
    app = _app_settings(read, environ)
    pull = read.choice("pull", PullPolicy)  # validated in every mode: a typo must not wait for docker mode
    image = None
    if mode.in_image and command is not Command.PROBE and not read.failed("mode", "command"):
        image = _image_settings(read, pull, token_filled=layered.registry_token)
    if mode is Mode.COMPARE and command is not Command.SHOWMIGRATIONS and not read.failed("command"):
        read.problem(input_error("command", "showmigrations with mode: compare", command.value))
    timeout = read.seconds("timeout")
    debug = read.boolean("debug")
    show_sql = read.boolean("show-sql")
    lint, fail_on_risk, thresholds = _lint(read, command)
    lock_timeout = read.seconds("lock-timeout")
    lease = _lease(read)
    break_stale = read.boolean("lock-break-stale")
    if read.problems:
        return None
    secret_values = [ssh.password, ssh.private_key, ssh.passphrase, db.password, app.secret_key]
    if image:
        secret_values.append(image.password)
    secret_values += layered.secret_values
    # The DSN holds the password; mask its fixed part (without the port, unknown yet) too.
    secrets = masks(secret_values, verbatim=[db.url(0).rsplit("@", 1)[0]])
    ssh = dataclasses.replace(
        ssh, sources=_sources(read, "ssh-host", "ssh-port", "ssh-user", "ssh-password", "ssh-private-key")
    )
    db = dataclasses.replace(db, sources=_sources(read, "db-host", "db-user", "db-password", "db-name"))
    fan_out_sources = _sources(read, "db-host", "db-user", "db-password", "databases")
    return Settings(
        environment=read.text("environment"),
        mode=mode,
        command=command,
        args=args,
        ssh=ssh,
        db=db,
        app=app,
        targets=tuple(dataclasses.replace(target, sources=fan_out_sources) for target in targets),
        concurrency=concurrency,
        image=image,
        timeout=timeout,
        debug=debug or debug_requested(environ),
        lock=lock,
        lock_timeout=lock_timeout,
        lock_lease=lease,
        lock_break_stale=break_stale,
        secrets=secrets,
        show_sql=show_sql,
        lint=lint,
        fail_on_risk=fail_on_risk,
        lint_thresholds=thresholds,
    )


def _fan_out_targets(db: DatabaseSettings, fan_out: tuple[DatabaseTarget, ...]) -> tuple[DatabaseSettings, ...]:
    """Each entry of ``databases`` as the database settings it overrides; a name two servers share is labelled
    ``host:port/name``, so that the log, the outputs and rollback-targets tell them apart."""
    names = Counter(target.name for target in fan_out)
    return tuple(
        dataclasses.replace(
            db,
            host=target.host,
            port=target.port,
            name=target.name,
            label=f"{_url_host(target.host)}:{target.port}/{target.name}" if names[target.name] > 1 else "",
        )
        for target in fan_out
    )


def _rollback_targets(
    read: Reader, command: Command, db: DatabaseSettings, targets: tuple[DatabaseSettings, ...]
) -> tuple[DatabaseSettings, tuple[DatabaseSettings, ...]]:
    """``rollback-targets``: required with command: rollback (one object, or one per database), else not given."""
    text = read.text(rollback.INPUT).strip()
    if command is not Command.ROLLBACK or read.failed("command", "databases"):
        if text and not read.failed("command"):
            read.problem(input_error(rollback.INPUT, "nothing unless command is rollback", text[:60]))
        return db, targets
    if not text:
        read.problem(
            SettingsError(
                f"{rollback.INPUT}: required with command: rollback, expected the JSON a migrate step's "
                "rollback-targets output holds, got nothing" + read.unset(rollback.INPUT),
                hint="Pass the migrate step's output: rollback-targets: ${{ steps.migrate.outputs.rollback-targets }}.",
                inputs=(rollback.INPUT,),
            )
        )
        return db, targets
    if read.text("args").strip():
        read.problem(input_error("args", "nothing with command: rollback (rollback-targets says what to do)"))
    if not targets:
        return dataclasses.replace(db, rollback_targets=read.attempt(lambda: rollback.parse(text), ())), targets
    # By the names the migrate's output used: each database's name, or host:port/name for names two servers share.
    keys = [target.key for target in targets]
    per_database = read.attempt(lambda: rollback.parse_fan_out(text, keys), {})
    return db, tuple(
        dataclasses.replace(target, rollback_targets=per_database.get(target.key, ())) for target in targets
    )


FAIL_ON_RISK = ("high", "medium", "low", "never")


def _count(read: Reader, name: str) -> int:
    value = read.text(name).replace("_", "")
    if not re.fullmatch(r"[0-9]{1,15}", value):
        read.problem(input_error(name, "a whole number of rows, 0 or more", read.text(name)))
        return 0
    return int(value)


def _lint(read: Reader, command: Command) -> tuple[bool, Risk | None, Thresholds]:
    """Whether the lint step runs, the risk that fails the run, and the thresholds that weigh a finding."""
    asked = read.boolean("lint")
    if asked and command not in {Command.PLAN, Command.CHECK, Command.LINT} and not read.failed("command"):
        read.problem(
            SettingsError(
                f"lint: expected false with command: {command.value} (lint runs with plan, check and lint)",
                hint="Lint the pending migrations in a step before migrate (command: lint, or plan / check "
                "with lint: true), and gate migrate on it with fail-on-risk.",
                inputs=("lint", "command"),
            )
        )
    fail_text = read.text("fail-on-risk").lower()
    fail_on_risk = None
    if fail_text not in FAIL_ON_RISK:
        read.problem(input_error("fail-on-risk", " | ".join(FAIL_ON_RISK), read.text("fail-on-risk")))
    elif fail_text != "never":
        fail_on_risk = Risk(fail_text)
    rows_medium, rows_high = _count(read, "lint-rows-medium"), _count(read, "lint-rows-high")
    if rows_high < rows_medium and not read.failed("lint-rows-medium", "lint-rows-high"):
        read.problem(
            SettingsError(
                f"lint-rows-high: expected at least lint-rows-medium ({rows_medium:,}), got {rows_high:,}",
                hint="A table big enough to be high risk is at least medium risk: raise lint-rows-high.",
                inputs=("lint-rows-high", "lint-rows-medium"),
            )
        )
    thresholds = Thresholds(rows_medium, rows_high, read.seconds("lint-transaction-seconds"))
    return asked or command is Command.LINT, fail_on_risk, thresholds


def _sources(read: Reader, *names: str) -> dict[str, str]:
    """``{"ssh-password": "ssh-password from secret DEV_SSH_PASSWORD (secrets input)"}``, for runtime errors."""
    origins = {name: read.origin(name) for name in names}
    return {
        name: f"{name} from {origin.describe(name)}" for name, origin in origins.items() if origin != DEFAULT_ORIGIN
    }


_SHOWN_CHARACTERS = 60


def resolved_inputs(layered: sources.Layered) -> tuple[str, ...]:
    """The log's "resolved inputs": each set input, where it came from, and its value unless a secret gave it."""
    lines = []
    if layered.prefix:
        lines.append(
            f"secret names read: {layered.prefix}_* (and plain names from the secrets input)"
            if layered.json_source
            else f"secret names read: {layered.prefix}_* environment variables"
        )
    for spec in INPUTS:
        if spec.name not in layered.values:
            continue
        origin = layered.origins[spec.name]
        value = layered.values[spec.name].strip()
        shown = ""
        if not (spec.secret or origin.hides_value):
            first, *rest = value.splitlines() or [""]
            shown = first if len(first) <= _SHOWN_CHARACTERS else first[: _SHOWN_CHARACTERS - 3] + "..."
            shown = f"{shown!r} (+{len(rest)} more lines) " if rest else f"{shown!r} "
        lines.append(f"{spec.name}: {shown}from {origin.describe(spec.name)}")
    defaults = [spec.name for spec in INPUTS if spec.name not in layered.values and spec.default]
    if defaults:
        lines.append(f"defaults: {', '.join(defaults)}")
    return tuple(lines)
