"""Resident Django processes for a fan-out: the driver's protocol, against a stand-in Django in real subprocesses."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from factories import make_settings
from unit.test_runners import Collected

from bastion_action.runners import local, resident

URL = "postgresql://migrator:p%40ss@127.0.0.1:{port}/{name}?sslmode=require"

# Just enough of Django for the driver: settings parsed from DATABASE_URL as dj-database-url does (or not),
# closable connections, and a command line that prints which database it was pointed at.
FAKE = {
    "django/__init__.py": "",
    "django/conf.py": """
import os
from urllib.parse import parse_qsl, unquote, urlsplit
parts = urlsplit(os.environ["DATABASE_URL"])
class _Settings:
    DATABASES = {"default": {
        "NAME": parts.path[1:] + os.environ.get("FAKE_SUFFIX", ""), "USER": unquote(parts.username),
        "PASSWORD": unquote(parts.password), "HOST": parts.hostname, "PORT": parts.port,
        "OPTIONS": dict(parse_qsl(parts.query), connect_timeout=5),
    }}
settings = _Settings()
""",
    "django/db.py": "class _C:\n    def close_all(self):\n        pass\nconnections = _C()\n",
    "django/core/__init__.py": "",
    "django/core/management.py": """
import os, sys
from django.conf import settings
def execute_from_command_line(argv):
    d = settings.DATABASES["default"]
    print(argv[1], d["NAME"], d["PORT"], d["PASSWORD"], sorted(d["OPTIONS"].items()), os.getpid(), sep="|", flush=True)
    sys.stderr.write("to stderr " + d["NAME"] + "\\n")
    if d["NAME"] == "fails":
        sys.exit(3)
    if d["NAME"] == "raises":
        raise RuntimeError("boom")
    if d["NAME"] == "dies":
        os._exit(7)
    if d["NAME"] == "unfinished":
        sys.stdout.write("no newline")
""",
    "manage.py": """
import sys
if sys.argv[1:3] == ["shell", "-c"]:
    exec(sys.argv[3], {"__name__": "__main__"}, {})  # separate locals, as some Django versions' shell -c
