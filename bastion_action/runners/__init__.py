"""Where the command runs: one protocol, two implementations (the runner, the image).

    Runner                     the protocol the orchestrator calls; it never asks which one it has
    ├── local.LocalRunner      a subprocess on the runner (lightweight mode; compare mode's first view)
    └── docker.ImageRunner     a container of the pulled image, host networking (docker mode)

Both run the same command line (``command_argv``) with the same environment
(``command_env``), the database URL pointing at the command's end of the tunnel,
``PGOPTIONS`` bounding the command's sessions on the server and ``PGAPPNAME``
naming them there (the action ends those the command leaves behind).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from bastion_action.settings import AppSettings, Command, SessionBounds, Settings


class Output(Protocol):
    """Where a runner sends what the command prints, as it arrives."""

    def feed(self, chunk: bytes | str) -> None:
        """A piece of the command's output (stdout and stderr merged), of any size, cut anywhere."""

    def note(self, line: str) -> None:
        """A line of the runner's own, shown among the command's output but not part of it."""


class Runner(Protocol):
    """Runs one command line to its end, sending its output to ``output`` as it comes."""

    @property
    def where(self) -> str:
        """How titles name the place: ``""`` for the run's own place, ``"in the image"`` for a second view."""

    def interpreter(self) -> str:
        """The Python that runs ``manage.py`` here, as titles show it."""

    async def ready(self) -> None:
        """Return once a command can start here (in the image: once the run's pull is done)."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        database_url: str,
        output: Output,
        application_name: str = "",
    ) -> int:
        """Run ``argv`` (``manage.py ...`` after this place's interpreter, or a custom command line).

        ``application_name``: what the command's database sessions are called (``PGAPPNAME``), if not "".
        """


def command_argv(settings: Settings) -> list[str]:
    """The command line after the interpreter: ``manage.py ...`` for Django, the args for custom."""
    command = settings.command
    if command is Command.CUSTOM:
        return list(settings.args)
    if command is Command.MIGRATE:
        args = ["migrate", "--noinput"]
        if settings.app.fake_initial:
            args.append("--fake-initial")
        # Django times each migration only at verbosity 2; a -v in args comes later, and wins.
        args += ["-v", "2"]
    elif command.plans:
        args = ["migrate", "--plan"]
    else:
        args = [command.value]
    return [settings.app.manage_py, *args, *settings.args]


def with_interpreter(settings: Settings, python: str, argv: Sequence[str]) -> list[str]:
    """A custom command line runs as given; a Django one after the interpreter."""
    return list(argv) if settings.command is Command.CUSTOM else [python, *argv]


APPLICATION_NAME_ENV = "PGAPPNAME"  # libpq's: the application_name of every session the command opens


def pgoptions(bounds: SessionBounds) -> str:
    """libpq's ``PGOPTIONS`` for the server-side bounds that are on: ``-c name=<ms>`` each."""
    settings = (
        ("idle_in_transaction_session_timeout", bounds.idle_in_transaction),
        ("lock_timeout", bounds.lock),
        ("statement_timeout", bounds.statement),
    )
    # A positive bound never rounds to 0 ms, which the server would read as "off".
    return " ".join(f"-c {name}={max(1, round(seconds * 1000))}" for name, seconds in settings if seconds > 0)


def command_env(
    app: AppSettings, database_url: str, environ: Mapping[str, str], application_name: str = ""
) -> dict[str, str]:
    """``environ`` less the action's inputs, plus the app's settings and the tunnel's database URL.

    The server-side bounds go first in ``PGOPTIONS``, before whatever the runner's environment or
    ``extra-env`` put there: PostgreSQL applies the options in order, so the user's own ``-c`` for
    the same setting wins. ``application_name`` becomes libpq's ``PGAPPNAME`` unless one is set.
    """
    env = {name: value for name, value in environ.items() if not name.startswith("INPUT_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(app.extra_env)
    if application_name and not env.get(APPLICATION_NAME_ENV):
        env[APPLICATION_NAME_ENV] = application_name
    options = " ".join(part for part in (pgoptions(app.bounds), env.get("PGOPTIONS", "").strip()) if part)
    if options:
        env["PGOPTIONS"] = options
    env[app.database_url_env] = database_url
    if app.django_settings_module:
        env["DJANGO_SETTINGS_MODULE"] = app.django_settings_module
    if app.secret_key:
        env["SECRET_KEY"] = app.secret_key
    return env


def title(settings: Settings, runner: Runner, argv: Sequence[str]) -> str:
    """How the log names a command: ``python manage.py migrate ...`` (custom: its own words)."""
    shown = " ".join(with_interpreter(settings, runner.interpreter(), argv))
    return f"{runner.where}: {shown}" if runner.where else shown
