"""The run, in one direction: prepare -> tunnel -> probe -> command -> report.

One ``AsyncExitStack`` owns every resource; failure, timeout and cancellation
all unwind it (the command's processes ended, the forward and the SSH
connection closed) before the result is reported.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Iterator, Mapping

from bastion_action import database, tunnel
from bastion_action.errors import (
    ActionError,
    CommandError,
    LockError,
    ProbeError,
    PullError,
    SettingsError,
    Stage,
    TunnelError,
)
from bastion_action.gha import Console
from bastion_action.report import TAIL_LINES, Result, RunResult
from bastion_action.runners import local
from bastion_action.settings import Command, Settings

_TIMEOUT_ERRORS: Mapping[Stage, type[ActionError]] = {
    Stage.SETTINGS: SettingsError,
    Stage.TUNNEL: TunnelError,
    Stage.PROBE: ProbeError,
    Stage.LOCK: LockError,
    Stage.PULL: PullError,
    Stage.COMMAND: CommandError,
}


class _Clock:
    """Which stage the run is in, and how long each took."""

    def __init__(self, run: RunResult) -> None:
        self.run = run
        self.stage = Stage.SETTINGS

    @contextlib.contextmanager
    def stage_of(self, stage: Stage) -> Iterator[None]:
        self.stage = stage
        started = time.perf_counter()
        try:
            yield
        finally:
            self.run.timings[stage.value] = self.run.timings.get(stage.value, 0.0) + time.perf_counter() - started


def django_argv(settings: Settings) -> list[str]:
    """``manage.py`` and its arguments for the Django commands."""
    if settings.command is Command.MIGRATE:
        args = ["migrate", "--noinput"]
        if settings.app.fake_initial:
            args.append("--fake-initial")
    else:
        args = [settings.command.value]
    return [settings.app.manage_py, *args, *settings.args]


def command_env(settings: Settings, port: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The runner's environment, less the action's inputs, plus the app's settings."""
    env = {name: value for name, value in environ.items() if not name.startswith("INPUT_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings.app.extra_env)
    env[settings.app.database_url_env] = settings.db.url(port)
    if settings.app.django_settings_module:
        env["DJANGO_SETTINGS_MODULE"] = settings.app.django_settings_module
    if settings.app.secret_key:
        env["SECRET_KEY"] = settings.app.secret_key
    return env


async def _run_command(
    settings: Settings, console: Console, run: RunResult, python: str, open_tunnel: tunnel.Tunnel
) -> None:
    argv = [python, *django_argv(settings)]
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    env = command_env(settings, open_tunnel.port, os.environ)
    with console.group(f"python {' '.join(argv[1:])}"):
        command = asyncio.create_task(
            local.run(argv, cwd=settings.app.working_directory, env=env, on_line=console.line, tail=tail)
        )
        dropped = asyncio.create_task(open_tunnel.wait_closed())
        try:
            await asyncio.wait({command, dropped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (command, dropped):
                task.cancel()
            await asyncio.gather(command, dropped, return_exceptions=True)
    run.output_tail = [console.redact(line) for line in tail]
    if not command.cancelled() and command.exception() is None:
        run.exit_code = command.result()
    elif not command.cancelled():
        raise command.exception()  # type: ignore[misc]
    if dropped.done() and not dropped.cancelled() and run.exit_code is None:
        raise TunnelError(
            "the SSH connection to the bastion ended while the command ran; the command was stopped",
            hint="The bastion or the network dropped the link (keepalives went unanswered). "
            "Re-run; if it repeats, check the bastion's sshd logs and idle timeouts.",
            anchor="tunnel-dropped",
        )
    if run.exit_code != 0:
        raise CommandError(
            f"`{' '.join(django_argv(settings))}` exited with code {run.exit_code}",
            hint="The command's last lines of output are in the step summary.",
            exit_code=run.exit_code,
        )


async def _stages(settings: Settings, console: Console, run: RunResult, clock: _Clock) -> None:
    with clock.stage_of(Stage.SETTINGS):
        credentials = tunnel.load_credentials(settings.ssh)
        python = ""
        if settings.command is not Command.PROBE:
            local.check_working_directory(settings.app.working_directory)
            python = local.resolve_python(settings.app.python, settings.app.working_directory)
    if settings.ssh.insecure_skip_host_key_check:
        console.warning(
            "ssh-insecure-skip-host-key-check is true: the bastion's identity is not verified, so a man in the "
            "middle could read the SSH and database credentials. Set ssh-known-hosts or ssh-host-fingerprint."
        )
    ssh, db = settings.ssh, settings.db
    async with contextlib.AsyncExitStack() as stack:
        with clock.stage_of(Stage.TUNNEL):
            opened = await stack.enter_async_context(
                tunnel.open_tunnel(ssh, credentials, db.host, db.port, db.local_port)
            )
        run.tunnel_port = opened.port
        console.line(
            f"tunnel: 127.0.0.1:{opened.port} -> {db.host}:{db.port} via {ssh.user}@{ssh.host}:{ssh.port} "
            f"({run.timings[Stage.TUNNEL.value]:.2f} s)"
        )
        with clock.stage_of(Stage.PROBE):
            run.server = await database.probe(db, opened.port, ssh.connect_timeout)
        server = run.server
        console.line(
            f"probe: PostgreSQL {server.version}, database {server.database} as {server.user}, "
            f"SSL {'on' if server.ssl else 'off'}, {server.rtt_ms:.1f} ms round trip"
        )
        if settings.command is not Command.PROBE:
            with clock.stage_of(Stage.COMMAND):
                await _run_command(settings, console, run, python, opened)
    run.result = Result.SUCCESS


async def execute(settings: Settings, console: Console) -> RunResult:
    """Run every stage; always returns what the run got to (never raises for expected failures)."""
    run = RunResult(environment=settings.environment, mode=settings.mode.value, command=settings.command.value)
    clock = _Clock(run)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.timeout):
            await _stages(settings, console, run, clock)
    except ActionError as exc:
        run.error = exc
    except TimeoutError:
        error_type = _TIMEOUT_ERRORS[clock.stage]
        run.error = error_type(
            f"timed out: the whole run is limited to {settings.timeout:g} s (timeout) and the "
            f"{clock.stage.value} stage was still running",
            hint="Raise the 'timeout' input if the work is expected to take longer.",
            anchor="timeout",
        )
    except asyncio.CancelledError:
        run.cancelled = True
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    finally:
        run.duration = time.perf_counter() - started
    if run.error is not None or run.cancelled:
        run.result = Result.FAILURE
    return run