else:
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)
""",
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name, text in FAKE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def runner(project: Path, environ: dict[str, str] | None = None) -> resident.ResidentRunner:
    settings = make_settings(project, python=sys.executable, working_directory=str(project))
    return resident.ResidentRunner(local.prepare(settings, {"PATH": "/usr/bin:/bin", **(environ or {})}))


async def served(
    served_by: resident.ResidentRunner, name: str, argv: list[str] | None = None, application_name: str = ""
) -> tuple[int, list[str]]:
    output = Collected()
    code = await served_by.run(
        argv or ["manage.py", "showmigrations"],
        database_url=URL.format(port=40000 + len(name), name=name),
        output=output,
        application_name=application_name,
    )
    return code, output.close()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["manage.py", "showmigrations"], True, id="showmigrations"),
        pytest.param(["manage.py", "showmigrations", "-v", "2", "catalog"], True, id="showmigrations-args"),
        pytest.param(["manage.py", "migrate", "--plan"], True, id="plan"),
        pytest.param(["manage.py", "migrate", "--noinput"], False, id="migrate"),
        pytest.param(["manage.py", "shell", "-c", "print(1)"], False, id="shell-step"),
        pytest.param(["manage.py", "showmigrations", "--settings=other"], False, id="own-settings"),
        pytest.param(["other.py", "showmigrations"], False, id="other-manage-py"),
        pytest.param(["alembic", "upgrade", "head"], False, id="custom"),
    ],
)
def test_servable(argv: list[str], expected: bool) -> None:
    assert resident.servable("manage.py", argv) is expected


async def test_one_process_serves_database_after_database(project: Path) -> None:
    served_by = runner(project)
    try:
        results = [await served(served_by, name) for name in ("alpha", "beta", "gamma")]
    finally:
        await served_by.aclose()
    assert [code for code, _ in results] == [0, 0, 0]
    pids = set()
    for (_, lines), name in zip(results, ("alpha", "beta", "gamma"), strict=True):
        printed, stderr = lines
        command, database, port, password, options, pid = printed.split("|")
        assert (command, database, port, password) == ("showmigrations", name, str(40000 + len(name)), "p@ss")
        assert "('connect_timeout', 5)" in options  # the project's own options are kept
        assert "('sslmode', 'require')" in options
        assert stderr == f"to stderr {name}"
        pids.add(pid)
    assert len(pids) == 1
    assert (served_by.started, served_by.served) == (1, 3)


async def test_exit_codes_and_failures_stay_with_their_database(project: Path) -> None:
    served_by = runner(project)
    try:
        fails, raises, unfinished, fine = [
            await served(served_by, name) for name in ("fails", "raises", "unfinished", "ok")
        ]
        dies = await served(served_by, "dies")
        after = await served(served_by, "after")
    finally:
        await served_by.aclose()
    assert fails[0] == 3
    assert raises[0] == 1
    assert any("RuntimeError: boom" in line for line in raises[1])
    assert unfinished[0] == 0
    assert unfinished[1][-1] == "no newline"
    assert fine == (0, fine[1])
    assert not any("bastion-migrate-resident" in line for line in fine[1])
    assert dies[0] == 7  # the process ended without answering: its exit code, never a success
    assert after[0] == 0  # a new process took over
    assert served_by.started == 2


async def test_settings_not_from_the_url_get_a_process_each(project: Path) -> None:
    served_by = runner(project, {"FAKE_SUFFIX": "_own"})
    try:
        first, second = await served(served_by, "alpha"), await served(served_by, "beta")
    finally:
        await served_by.aclose()
    assert first[1][0].split("|")[1] == "alpha_own"
    assert second[1][0].split("|")[1] == "beta_own"  # its own process, its own settings
    assert served_by.started == 2


async def test_commands_it_does_not_serve_run_as_before(project: Path) -> None:
    served_by = runner(project)
    try:
        code, lines = await served(served_by, "alpha", ["manage.py", "migrate", "--noinput"])
    finally:
        await served_by.aclose()
    assert code == 0
    assert lines[0].startswith("migrate|alpha|")
    assert served_by.started == 0


async def test_a_cancelled_request_ends_its_process(project: Path) -> None:
    served_by = runner(project)
    (project / "django/core/management.py").write_text(
        FAKE["django/core/management.py"] + "\n    if d['NAME'] == 'hangs':\n        import time; time.sleep(60)\n"
    )
    try:
        await served(served_by, "alpha")
        hanging = asyncio.ensure_future(served(served_by, "hangs"))
        await asyncio.sleep(0.3)
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        assert not served_by._all
        code, _ = await served(served_by, "beta")
    finally:
        await served_by.aclose()
    assert code == 0
    assert served_by.started == 2


def test_cut_at_any_chunk_boundary() -> None:
    marker = "bastion-migrate-resident-00"
    stream = f"one\ntwo\n\n{marker} end 0 1\nthree\n{marker} end 4 1\n"
    for size in range(1, len(stream) + 1):
        cutter = resident.Demultiplexer(marker)
        first, second = Collected(), Collected()
        cutter.serving(first)
        for start in range(0, len(stream), size):
            cutter.feed(stream[start : start + size].encode())
            if cutter.answers.qsize() == 1 and cutter.output is None:
                cutter.serving(second)
        assert first.close() == ["one", "two"], size
        assert second.close() == ["three"], size
        assert [cutter.answers.get_nowait() for _ in range(2)] == [(0, True), (4, True)]


async def test_no_more_processes_than_the_limit_the_others_wait_for_one_free(project: Path) -> None:
    settings = make_settings(project, python=sys.executable, working_directory=str(project))
    served_by = resident.ResidentRunner(local.prepare(settings, {"PATH": "/usr/bin:/bin"}), limit=2)
    (project / "django/core/management.py").write_text(
        FAKE["django/core/management.py"]
        + "\n    if d['NAME'].startswith('slow'):\n        import time; time.sleep(0.2)\n"
    )
    names = [f"slow{n}" for n in range(5)] + ["dies", "after"]
    try:
        results = await asyncio.gather(*(served(served_by, name) for name in names))
    finally:
        await served_by.aclose()
    assert [code for code, _ in results] == [0, 0, 0, 0, 0, 7, 0]
    for (_, lines), name in zip(results, names, strict=True):
        assert lines[0].split("|")[1] == name, lines
    # Two processes served the five slow databases (waiters are served in turn); the one that died was
    # replaced, and never was a third alive at once.
    assert len({lines[0].split("|")[5] for _, lines in results[:5]}) == 2
    assert served_by.started == 3
    assert served_by.served == 7


def test_the_limit_is_the_cpus_this_process_may_use() -> None:
    import os  # noqa: PLC0415

    assert resident.cpus() == len(os.sched_getaffinity(0))


async def test_a_database_waiting_past_the_patience_gets_a_process_of_its_own(project: Path) -> None:
    # The one process serves a slow database (a lock held, a far server): the next one does not wait for it
    # for ever, but past the patience gets another process, up to `most`.
    settings = make_settings(project, python=sys.executable, working_directory=str(project))
    served_by = resident.ResidentRunner(
        local.prepare(settings, {"PATH": "/usr/bin:/bin"}), limit=1, most=2, patience=0.3
    )
    (project / "django/core/management.py").write_text(
        FAKE["django/core/management.py"] + "\n    if d['NAME'] == 'slow':\n        import time; time.sleep(3)\n"
    )
    finished: list[str] = []

    async def one(name: str) -> int:
        code, _ = await served(served_by, name)
        finished.append(name)
        return code

    try:
        slow = asyncio.ensure_future(one("slow"))
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(one("quick"), 2.5) == 0  # well before the slow one ends
        assert finished == ["quick"]
        assert await slow == 0
    finally:
        await served_by.aclose()
    assert served_by.started == 2


@pytest.mark.parametrize("users_own", [None, "billing"])
async def test_each_databases_sessions_get_its_own_name_unless_the_user_named_them(
    project: Path, users_own: str | None
) -> None:
    # libpq reads PGAPPNAME at each connection: one process serving database after database names each
    # database's sessions with that database's name, so a stopped command's leftovers are found per database.
    (project / "django/core/management.py").write_text(
        "import os\ndef execute_from_command_line(argv):\n    print('named', os.environ.get('PGAPPNAME'), flush=True)\n"
    )
    served_by = runner(project, {"PGAPPNAME": users_own} if users_own else {})
    try:
        results = [await served(served_by, name, application_name=f"app-{name}") for name in ("alpha", "beta")]
    finally:
        await served_by.aclose()
    assert [lines for _, lines in results] == [
        [f"named {users_own or 'app-alpha'}"],
        [f"named {users_own or 'app-beta'}"],
    ]
    assert served_by.started == 1
