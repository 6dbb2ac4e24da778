"""The run, in one direction: settings -> (SSH connection | pull) -> each database (target.py) -> result.

What every database shares is built here once: the gates' sockets (bound first), the
runner, the pull, the SSH connection. A run on one database is a fan-out of one.
asyncssh and asyncpg are imported in threads, after the command has started: their
imports cost more than the SSH handshake they overlap.

One ``AsyncExitStack`` owns every resource; failure, timeout and cancellation
all unwind it (the commands ended, containers removed, connections closed)
before the result is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from bastion_action import aio, loopback
from bastion_action.clock import Clock
from bastion_action.errors import (
    ActionError,
    CommandError,
    InternalError,
    LockError,
    PendingMigrationsError,
    ProbeError,
    PullError,
    SettingsError,
    Stage,
    TunnelError,
)
from bastion_action.gha import Console
from bastion_action.report import Result, RunResult
from bastion_action.runners import Runner, local, resident
from bastion_action.settings import Command, Settings
from bastion_action.target import Shared, Target, run_database

if TYPE_CHECKING:
    from bastion_action import tunnel
    from bastion_action.runners import docker

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


def record(run: RunResult, clock: Clock, settings: Settings, exc: BaseException) -> None:
    """An expected failure (or the run's timeout) into a result."""
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


async def _unless_failed(work: Awaitable[_T], watched: asyncio.Future[_U] | None) -> _T:
    """The work's result; if ``watched`` (the pull) fails first, the work is stopped and that failure raised."""
    running = asyncio.ensure_future(work)
    try:
        if watched is not None:
            both: set[asyncio.Future[Any]] = {running, watched}
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            failure = None if running.done() or watched.cancelled() else watched.exception()
            if failure is not None:
                raise failure
        return await running
    finally:
        await aio.stop(running)


def _credentials(settings: Settings, console: Console) -> tunnel.Credentials:
    from bastion_action import tunnel  # noqa: PLC0415 - imported in a thread just before

    credentials = tunnel.load_credentials(settings.ssh)
    if settings.ssh.insecure_skip_host_key_check:
        console.warning(
            "ssh-insecure-skip-host-key-check is true: the bastion's identity is not verified, so a man in "
            "the middle could read the SSH and database credentials. Set ssh-known-hosts or "
            "ssh-host-fingerprint."
        )
    elif settings.ssh.insecure_skip_ignored:
        console.warning(
            "ssh-insecure-skip-host-key-check is true but ssh-known-hosts / ssh-host-fingerprint are given: "
            "the host key is verified against them. Remove the skip flag."
        )
    if settings.ssh.legacy_algorithms:
        console.warning(
            "ssh-legacy-algorithms is true: SHA-1 signatures (ssh-rsa), key exchange and MACs are accepted, "
            "which OpenSSH 8.8 and newer refuse. Update the bastion's sshd and remove the flag."
        )
    return credentials


async def _pull(
    daemon: docker.DockerRunner, settings: Settings, console: Console, clock: Clock, validated: asyncio.Event
) -> docker.PreparedImage:
    image, run = settings.image, clock.run
    assert image is not None  # noqa: S101 - docker mode has an image
    run.image = str(image.reference)
    progress: list[str] = []
    try:
        with clock.stage_of(Stage.PULL):
            prepared = await daemon.prepare(image, progress.append, validated.wait)
    finally:
        # The pull overlaps the tunnel's log lines; its compact progress is shown as one group.
        if progress:
            with console.group(f"pull {image.reference}"):
                for line in progress:
                    console.line(line)
    run.image_digest = prepared.digest
    console.line(
        f"image: {image.reference} ({prepared.digest or prepared.image_id}), "
        f"{'pulled' if prepared.pulled else 'already present'} in {clock.seconds(Stage.PULL):.2f} s"
    )
    return prepared


class _Run:
    """Builds what the databases share, then runs each (at most ``concurrency`` at once)."""

    def __init__(
        self,
        settings: Settings,
        console: Console,
        run: RunResult,
        clock: Clock,
        runner: Runner | None,
        *,
        deadline: float | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.console = console
        self.run = run
        self.clock = clock
        self.validated = asyncio.Event()  # settings fully checked: the registry may be contacted
        self.chain: asyncio.Future[tunnel.Chain] = asyncio.get_running_loop().create_future()
        self.deadline = deadline  # when the run's timeout ends it (the event loop's clock)

    def targets(self, stack: contextlib.AsyncExitStack) -> list[Target]:
        """Each database's gate socket, bound now (a busy local-port fails in the settings stage)."""
        settings, run = self.settings, self.run
        targets = []
        for db in settings.targets or (settings.db,):
            sock = loopback.bind_loopback(db.local_port)
            stack.callback(sock.close)
            if not settings.targets:  # one database: its results are the run's
                targets.append(Target(db, sock, run, self.clock))
                continue
            result = RunResult(run.environment, run.mode, run.command, database=db.key)
            report = _labelled(self.console, db.key)
            targets.append(Target(db, sock, result, Clock(result, report, self.clock.origin), label=db.key))
        return targets

    async def runners(
        self, stack: contextlib.AsyncExitStack
    ) -> tuple[Runner | None, Runner | None, asyncio.Future[docker.PreparedImage] | None]:
        """Where the command runs (and, in compare mode, the second view), and the pull when there is one."""
        settings = self.settings
        if settings.command is Command.PROBE:
            return None, None, None
        if self.runner is not None:
            return self.runner, None, None
        with self.clock.stage_of(Stage.SETTINGS):
            on_runner = local.prepare(settings, os.environ) if settings.mode.on_runner else None
        if not settings.mode.in_image:
            if on_runner is not None and settings.targets and settings.command.read_only:
                # One Django start-up per database was a fan-out's main cost: resident processes serve many.
                limit = min(settings.concurrency, resident.cpus())
                served = resident.ResidentRunner(on_runner, limit=limit, most=settings.concurrency)
                stack.push_async_callback(self._close_residents, served)
                return served, None, None
            return on_runner, None, None
        with self.clock.stage_of(Stage.PULL):  # the Docker client's import and the daemon's answer
            from bastion_action.runners import docker  # noqa: PLC0415 - loaded only for docker mode

            daemon = await stack.enter_async_context(docker.connect())
        # A present image's container starts at once (the registry waits for `validated`); the recipe
        # logs in, pulls, then tunnels: here the pull overlaps the tunnel and the probe.
        pulling = asyncio.ensure_future(_pull(daemon, settings, self.console, self.clock, self.validated))
        stack.push_async_callback(aio.stop, pulling)
        in_image = docker.ImageRunner(daemon, pulling, settings, where="in the image" if on_runner else "")
        if on_runner is None:
            return in_image, None, pulling
        return on_runner, in_image, pulling

    async def _close_residents(self, served: resident.ResidentRunner) -> None:
        self.console.debug(
            f"resident processes: {served.started} started, {served.served} command(s) served, "
            f"at most {served.limit} at once ({served.most} for databases that waited {served.patience:g} s; "
            f"concurrency {self.settings.concurrency}, {resident.cpus()} CPUs)"
        )
        await served.aclose()

    async def one(self, shared: Shared, target: Target, limit: asyncio.Semaphore) -> None:
        started = time.perf_counter()
        async with limit:
            try:
                await run_database(shared, target)
            except ActionError as exc:
                record(target.result, target.clock, self.settings, exc)
        if target.label:
            target.result.duration = time.perf_counter() - started
            if target.result.error is not None and target.result.result is not Result.PENDING:
                target.result.result = Result.FAILURE

    async def connect(self, stack: contextlib.AsyncExitStack, workers: Sequence[asyncio.Future[None]]) -> None:
        """Validate the rest of the settings, connect to the bastion, and wait for every database."""
        settings = self.settings
        with self.clock.stage_of(Stage.SETTINGS):
            # asyncssh's import (~80 ms of CPU) in a thread, so the loop drives the command and the pull meanwhile.
            await asyncio.to_thread(importlib.import_module, "bastion_action.tunnel")
            credentials = _credentials(settings, self.console)
        self.validated.set()
        from bastion_action import tunnel  # noqa: PLC0415 - imported just above

        # asyncpg's import (~50 ms of CPU) runs in a thread while the SSH handshake waits on the network.
        preload = asyncio.ensure_future(asyncio.to_thread(importlib.import_module, "bastion_action.database"))
        stack.push_async_callback(asyncio.wait, [preload])
        with self.clock.stage_of(Stage.TUNNEL):
            chain = await stack.enter_async_context(tunnel.connect(settings.ssh, credentials))
        for connection in (*chain.hops, chain.connection):
            self.console.debug(f"tunnel: {connection.get_extra_info('host')}: {tunnel.negotiated(connection)}")
        await preload
        if settings.targets:
            ssh = settings.ssh
            hops = "".join(f"{hop} -> " for hop in ssh.jump_hosts)
            self.console.line(
                f"tunnel: one SSH connection via {hops}{ssh.user}@{ssh.host}:{ssh.port} "
                f"for {len(settings.targets)} databases, {settings.concurrency} at a time"
            )
        self.chain.set_result(chain)
        try:
            await asyncio.gather(*workers)
        finally:  # the databases' work ends before the connection it runs over closes
            await aio.stop(*workers)

    async def __call__(self) -> None:
        settings = self.settings
        async with contextlib.AsyncExitStack() as stack:
            with self.clock.stage_of(Stage.SETTINGS):
                targets = self.targets(stack)
            runner, second, pulling = await self.runners(stack)
            shared = Shared(settings, self.console, runner, self.chain, second, deadline=self.deadline)
            limit = asyncio.Semaphore(settings.concurrency)
            # Each database's command starts now, while the SSH connection comes up.
            workers = [asyncio.ensure_future(self.one(shared, target, limit)) for target in targets]
            try:
                await _unless_failed(self.connect(stack, workers), pulling)
            finally:
                await aio.stop(*workers)
        if settings.targets:
            self.run.targets = [target.result for target in targets]
            _fan_in(self.run)


def _labelled(console: Console, label: str) -> Callable[[str], None]:
    return lambda text: console.debug(f"[{label}] {text}")


def _fan_in(run: RunResult) -> None:
    """Fan-out: the run's result from its databases'; failures named together."""
    targets = run.targets or []
    results = {target.result for target in targets}
    run.result = (
        Result.FAILURE if Result.FAILURE in results else Result.PENDING if Result.PENDING in results else Result.SUCCESS
    )
    failed = [target for target in targets if target.result is not Result.SUCCESS]
    if failed:
        names = ", ".join(f"{target.database} ({target.result.value})" for target in failed)
        error_type = PendingMigrationsError if run.result is Result.PENDING else CommandError
        raise error_type(
            f"{len(failed)} of {len(targets)} databases did not succeed: {names}",
            hint="Each database's own failure and hint are in the step summary.",
            exit_code=1,
        )


async def execute(settings: Settings, console: Console, *, runner: Runner | None = None) -> RunResult:
    """Run every stage; always returns what the run got to (never raises for expected failures).

    ``runner`` replaces the one ``settings.mode`` names (tests run the whole pipeline with their own).
    """
    run = RunResult(environment=settings.environment, mode=settings.mode.value, command=settings.command.value)
    clock = Clock(run, console.debug)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.timeout) as limit:
            await _Run(settings, console, run, clock, runner, deadline=limit.when())()
    except (ActionError, TimeoutError) as exc:
        record(run, clock, settings, exc)
    except Exception as exc:  # noqa: BLE001 - a bug still ends in one annotation, outputs and a summary
        run.error = InternalError.of(exc, clock.stage)
        with console.group("internal error: the details a bug report needs"):
            for line in "".join(traceback.format_exception(exc)).splitlines():
                console.line(line)
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
