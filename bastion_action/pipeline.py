"""The run, in one direction: prepare -> (tunnel -> probe | pull) -> lock -> command -> report.

The command's end of the tunnel (the gate) is bound first, so the command can start
while the rest comes up; it reaches the database only once the lock is held.
asyncssh, asyncpg (tunnel, database) and aiodocker are imported where first needed,
after the command has started: their imports cost more than the SSH connection.

One ``AsyncExitStack`` owns every resource; failure, timeout and cancellation
all unwind it (the command's processes ended, the forward and the SSH
connection closed) before the result is reported.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import importlib
import os
import time
from collections.abc import Awaitable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

from bastion_action import loopback, migrations
from bastion_action.errors import (
    ActionError,
    CommandError,
    LockError,
    PendingMigrationsError,
    ProbeError,
    PullError,
    SettingsError,
    Stage,
    TunnelError,
)
from bastion_action.gha import Console
from bastion_action.report import TAIL_LINES, Result, RunResult
from bastion_action.runners import local
from bastion_action.settings import Command, DatabaseSettings, Mode, Settings

if TYPE_CHECKING:
    from bastion_action import database, tunnel
    from bastion_action.runners import docker

OUTPUT_LINES = 100_000  # kept for parsing; a command printing more is cut at the front
_T = TypeVar("_T")
_U = TypeVar("_U")

_TIMEOUT_ERRORS: Mapping[Stage, type[ActionError]] = {
    Stage.SETTINGS: SettingsError,
    Stage.TUNNEL: TunnelError,
    Stage.PROBE: ProbeError,
    Stage.LOCK: LockError,
    Stage.PULL: PullError,
    Stage.COMMAND: CommandError,
}


class _Clock:
    """Which stages are running (tunnel and pull overlap), and how long each took."""

    def __init__(self, run: RunResult) -> None:
        self.run = run
        self.active: list[Stage] = []
        self.last = Stage.SETTINGS
        self.interrupted: Stage | None = None  # the first stage a timeout or cancel unwound

    @property
    def stage(self) -> Stage:
        return self.active[0] if self.active else self.interrupted or self.last

    @contextlib.contextmanager
    def stage_of(self, stage: Stage) -> Iterator[None]:
        self.active.append(stage)
        self.last = stage
        started = time.perf_counter()
        try:
            yield
        except (asyncio.CancelledError, TimeoutError):
            self.interrupted = self.interrupted or stage
            raise
        finally:
            self.active.remove(stage)
            self.run.timings[stage.value] = self.run.timings.get(stage.value, 0.0) + time.perf_counter() - started


def command_argv(settings: Settings) -> list[str]:
    """The command line after the interpreter: ``manage.py ...`` for Django, the args for custom."""
    command = settings.command
    if command is Command.CUSTOM:
        return list(settings.args)
    if command is Command.MIGRATE:
        args = ["migrate", "--noinput"]
        if settings.app.fake_initial:
            args.append("--fake-initial")
    elif command in {Command.PLAN, Command.CHECK}:
        args = ["migrate", "--plan"]
    else:
        args = [command.value]
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


async def _concurrently(first: Awaitable[_T], second: Awaitable[_U]) -> tuple[_T, _U]:
    """Both results; the first failure cancels the other, and both are finished before returning."""
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return tasks[0].result(), tasks[1].result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _while_tunnel_up(work: Awaitable[_T], opened: tunnel.Tunnel) -> _T:
    """The work's result, unless the tunnel ends first: then the work is stopped (never a hang on a dead link)."""
    running = asyncio.ensure_future(work)
    dropped = asyncio.ensure_future(opened.wait_closed())
    try:
        await asyncio.wait({running, dropped}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            return running.result()
    finally:
        for task in (running, dropped):
            task.cancel()
        await asyncio.gather(running, dropped, return_exceptions=True)
    raise TunnelError(
        "the SSH connection to the bastion ended while the run used it; what was running was stopped",
        hint="The bastion or the network dropped the link (keepalives went unanswered). "
        "Re-run; if it repeats, check the bastion's sshd logs and idle timeouts.",
        anchor="tunnel-dropped",
    )


class _Started:
    """A command that may start before the tunnel is up; its output is held back until it may reach the database."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self.task: asyncio.Future[int] | None = None
        self._held: list[str] = []
        self._live = False
        self.hold = False  # fan-out: the whole output is shown at the end, not interleaved with others

    def on_line(self, line: str) -> None:
        # The runner keeps the line in `output` (its `tail`); here it is only shown, or held back.
        if self._live:
            self.console.line(line)
        else:
            self._held.append(line)

    def go_live(self) -> None:
        if self._live:
            return
        self.console.open_group(self.title)
        self._live = True
        for line in self._held:
            self.console.line(line)
        self._held.clear()

    def end(self) -> None:
        self.go_live()
        self.console.close_group()

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


class _Run:
    """One run's stages over one exit stack."""

    def __init__(self, settings: Settings, console: Console, run: RunResult, clock: _Clock) -> None:
        self.settings = settings
        self.console = console
        self.run = run
        self.clock = clock
        self.python = ""
        self.port = 0  # the command's end of the tunnel (the gate)
        self.runner: docker.DockerRunner | None = None
        self.image: docker.PreparedImage | None = None
        self.main: _Started | None = None
        self.validated = asyncio.Event()  # settings fully checked: the registry may be contacted
        self.chain: tunnel.Chain | None = None  # fan-out: the SSH connection every database shares
        self.label = ""  # fan-out: the database this run works on, prefixed to its log lines

    def say(self, text: str) -> None:
        self.console.line(f"[{self.label}] {text}" if self.label else text)

    @property
    def _title(self) -> str:
        settings = self.settings
        argv = command_argv(settings)
        return " ".join(argv) if settings.command is Command.CUSTOM else f"{settings.app.python} {' '.join(argv)}"

    def check_runner(self) -> None:
        settings = self.settings
        if settings.mode.on_runner and settings.command is not Command.PROBE:
            local.check_working_directory(settings.app.working_directory)
            if settings.command is not Command.CUSTOM:
                self.python = local.resolve_python(settings.app.python, settings.app.working_directory)

    def credentials(self) -> tunnel.Credentials:
        from bastion_action import tunnel  # noqa: PLC0415 - see the module docstring

        settings = self.settings
        credentials = tunnel.load_credentials(settings.ssh)
        if settings.ssh.insecure_skip_host_key_check:
            self.console.warning(
                "ssh-insecure-skip-host-key-check is true: the bastion's identity is not verified, so a man in "
                "the middle could read the SSH and database credentials. Set ssh-known-hosts or "
                "ssh-host-fingerprint."
            )
        elif settings.ssh.insecure_skip_ignored:
            self.console.warning(
                "ssh-insecure-skip-host-key-check is true but ssh-known-hosts / ssh-host-fingerprint are given: "
                "the host key is verified against them. Remove the skip flag."
            )
        return credentials

    def start(self, argv: list[str], title: str, *, in_image: bool) -> _Started:
        """Start a command now; it reaches the database through the gate only."""
        started = _Started(self.console, f"[{self.label}] {title}" if self.label else title)
        started.hold = bool(self.label)
        started.task = asyncio.ensure_future(self._work(argv, started, in_image=in_image))
        return started

    def _work(self, argv: list[str], started: _Started, *, in_image: bool) -> Awaitable[int]:
        settings = self.settings
        if in_image and self.runner is not None and self.image is not None:
            env = command_env(settings, self.port, {})
            labels = {"environment": settings.environment, "command": settings.command.value}
            if settings.command is not Command.CUSTOM:
                # In compare mode the `python` input names the runner's interpreter; the image has its own.
                argv = [settings.app.python if settings.mode is Mode.DOCKER else "python", *argv]
            return self.runner.run(
                self.image, argv, env=env, labels=labels, on_line=started.on_line, tail=started.output
            )
        env = command_env(settings, self.port, os.environ)
        if settings.command is not Command.CUSTOM:
            argv = [self.python, *argv]
        cwd = settings.app.working_directory
        return local.run(argv, cwd=cwd, env=env, on_line=started.on_line, tail=started.output)

    @property
    def _gate_at_tunnel(self) -> bool:
        """A read-only command without the lock may reach the database as soon as the tunnel exists."""
        return self.settings.command.read_only and not self.settings.lock

    async def connect(
        self, stack: contextlib.AsyncExitStack, credentials: tunnel.Credentials, gate: tunnel.Gate
    ) -> tuple[tunnel.Tunnel, database.Session]:
        from bastion_action import database, tunnel  # noqa: PLC0415 - see the module docstring

        ssh, db, run = self.settings.ssh, self.settings.db, self.run
        with self.clock.stage_of(Stage.TUNNEL):
            chain = self.chain
            if chain is None:
                chain = await stack.enter_async_context(tunnel.connect(ssh, credentials))
            opened = await stack.enter_async_context(tunnel.forward(chain, db.host, db.port))
        run.tunnel_port = self.port  # reported once the tunnel behind it exists
        if self._gate_at_tunnel:
            gate.open(opened, db.host, db.port)  # the command's work overlaps the probe
        hops = "".join(f"{hop} -> " for hop in ssh.jump_hosts)
        self.say(
            f"tunnel: 127.0.0.1:{self.port} -> {db.host}:{db.port} via {hops}{ssh.user}@{ssh.host}:{ssh.port} "
            f"({run.timings[Stage.TUNNEL.value]:.2f} s)"
        )
        with self.clock.stage_of(Stage.PROBE):
            session = await _while_tunnel_up(
                stack.enter_async_context(
                    database.session(db, opened.port, ssh.connect_timeout, explain=opened.forward_failure)
                ),
                opened,
            )
            server = await _while_tunnel_up(session.describe(), opened)
        run.server = server
        self.say(
            f"probe: PostgreSQL {server.version}, database {server.database} as {server.user}, "
            f"SSL {'on' if server.ssl else 'off'}, {server.rtt_ms:.1f} ms round trip"
        )
        return opened, session

    async def pull(self) -> None:
        image, runner, settings = self.settings.image, self.runner, self.settings
        if runner is None or image is None:
            return
        self.run.image = str(image.reference)
        progress: list[str] = []
        try:
            with self.clock.stage_of(Stage.PULL):
                self.image = await runner.prepare(image, progress.append, self.validated.wait)
        finally:
            # The pull overlaps the tunnel's log lines; its compact progress is shown as one group.
            if progress:
                with self.console.group(f"pull {image.reference}"):
                    for line in progress:
                        self.console.line(line)
        self.run.image_digest = self.image.digest
        self.console.line(
            f"image: {image.reference} ({self.image.digest or self.image.image_id}), "
            f"{'pulled' if self.image.pulled else 'already present'} in {self.run.timings[Stage.PULL.value]:.2f} s"
        )
        if settings.mode is Mode.DOCKER and settings.command.django and not settings.targets:
            # The container starts while the tunnel may still be connecting; the gate holds its connections.
            self.main = self.start(command_argv(settings), self._title, in_image=True)

    async def lock(self, session: database.Session, opened: tunnel.Tunnel) -> None:
        from bastion_action import database  # noqa: PLC0415 - see the module docstring

        settings = self.settings
        if not settings.lock:
            return
        with self.clock.stage_of(Stage.LOCK):
            waited = await _while_tunnel_up(session.lock(settings.lock_timeout, self.say), opened)
        self.run.lock_wait = waited
        key1, key2 = database.lock_keys(settings.db.name)
        self.say(f"lock: pg_advisory_lock({key1}, {key2}) held after {waited:.2f} s")

    async def finish(self, started: _Started, opened: tunnel.Tunnel, *, main: bool = True) -> tuple[int, list[str]]:
        """Show a started command's output and wait for it, watching the tunnel."""
        assert started.task is not None  # noqa: S101 - start() sets it
        if not started.hold:
            started.go_live()
        try:
            code = await _while_tunnel_up(started.task, opened)
        finally:
            started.end()
            if main:  # the summary shows the tail of the user's command, not of follow-ups
                self.run.output_tail = [self.console.redact(line) for line in list(started.output)[-TAIL_LINES:]]
        return code, list(started.output)

    async def execute(
        self, opened: tunnel.Tunnel, argv: list[str], title: str, *, in_image: bool
    ) -> tuple[int, list[str]]:
        """A follow-up command (the gate is open): run it to the end."""
        return await self.finish(self.start(argv, title, in_image=in_image), opened, main=False)

    async def command(self, opened: tunnel.Tunnel, session: database.Session, gate: tunnel.Gate) -> None:
        settings, run = self.settings, self.run
        # A read-only command cannot apply anything: no "before" state is needed, and its gate may be open already.
        before = None if settings.command.read_only else await session.snapshot()
        if self.main is None:
            self.main = self.start(command_argv(settings), self._title, in_image=settings.mode is Mode.DOCKER)
        # From here on the command reaches the database: the lock is held, the "before" state is known.
        gate.open(opened, settings.db.host, settings.db.port)
        with self.clock.stage_of(Stage.COMMAND):
            run.exit_code, output = await self.finish(self.main, opened)
            if settings.mode is Mode.COMPARE and run.exit_code == 0:
                await self.compare(opened, output)
        if settings.command.django:
            await self.results(opened, session, before, output)
        argv = command_argv(settings)
        if run.exit_code != 0:
            failing = f" while applying {run.failed_migration}" if run.failed_migration else ""
            raise CommandError(
                f"`{' '.join(argv)}` exited with code {run.exit_code}{failing}",
                hint="The command's last lines of output are in the step summary.",
                exit_code=run.exit_code,
            )
        if settings.command is Command.CHECK and run.pending:
            run.exit_code = 1
            shown_pending = ", ".join(run.pending[:20]) + (" ..." if len(run.pending) > 20 else "")  # noqa: PLR2004
            raise PendingMigrationsError(
                f"{len(run.pending)} migration(s) not applied: {shown_pending}",
                hint="Run this action with command: migrate (after review) to apply them.",
                exit_code=1,
            )

    async def compare(self, opened: tunnel.Tunnel, on_runner: list[str]) -> None:
        """The runner's view against the image's: the drift the lightweight recipe cannot see."""
        argv = command_argv(self.settings)
        shown = f"in the image: python {' '.join(argv)}"
        code, in_image = await self.execute(opened, argv, shown, in_image=True)
        if code != 0:
            self.run.exit_code = code
            return
        runner_view = migrations.parse_showmigrations("\n".join(on_runner))
        image_view = migrations.parse_showmigrations("\n".join(in_image))
        self.run.drift = migrations.differences(runner_view, image_view)
        if self.run.drift:
            raise CommandError(
                f"the runner and the image disagree on {len(self.run.drift)} migration(s): "
                + "; ".join(self.run.drift[:10]),
                hint="The runner's checkout and the image were not built from the same code: "
                "rebuild the image, or check out the commit it was built from.",
                anchor="drift",
            )

    async def results(
        self,
        opened: tunnel.Tunnel,
        session: database.Session,
        before: list[tuple[str, str]] | None,
        output: list[str],
    ) -> None:
        """Structured results: what the database recorded, what Django printed."""
        settings, run = self.settings, self.run
        text = "\n".join(output)
        after = await session.snapshot()
        run.applied = [] if before is None else migrations.applied_since(before, after)
        command = settings.command
        if command is Command.SHOWMIGRATIONS:
            apps = migrations.parse_showmigrations(text)
            if not apps:  # --plan given in args
                apps = migrations.group_by_app(migrations.parse_showmigrations_plan(text))
        elif command in {Command.PLAN, Command.CHECK}:
            apps = migrations.state_from_database(after, migrations.parse_migrate_plan(text))
        else:
            run.failed_migration = migrations.parse_migrate(text).failed
            planned: list[migrations.Migration] = []
            if run.exit_code != 0 or settings.args:
                # A failed or targeted migrate can leave migrations behind; ask Django which.
                argv = [settings.app.manage_py, "migrate", "--plan"]
                in_image = settings.mode is Mode.DOCKER
                code, plan_output = await self.execute(opened, argv, "what is left: migrate --plan", in_image=in_image)
                if code == 0:
                    planned = migrations.parse_migrate_plan("\n".join(plan_output))
            apps = migrations.state_from_database(after, planned)
        run.migrations = apps
        run.pending = migrations.pending(item for items in apps.values() for item in items)

    async def stages(self) -> None:
        settings = self.settings
        async with contextlib.AsyncExitStack() as stack:
            with self.clock.stage_of(Stage.SETTINGS):
                sock = loopback.bind_loopback(settings.db.local_port)
                stack.callback(sock.close)
                self.port = int(sock.getsockname()[1])
                self.check_runner()
            pulling: asyncio.Future[None] | None = None
            try:
                if settings.mode.on_runner and settings.command.django:
                    # Django starts (interpreter, imports, settings) while the tunnel comes up.
                    self.main = self.start(command_argv(settings), self._title, in_image=False)
                if settings.mode.in_image and settings.command is not Command.PROBE:
                    from bastion_action.runners import docker  # noqa: PLC0415 - loaded only for docker mode

                    self.runner = await stack.enter_async_context(docker.connect())
                    # A present image's container starts now (the registry waits for `validated`);
                    # the recipe logs in, pulls, then tunnels: here the pull overlaps tunnel + probe.
                    pulling = asyncio.ensure_future(self.pull())
                with self.clock.stage_of(Stage.SETTINGS):
                    # asyncssh's import (~80 ms of CPU) in a thread, so the loop drives the pull meanwhile.
                    await asyncio.to_thread(importlib.import_module, "bastion_action.tunnel")
                    credentials = self.credentials()
                self.validated.set()
                from bastion_action import tunnel  # noqa: PLC0415 - see the module docstring

                gate = await stack.enter_async_context(tunnel.gate(sock))
                # asyncpg's import (~50 ms of CPU) runs in a thread while the SSH handshake waits on the network.
                preload = asyncio.ensure_future(asyncio.to_thread(importlib.import_module, "bastion_action.database"))
                stack.push_async_callback(asyncio.wait, [preload])
                (opened, session), _ = await _concurrently(
                    self.connect(stack, credentials, gate), pulling or asyncio.sleep(0)
                )
                await self.locked_command(opened, session, gate)
            finally:
                if pulling is not None and not pulling.done():
                    pulling.cancel()
                    await asyncio.gather(pulling, return_exceptions=True)
                if self.main is not None:
                    await self.main.stop()
        self.run.result = Result.SUCCESS

    async def locked_command(self, opened: tunnel.Tunnel, session: database.Session, gate: tunnel.Gate) -> None:
        """The lock (when taken), the command under it, and the lock's release."""
        if self.settings.command is Command.PROBE:
            return
        await self.lock(session, opened)
        try:
            await self.command(opened, session, gate)
        finally:
            await session.unlock()

    async def target_stages(self, credentials: tunnel.Credentials) -> None:
        """Fan-out: one database's stages over the shared SSH connection (self.chain)."""
        from bastion_action import tunnel  # noqa: PLC0415 - loaded by the fan-out already

        async with contextlib.AsyncExitStack() as stack:
            sock = loopback.bind_loopback(0)
            stack.callback(sock.close)
            self.port = int(sock.getsockname()[1])
            try:
                gate = await stack.enter_async_context(tunnel.gate(sock))
                opened, session = await self.connect(stack, credentials, gate)
                await self.locked_command(opened, session, gate)
            finally:
                if self.main is not None:
                    await self.main.stop()
        self.run.result = Result.SUCCESS


def _record(run: RunResult, clock: _Clock, settings: Settings, exc: BaseException) -> None:
    """An expected failure (or a timeout) into the run's result."""
    if isinstance(exc, ActionError):
        run.error = exc
        if isinstance(exc, PendingMigrationsError):
            run.result = Result.PENDING
        return
    error_type = _TIMEOUT_ERRORS[clock.stage]
    run.error = error_type(
        f"timed out: the whole run is limited to {settings.timeout:g} s (timeout) and the "
        f"{clock.stage.value} stage was still running",
        hint="Raise the 'timeout' input if the work is expected to take longer.",
        anchor="timeout",
    )


async def _fan_out(settings: Settings, console: Console, run: RunResult, clock: _Clock) -> None:
    """Several databases behind one bastion: one SSH connection, one pull, bounded concurrency."""
    shared = _Run(settings, console, run, clock)
    async with contextlib.AsyncExitStack() as stack:
        with clock.stage_of(Stage.SETTINGS):
            shared.check_runner()
            await asyncio.to_thread(importlib.import_module, "bastion_action.tunnel")
            credentials = shared.credentials()
        shared.validated.set()
        from bastion_action import tunnel  # noqa: PLC0415 - see the module docstring

        if settings.mode.in_image and settings.command is not Command.PROBE:
            from bastion_action.runners import docker  # noqa: PLC0415 - loaded only for docker mode

            shared.runner = await stack.enter_async_context(docker.connect())
        with clock.stage_of(Stage.TUNNEL):
            connecting = stack.enter_async_context(tunnel.connect(settings.ssh, credentials))
            chain, _ = await _concurrently(connecting, shared.pull())
        hops = "".join(f"{hop} -> " for hop in settings.ssh.jump_hosts)
        console.line(
            f"tunnel: one SSH connection via {hops}{settings.ssh.user}@{settings.ssh.host}:{settings.ssh.port} "
            f"for {len(settings.targets)} databases, {settings.concurrency} at a time"
        )
        limit = asyncio.Semaphore(settings.concurrency)

        async def one(target: DatabaseSettings) -> RunResult:
            result = RunResult(
                environment=settings.environment,
                mode=settings.mode.value,
                command=settings.command.value,
                database=target.name,
            )
            own_clock = _Clock(result)
            started = time.perf_counter()
            async with limit:
                worker = _Run(dataclasses.replace(settings, db=target), console, result, own_clock)
                worker.chain, worker.runner, worker.image = chain, shared.runner, shared.image
                worker.python, worker.label = shared.python, target.name
                worker.validated.set()
                try:
                    await worker.target_stages(credentials)
                except ActionError as exc:
                    _record(result, own_clock, settings, exc)
            result.duration = time.perf_counter() - started
            if result.error is not None and result.result is not Result.PENDING:
                result.result = Result.FAILURE
            return result

        run.targets = list(await asyncio.gather(*(one(target) for target in settings.targets)))
    results = {target.result for target in run.targets}
    run.result = (
        Result.FAILURE if Result.FAILURE in results else Result.PENDING if Result.PENDING in results else Result.SUCCESS
    )
    failed = [target for target in run.targets if target.result is not Result.SUCCESS]
    if failed:
        names = ", ".join(f"{target.database} ({target.result.value})" for target in failed)
        error_type = PendingMigrationsError if run.result is Result.PENDING else CommandError
        raise error_type(
            f"{len(failed)} of {len(run.targets)} databases did not succeed: {names}",
            hint="Each database's own failure and hint are in the step summary.",
            exit_code=1,
        )


async def execute(settings: Settings, console: Console) -> RunResult:
    """Run every stage; always returns what the run got to (never raises for expected failures)."""
    run = RunResult(environment=settings.environment, mode=settings.mode.value, command=settings.command.value)
    clock = _Clock(run)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.timeout):
            if settings.targets:
                await _fan_out(settings, console, run, clock)
            else:
                await _Run(settings, console, run, clock).stages()
    except (ActionError, TimeoutError) as exc:
        _record(run, clock, settings, exc)
    except asyncio.CancelledError:
        run.cancelled = True
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    finally:
        local.end_descendants()  # whatever a command left behind, even in a session of its own
        run.duration = time.perf_counter() - started
    if (run.error is not None and run.result is not Result.PENDING) or run.cancelled:
        run.result = Result.FAILURE
    return run
