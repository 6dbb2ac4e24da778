"""Fan-out on the runner: resident Django interpreters, each serving read-only commands for database after database.

A fan-out's cost per database was one Django start-up (interpreter, imports, settings, app
registry): on 2 cores, more than the command itself. Here up to ``limit`` processes start at
once (``concurrency``, but no more than the CPUs the runner gives this process: a start-up is
CPU work, and more of them at once than cores finish no sooner, while a process serves a
database in milliseconds); each serves one database's command, then the next's, through
``manage.py shell -c DRIVER``. A database whose command finds every process busy waits for the
first one free; if none frees within ``PATIENCE_SECONDS`` (they serve slow databases: a lock
held, a far server), another process starts for it, up to ``most`` (``concurrency``) alive.

- a request (one JSON line: the command line, the database's URL and what its sessions are
  called) arrives on a pipe of its own, never on the command's stdin;
- the driver closes Django's connections, points ``DATABASES["default"]`` at the request's URL
  and sets the URL's environment variable (and ``PGAPPNAME``, when the action names the
  sessions), then runs the command line as ``manage.py`` would
  (``execute_from_command_line``; ``SystemExit`` is its exit code);
- the command's output (stdout and stderr, merged) goes to that database's output; a line
  ``<marker> end <exit code> <fit>`` (a fresh, unguessable marker) ends it.

The first database is served by the project's own settings: the process starts with its URL.
The driver then checks that those settings are the URL's parts (``NAME``, ``USER``,
``PASSWORD``, ``HOST``, ``PORT``, and the query in ``OPTIONS``, as dj-database-url maps them);
if not (``fit`` 0), it serves no other database and the next ones get processes of their own.

Served: ``showmigrations`` and ``migrate --plan`` (commands ``showmigrations``, ``plan``,
``check``, ``lint``), which only read. Anything else (``migrate``, ``rollback``, the shell
steps of lint and show-sql, a custom command, ``--settings`` among the args) runs as before:
a process of its own. A request that is cancelled, or a process that ends while serving, takes
that process out of service (its process group is ended as ``local.run`` ends any command).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import json
import os
import secrets
from collections.abc import Sequence
from typing import Any

from bastion_action import aio
from bastion_action.runners import APPLICATION_NAME_ENV, Output, command_env
from bastion_action.runners.local import LocalRunner, run

REQUESTS_FD = "BASTION_MIGRATE_RESIDENT_FD"
MARKER = "BASTION_MIGRATE_RESIDENT_MARKER"
URL_ENV = "BASTION_MIGRATE_RESIDENT_URL_ENV"

# Runs inside the project's Python (Django 3.2+, Python 3.8+), as ``manage.py shell -c``: all of it inside one
# function, since some versions ``exec`` the script without globals (its top-level names are then invisible to
# its functions); the one top-level name starts with ``_bm`` so it collides with nothing a project defines.
DRIVER = """\
def _bm_serve():
    import json, os, sys, traceback
    from urllib.parse import parse_qsl, unquote, urlsplit

    from django.conf import settings
    from django.core.management import execute_from_command_line
    from django.db import connections

    def parts(url):
        split = urlsplit(url)
        fields = {
            "NAME": unquote(split.path[1:] if split.path.startswith("/") else split.path),
            "USER": unquote(split.username or ""),
            "PASSWORD": unquote(split.password or ""),
            "HOST": split.hostname or "",
            "PORT": str(split.port or ""),
        }
        return fields, dict(parse_qsl(split.query))

    def built_from(default, url):
        fields, query = parts(url)
        for name in fields:
            if str(default.get(name) or "") != fields[name]:
                return False
        options = default.get("OPTIONS") or {}
        for name in query:
            if str(options.get(name, "")) != query[name]:
                return False
        return True

    marker = os.environ.pop("BASTION_MIGRATE_RESIDENT_MARKER")
    url_env = os.environ.pop("BASTION_MIGRATE_RESIDENT_URL_ENV")
    requests = os.fdopen(int(os.environ.pop("BASTION_MIGRATE_RESIDENT_FD")), "r")
    default = settings.DATABASES["default"]
    fit = built_from(default, os.environ.get(url_env, ""))
    first = True
    for line in requests:
        request = json.loads(line)
        url = request["url"]
        connections.close_all()
        if not first:
            fields, query = parts(url)
            _, was = parts(os.environ.get(url_env, ""))
            options = dict(default.get("OPTIONS") or {})
            for name in was:
                options.pop(name, None)
            options.update(query)
            default.update(fields)
            default["OPTIONS"] = options
        first = False
        os.environ[url_env] = url
        if request.get("app"):
            os.environ["PGAPPNAME"] = request["app"]
        code = 0
        try:
            execute_from_command_line(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if exc.code is not None and not isinstance(exc.code, int):
                sys.stderr.write("%s\\n" % (exc.code,))
        except BaseException:
            traceback.print_exc()
            code = 1
        connections.close_all()
        sys.stderr.flush()
        sys.stdout.write("\\n%s end %d %d\\n" % (marker, code, 1 if fit else 0))
        sys.stdout.flush()
        if not fit:
            break


_bm_serve()
"""

_SERVED = frozenset({"showmigrations"})
_SETTINGS_ARGS = ("--settings", "--pythonpath")  # these change what the process loaded: a process of their own


def servable(manage_py: str, argv: Sequence[str]) -> bool:
    """Whether a resident process may serve ``argv``: a read-only Django command on the run's own settings."""
    if len(argv) < 2 or argv[0] != manage_py:  # noqa: PLR2004 - manage.py and its command
        return False
    if any(arg.startswith(_SETTINGS_ARGS) for arg in argv):
        return False
    return argv[1] in _SERVED or (argv[1] == "migrate" and "--plan" in argv[2:])


def _overlap(text: str, end: str) -> int:
    """How many of ``text``'s last characters could begin ``end``: held back until more arrives."""
    for length in range(min(len(end) - 1, len(text)), 0, -1):
        if text.endswith(end[:length]):
            return length
    return 0


class Demultiplexer:
    """The resident process's output, cut at each ``<marker> end <code> <fit>`` line into one database's output."""

    def __init__(self, marker: str) -> None:
        self._end = f"\n{marker} end "
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""  # not yet passed on: maybe the start of an end line
        self.output: Output | None = None  # the database being served
        self.answers: asyncio.Queue[tuple[int, bool]] = asyncio.Queue()

    def serving(self, output: Output | None) -> None:
        """Whose output comes next (``None``: no one's yet; what comes is kept for the next one)."""
        self.output = output
        self._drain()

    def feed(self, chunk: bytes | str) -> None:
        self._text += chunk if isinstance(chunk, str) else self._decoder.decode(chunk)
        self._drain()

    def _drain(self) -> None:
        while self.output is not None:
            found = self._text.find(self._end)
            if found < 0:
                self._pass_on(len(self._text) - _overlap(self._text, self._end))
                return
            line_end = self._text.find("\n", found + len(self._end))
            self._pass_on(found)
            if line_end < 0:
                return
            code, _, fit = self._text[len(self._end) : line_end - found].partition(" ")
            self._text = self._text[line_end - found + 1 :]
            self.output = None  # what follows is the next request's
            try:
                self.answers.put_nowait((int(code), fit == "1"))
            except ValueError:
                self.answers.put_nowait((1, False))

    def _pass_on(self, length: int) -> None:
        if length and self.output is not None:
            self.output.feed(self._text[:length])
            self._text = self._text[length:]

    def flush(self) -> None:
        """The process has ended: whatever it printed last belongs to the database being served."""
        self._text += self._decoder.decode(b"", final=True)
        self._pass_on(len(self._text))

    def note(self, line: str) -> None:
        if self.output is not None:
            self.output.note(line)


@dataclasses.dataclass(eq=False)  # each one is itself: kept in a set
class _Resident:
    """One resident process: its task (``local.run`` of the driver), its request pipe, its output's cutter."""

    task: asyncio.Future[int]
    requests: int  # the write end of the request pipe
    output: Demultiplexer
    fit: bool = True
    names: bool = False  # PGAPPNAME is the action's: each request names its database's sessions

    async def serve(self, argv: Sequence[str], database_url: str, output: Output, application_name: str = "") -> int:
        self.output.serving(output)
        named = application_name if self.names else ""
        request = json.dumps({"argv": list(argv), "url": database_url, "app": named}) + "\n"
        try:
            os.write(self.requests, request.encode())
        except OSError:  # the process has ended: its exit code is the answer
            return await self._ended()
        answer = asyncio.ensure_future(self.output.answers.get())
        try:
            waiting: set[asyncio.Future[Any]] = {answer, self.task}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                return await self._ended()
            code, self.fit = answer.result()
            return code
        finally:
            await aio.stop(answer)
            self.output.serving(None)

    async def _ended(self) -> int:
        self.fit = False
        code = await asyncio.shield(self.task)
        self.output.flush()
        return code or 1  # ended without answering: never a success

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.requests)
        await aio.stop(self.task)


