"""The run's settings: raw inputs parsed once into frozen, validated data; every error names the input."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import shlex
import ssl
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlencode

from bastion_action import sources
from bastion_action.errors import SettingsError, input_error
from bastion_action.inputs import (
    INPUTS,
    INPUTS_BY_NAME,
    InputSpec,
    Reader,
    check_single_line,
    close_matches,
    did_you_mean,
    raw_from_environ,
)
from bastion_action.redaction import masks, secret_forms
from bastion_action.references import (
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
    CUSTOM = "custom"

    @property
    def django(self) -> bool:
        return self not in {Command.PROBE, Command.CUSTOM}

    @property
    def read_only(self) -> bool:
        """Django commands that only read the database: they cannot apply anything."""
        return self in {Command.SHOWMIGRATIONS, Command.PLAN, Command.CHECK}


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
            raise SettingsError(msg, hint="Put one NAME=value per line.")
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
        raise SettingsError(
            "ssh-password or ssh-private-key: one is required, got neither"
            + read.unset_secrets("ssh-password", "ssh-private-key"),
            hint="Give the bastion user's password or private key (as text).",
        )
    fingerprints = parse_fingerprints(read.text("ssh-host-fingerprint"))
    known_hosts = read.optional("ssh-known-hosts")
    insecure = read.boolean("ssh-insecure-skip-host-key-check")
    if not (known_hosts or fingerprints or insecure):
        raise SettingsError(
            "ssh-known-hosts or ssh-host-fingerprint: one is required to verify the bastion, got neither"
            + read.unset_secrets("ssh-known-hosts"),
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
        jump_hosts=parse_jump_hosts(read.text("ssh-jump-hosts"), user),
        keepalive_interval=read.seconds("ssh-keepalive-interval"),
        connect_timeout=read.seconds("connect-timeout"),
        legacy_algorithms=read.boolean("ssh-legacy-algorithms"),
    )


VERIFYING_SSLMODES = ("verify-ca", "verify-full")


def _sslrootcert(read: Reader, sslmode: str) -> str | None:
    """The CA's PEM text: exactly when the mode verifies, and loadable, or an error naming both inputs."""
    pem = read.optional("db-sslrootcert")
    if sslmode in VERIFYING_SSLMODES and not pem:
        raise SettingsError(
            f"db-sslrootcert: required with db-sslmode: {sslmode}, expected the CA certificate (PEM text) "
            "that signed the database's certificate, got nothing" + read.unset_secrets("db-sslrootcert"),
            hint="Paste the CA certificate your provider hands out (DigitalOcean: the cluster's "
            "'CA certificate' download), BEGIN and END lines included.",
        )
    if pem and sslmode not in VERIFYING_SSLMODES:
        raise SettingsError(
            f"db-sslmode: expected verify-ca or verify-full with db-sslrootcert, got {sslmode}: "
            "the CA would not be checked",
            hint="Set db-sslmode: verify-full (the certificate must name db-host) or verify-ca.",
        )
    if pem:
        try:
            ssl.create_default_context(cadata=pem)
        except (ssl.SSLError, ValueError) as exc:
            raise SettingsError(
                "db-sslrootcert: expected PEM certificates ('-----BEGIN CERTIFICATE-----'), "
                f"could not load them ({exc})",
                hint="Paste the CA certificate's text as it is, BEGIN and END lines included.",
            ) from None
    return pem


def _db_settings(read: Reader) -> DatabaseSettings:
    sslmode = read.text("db-sslmode").lower()
    if sslmode not in SSLMODES:
        raise input_error("db-sslmode", "one of " + " | ".join(SSLMODES), sslmode)
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
        raise input_error(name, f"a number of seconds up to {MAX_BOUND_SECONDS}, or 0 for off", value)
    return number


