"""Lightweight mode: the command as a subprocess on the runner, output streamed live."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from bastion_action import aio
from bastion_action.errors import CommandError, SettingsError
from bastion_action.runners import Output, command_env, with_interpreter
from bastion_action.settings import Command, Settings

# SIGTERM, then this long before SIGKILL: with the rest of the clean-up, a cancelled run must end within 10 s.
TERMINATE_GRACE_SECONDS = 3.0
REAP_SECONDS = 1.0
DRAIN_SECONDS = 0.2
_PR_SET_CHILD_SUBREAPER = 36
# Read at most this much at once: lines are found by the output's consumer, so no line is too long to read,
# and the pipe is emptied as fast as the command fills it.
READ_CHUNK = 64 * 1024


def resolve_python(python: str, working_directory: Path) -> str:
    """The interpreter as an absolute path; an error names the input when it is missing."""
    if os.sep in python:
        path = Path(python)
        if not path.is_absolute():
            path = working_directory / path
        if os.access(path, os.X_OK) and path.is_file():
            return str(path)
    else:
        found = shutil.which(python)
        if found:
            return found
    raise SettingsError(
        f"python: expected an interpreter name on PATH or an absolute path, {python!r} was not found",
        hint="Install Python on the runner, or give the interpreter's path in the 'python' input.",
    )


def check_working_directory(path: Path) -> None:
    if not path.is_dir():
        raise SettingsError(
            f"working-directory: expected an existing directory, {str(path)!r} is not one",
            hint="Check out the repository first (actions/checkout) and give the directory holding manage.py.",
        )


@dataclasses.dataclass(frozen=True)
class LocalRunner:
    """The runner itself: ``python manage.py ...`` in working-directory, with the runner's environment."""

    settings: Settings
    python: str  # resolved to an absolute path; unused by a custom command
    environ: Mapping[str, str]
    where: str = ""

    def interpreter(self) -> str:
        return self.settings.app.python

    async def ready(self) -> None:
        return

    async def run(
        self,
        argv: Sequence[str],
        *,
        database_url: str,
        output: Output,
        application_name: str = "",
    ) -> int:
        env = command_env(self.settings.app, database_url, self.environ, application_name)
        argv = with_interpreter(self.settings, self.python, argv)
        return await run(argv, cwd=self.settings.app.working_directory, env=env, output=output)


def prepare(settings: Settings, environ: Mapping[str, str]) -> LocalRunner:
    """Check the working directory and find the interpreter now: both are settings errors, before any connection."""
    check_working_directory(settings.app.working_directory)
    python = ""
    if settings.command is not Command.CUSTOM:
        python = resolve_python(settings.app.python, settings.app.working_directory)
    return LocalRunner(settings, python, environ)


def _kill_group(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def become_subreaper() -> bool:
    """Make orphaned descendants (a daemon the command started with setsid) children of this process.

    Then they can be found and ended when the command ends: a process group alone
    does not hold a child that started its own session.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses; split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def end_descendants() -> None:
    """SIGKILL every process descended from this one, and reap the ones that were reparented to it."""
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


async def run(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    output: Output,
    keep_fds: Sequence[int] = (),
) -> int:
    """Run ``argv``; its output goes to ``output`` as it arrives, in chunks. Returns the exit code.

    ``keep_fds`` are passed on to the command (a resident process's request pipe); no other is.

    The child gets its own process group; whatever ends this coroutine
    (completion, cancellation, timeout) leaves no process of that group behind,
    and ends within TERMINATE_GRACE_SECONDS and a moment more.
    """
    # The pipe is this function's own, not asyncio's: process.wait() then waits for the exit alone (with a
    # PIPE it also waits for the pipe to close, which a child of the command may hold open long after), and
    # the pipe can be closed while such a child still holds it.
    read_end, write_end = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_end,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            pass_fds=tuple(keep_fds),
        )
    except OSError as exc:
        os.close(read_end)
        raise CommandError(f"cannot start {argv[0]}: {exc.strerror}", hint="Check the 'python' input.") from exc
    finally:
        os.close(write_end)
    stream = asyncio.StreamReader()
    pipe, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(read_end, "rb", buffering=0)
    )
    reader = asyncio.ensure_future(_read(stream, output))
    exited = asyncio.ensure_future(process.wait())
    try:
        await asyncio.wait({reader, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not reader.done():
            # A child the command left running may hold the pipe open for ever; what the command itself
            # wrote is already in the pipe, so a short drain takes all of it.
            await asyncio.wait({reader}, timeout=DRAIN_SECONDS)
        code = await asyncio.shield(exited)  # a cancel here must leave the exit to _end()
        return 128 - code if code < 0 else code  # killed by signal n: 128+n, as a shell reports it
    finally:
        await aio.to_the_end(_end(process, exited))
        await aio.stop(reader, exited)
        pipe.close()


async def _read(stream: asyncio.StreamReader, output: Output) -> None:
    while chunk := await stream.read(READ_CHUNK):
        output.feed(chunk)


async def _end(process: asyncio.subprocess.Process, exited: asyncio.Future[int]) -> None:
    """SIGTERM, a grace period, then SIGKILL: to the group and to the command's children in other sessions.

    Once the command has exited, only its group is swept: a session of its own left
    behind by then is no longer known as the command's, and end_descendants() ends it
    when the whole run ends (other commands of a fan-out may still be running now).
    """
    others: list[int] = []
    try:
        if not exited.done():
            # By pidfd: a signal sent seconds later cannot reach another process that took the same pid.
            others = _pidfds([pid for pid in _descendants(process.pid) if _group(pid) != process.pid])
            _kill_group(process, signal.SIGTERM)
            _signal_all(others, signal.SIGTERM)
            await asyncio.wait({exited}, timeout=TERMINATE_GRACE_SECONDS)
        _kill_group(process, signal.SIGKILL)
        _signal_all(others, signal.SIGKILL)
        if not exited.done():  # SIGKILL cannot be ignored: this is the reaping, not a second grace
            await asyncio.wait({exited}, timeout=REAP_SECONDS)
    finally:
        for pidfd in others:
            os.close(pidfd)


def _group(pid: int) -> int | None:
    """The process group of ``pid``: its members get each signal once, from killpg, not twice."""
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _pidfds(pids: list[int]) -> list[int]:
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            found.append(os.pidfd_open(pid))
    return found


def _signal_all(pidfds: list[int], sig: int) -> None:
    for pidfd in pidfds:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, sig)