def cpus() -> int:
    """The CPUs this process may run on (its affinity, as a container's or a runner's limit sets it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API on this platform
        return max(1, os.cpu_count() or 1)


# How long a database waits for a busy process before another starts for it (a Django start-up is
# well under this on a runner; a database that keeps its process longer is a slow one).
PATIENCE_SECONDS = 2.0


class ResidentRunner:
    """A ``LocalRunner`` whose read-only Django commands are served by resident processes (see the module)."""

    def __init__(self, local: LocalRunner, limit: int = 1, most: int = 1, patience: float = PATIENCE_SECONDS) -> None:
        self.local = local
        self.limit = max(1, limit)  # processes started without waiting
        self.most = max(self.limit, most)  # processes alive at once at most
        self.patience = patience
        self._idle: list[_Resident] = []
        self._all: set[_Resident] = set()
        self._freed = asyncio.Event()  # a process went back to idle, or ended
        self.started = 0  # processes started, for the debug log
        self.served = 0  # commands they served

    @property
    def where(self) -> str:
        return self.local.where

    def interpreter(self) -> str:
        return self.local.interpreter()

    async def ready(self) -> None:
        await self.local.ready()

    async def run(self, argv: Sequence[str], *, database_url: str, output: Output, application_name: str = "") -> int:
        if not servable(self.local.settings.app.manage_py, argv):
            return await self.local.run(
                argv, database_url=database_url, output=output, application_name=application_name
            )
        resident = await self._resident(database_url, application_name)
        try:
            code = await resident.serve(argv, database_url, output, application_name)
        except BaseException:
            await self._retire(resident)
            raise
        self.served += 1
        if resident.fit and not resident.task.done():
            self._idle.append(resident)
            self._freed.set()
        else:
            await self._retire(resident)
        return code

    async def _resident(self, database_url: str, application_name: str) -> _Resident:
        """An idle process; else a new one under the limit; else the first to free, or past the patience a new one."""
        waited = False
        while True:
            if self._idle:
                return self._idle.pop()
            if len(self._all) < (self.most if waited else self.limit):
                return self._start(database_url, application_name)
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), self.patience)
            except TimeoutError:
                waited = True

    def _start(self, database_url: str, application_name: str) -> _Resident:
        settings = self.local.settings
        marker = f"bastion-migrate-resident-{secrets.token_hex(12)}"
        read_end, write_end = os.pipe()
        env = command_env(settings.app, database_url, self.local.environ, application_name)
        env.update({REQUESTS_FD: str(read_end), MARKER: marker, URL_ENV: settings.app.database_url_env})
        output = Demultiplexer(marker)
        argv = [self.local.python, settings.app.manage_py, "shell", "-c", DRIVER]

        async def serving() -> int:
            try:
                return await run(argv, cwd=settings.app.working_directory, env=env, output=output, keep_fds=(read_end,))
            finally:
                with contextlib.suppress(OSError):
                    os.close(read_end)

        names = bool(application_name) and env.get(APPLICATION_NAME_ENV) == application_name
        resident = _Resident(asyncio.ensure_future(serving()), write_end, output, names=names)
        self._all.add(resident)
        self.started += 1
        return resident

    async def _retire(self, resident: _Resident) -> None:
        self._all.discard(resident)
        self._freed.set()
        await resident.close()

    async def aclose(self) -> None:
        """End every resident process (each ends when its request pipe closes, or is ended like any command)."""
        residents, self._idle = list(self._all), []
        self._all.clear()
        await asyncio.gather(*(resident.close() for resident in residents))