def _app_settings(read: Reader, environ: Mapping[str, str]) -> AppSettings:
    url_env = read.text("database-url-env")
    if not _ENV_NAME.fullmatch(url_env):
        raise input_error("database-url-env", "a valid environment variable name", url_env)
    return AppSettings(
        django_settings_module=read.optional("django-settings-module"),
        secret_key=read.optional("secret-key"),
        extra_env=_parse_extra_env(read.text("extra-env")),
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


def _image_settings(read: Reader, pull: PullPolicy, *, token_filled: bool) -> ImageSettings:
    reference = parse_image_reference(read.required("image", "the image to run the command in"), read.text("image-tag"))
    given = read.text("registry")
    if given and not is_registry_host(given):
        raise input_error("registry", "a registry host[:port], like registry.digitalocean.com", given)
    username, password = read.optional("registry-username"), read.optional("registry-password")
    if bool(username) != bool(password):
        raise SettingsError(
            "registry-username and registry-password: expected both or neither, got only "
            + ("registry-username" if username else "registry-password"),
            hint="DigitalOcean's registry takes the access token as both.",
        )
    # The daemon sends the credentials to the registry the image is pulled from, whatever `registry` says.
    if username and given and not same_registry(given, reference.registry):
        raise SettingsError(
            f"registry and image: registry is {given} but image is on {reference.registry}; "
            f"the credentials would be sent to {reference.registry}",
            hint=f"Credentials go to the image's own registry: name {given} in image "
            f"({given}/team/app), or leave registry out.",
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
        raise input_error("lock-lease-seconds", f"a number of seconds, at least {MIN_LEASE_SECONDS:g}", str(lease))
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
        raise input_error("command", f"one of {choices}", text, suggestion=suggestion)
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


def parse(raw: Mapping[str, str], environ: Mapping[str, str] | None = None) -> Settings:
    """Raw inputs -> one validated ``Settings``; raises ``SettingsError`` naming the input."""
    environ = os.environ if environ is None else environ
    _check_known(raw)
    check_single_line(raw)  # the explicit inputs first: environment and config-file pick what is layered
    layered = sources.layer(raw, environ)
    check_single_line(layered.values)
    read = Reader(layered.values, layered.secret_names)
    mode = read.choice("mode", Mode)
    command = _command(read)
    try:
        args = tuple(shlex.split(read.text("args")))
    except ValueError as exc:
        raise input_error("args", f"shell-words ({exc})") from None
    if command is Command.CUSTOM and not args:
        raise SettingsError(
            "args: required with command: custom, expected the command line to run, got nothing",
            hint="For example: command: custom, args: alembic upgrade head",
        )
    lock_text = read.text("lock").lower()
    lock = command in {Command.MIGRATE, Command.CUSTOM} if lock_text == "auto" else read.boolean("lock")
    ssh = _ssh_settings(read)
    db = _db_settings(read)
    targets = tuple(
        dataclasses.replace(db, host=target.host, port=target.port, name=target.name)
        for target in parse_databases(read.text("databases"), db.host, db.port)
    )
    concurrency_text = read.text("concurrency")
    if not re.fullmatch(r"[0-9]{1,2}", concurrency_text) or not 1 <= int(concurrency_text) <= 32:  # noqa: PLR2004
        raise input_error("concurrency", "a number of databases at once, 1-32", concurrency_text)
    concurrency = int(concurrency_text)
    if targets and db.local_port:
        raise SettingsError(
            "local-port: expected 0 with databases (each database gets its own free port)",
            hint="Leave local-port out when running on several databases.",
        )
    if targets and mode is Mode.COMPARE:
        raise SettingsError(
            "databases: expected one database with mode: compare",
            hint="Compare one database at a time, with db-name.",
        )
    app = _app_settings(read, environ)
    pull = read.choice("pull", PullPolicy)  # validated in every mode: a typo must not wait for docker mode
    image = (
        _image_settings(read, pull, token_filled=layered.registry_token)
        if mode.in_image and command is not Command.PROBE
        else None
    )
    if mode is Mode.COMPARE and command is not Command.SHOWMIGRATIONS:
        raise input_error("command", "showmigrations with mode: compare", command.value)
    secret_values = [ssh.password, ssh.private_key, ssh.passphrase, db.password, app.secret_key]
    if image:
        secret_values.append(image.password)
    secret_values += layered.secret_values
    # The DSN holds the password; mask its fixed part (without the port, unknown yet) too.
    secrets = masks(secret_values, verbatim=[db.url(0).rsplit("@", 1)[0]])
    return Settings(
        environment=read.text("environment"),
        mode=mode,
        command=command,
        args=args,
        ssh=ssh,
        db=db,
        app=app,
        targets=targets,
        concurrency=concurrency,
        image=image,
        timeout=read.seconds("timeout"),
        debug=read.boolean("debug") or debug_requested(environ),
        lock=lock,
        lock_timeout=read.seconds("lock-timeout"),
        lock_lease=_lease(read),
        lock_break_stale=read.boolean("lock-break-stale"),
        secrets=secrets,
    )
