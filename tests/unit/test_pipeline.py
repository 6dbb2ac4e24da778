"""The whole pipeline without root or the lab: an in-process SSH server, a real PostgreSQL, a scripted runner.

The runner stands in for Django: it connects through the gate with asyncpg, records what it saw
(was the lock held when its first query ran?), writes ``django_migrations`` and prints Django's lines.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from factories import make_settings
from local_postgres import Postgres, running_postgres
from sshd import SSHD, pending_tasks, refuses

from bastion_action import lock, pipeline, target
from bastion_action.clock import Clock
from bastion_action.errors import (
    CommandError,
    InternalError,
    LockError,
    PendingMigrationsError,
    ProbeError,
    PullError,
    TunnelError,
)
from bastion_action.gha import Console
from bastion_action.report import Result, RunResult
from bastion_action.runners import Output, command_env
from bastion_action.runners import docker as docker_runner

MIGRATIONS = [("catalog", "0001_initial"), ("catalog", "0002_product_sku"), ("orders", "0001_initial")]
Emit = Callable[[str], None]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with running_postgres() as server:
        yield server


@pytest.fixture
async def databases(postgres: Postgres) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Creates fresh databases on demand; drops them afterwards."""
    created: list[str] = []

    async def create() -> str:
        name = f"t_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(postgres.dsn())
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        created.append(name)
        return name

    yield create
    admin = await asyncpg.connect(postgres.dsn())
    try:
        for name in created:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def lock_held_by_another(connection: asyncpg.Connection, name: str) -> bool:
    key1, key2 = lock.lock_keys(name)
    return bool(
        await connection.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() "
            "AND classid = ($1::bigint & 4294967295)::oid AND objid = ($2::bigint & 4294967295)::oid",
            key1,
            key2,
        )
    )


class ScriptedRunner:
    """A ``Runner`` whose command is a coroutine: ``script(connection, emit) -> exit code``."""

    where = ""

    def __init__(
        self,
        script: Callable[[asyncpg.Connection, Emit], Awaitable[int]] | None = None,
        plan: list[str] | None = None,
        ready_after: float = 0.0,
    ) -> None:
        self.script = script or apply_migrations
        self.ready_after = ready_after  # seconds before a command can start here, as a pull takes
        self.plan = plan  # what `manage.py migrate --plan` prints when the pipeline asks what is left
        self.argvs: list[list[str]] = []
        self.started: list[float] = []
        self.connected: list[float] = []
        self.lock_seen: list[bool] = []
        self.cancelled = 0
        self.running = 0
        self.most_at_once = 0
        self.first_query = asyncio.Event()

    def interpreter(self) -> str:
        return "python"

    async def ready(self) -> None:
        await asyncio.sleep(self.ready_after)

    async def run(self, argv: Sequence[str], *, database_url: str, output: Output, application_name: str = "") -> int:
        self.argvs.append(list(argv))
        if self.plan is not None and "--plan" in argv:
            for line in self.plan:
                output.feed(line + "\n")
            return 0
        self.started.append(time.monotonic())
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)

        def emit(line: str) -> None:
            output.feed(line + "\n")

        try:
            # As libpq would with the PGAPPNAME the action sets.
            named = {"application_name": application_name} if application_name else None
            connection = await asyncpg.connect(database_url, timeout=30, server_settings=named)
            try:
                name = await connection.fetchval("SELECT current_database()")
                self.connected.append(time.monotonic())
                self.lock_seen.append(await lock_held_by_another(connection, name))
                self.first_query.set()
                return await self.script(connection, emit)
            finally:
                await connection.close()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1


async def apply_migrations(connection: asyncpg.Connection, emit: Emit) -> int:
    await connection.execute(
        "CREATE TABLE IF NOT EXISTS django_migrations (id serial PRIMARY KEY, app text, name text, applied timestamptz)"
    )
    emit("Running migrations:")
    for app, name in MIGRATIONS:
        await asyncio.sleep(0.05)
        await connection.execute("INSERT INTO django_migrations (app, name, applied) VALUES ($1, $2, now())", app, name)
        emit(f"  Applying {app}.{name}... OK")
    return 0


def sleeping(seconds: float) -> Callable[[asyncpg.Connection, Emit], Awaitable[int]]:
    async def script(_connection: asyncpg.Connection, emit: Emit) -> int:
        emit("working")
        await asyncio.sleep(seconds)
        return 0

    return script


def inputs(sshd: SSHD, postgres: Postgres, name: str, **overrides: str) -> dict[str, str]:
    values = {
        "ssh_host": sshd.host,
        "ssh_port": str(sshd.port),
        "ssh_user": sshd.user,
        "ssh_password": sshd.password,
        "ssh_known_hosts": sshd.known_hosts,
        "ssh_host_fingerprint": "",
        "db_host": postgres.host,
        "db_port": str(postgres.port),
        "db_name": name,
        "db_user": postgres.user,
        "db_password": postgres.password,
        "db_sslmode": "disable",
        "connect_timeout": "5",
        "environment": "unit",
    }
    return values | overrides


async def execute(
    runner: ScriptedRunner | None, sshd: SSHD, postgres: Postgres, name: str, **overrides: str
) -> RunResult:
    parsed = make_settings(**inputs(sshd, postgres, name, **overrides))
    # The log goes to a buffer: these tests read the results, not the log.
    return await pipeline.execute(parsed, Console({}, stream=io.StringIO()), runner=runner)


async def nothing_left(port: int | None) -> None:
    assert await pending_tasks() == set()
    if port is not None:
        assert await refuses(port)


async def test_migrate_applies_under_the_lock_and_reports_what_it_applied(sshd, postgres, databases) -> None:
    name = await databases()
    runner = ScriptedRunner()
    run = await execute(runner, sshd, postgres, name)
    assert run.error is None, run.error
    assert run.result is Result.SUCCESS
    assert run.exit_code == 0
    assert run.applied == [f"{app}.{migration}" for app, migration in MIGRATIONS]
    assert run.pending == []
    assert run.server is not None
    assert run.server.version.startswith("15")
    assert run.server.applied_migrations is None  # no django_migrations table at probe time
    assert run.lock_wait is not None
    assert run.lock_wait < 1
    assert runner.lock_seen == [True]  # the command's first query ran with the action's lock held
    assert run.output_tail[-1] == "  Applying orders.0001_initial... OK"
    assert set(run.timings) == {"settings", "tunnel", "probe", "lock", "command"}
    check = await asyncpg.connect(postgres.dsn(name))
    try:
        assert not await lock_held_by_another(check, name)  # released
    finally:
        await check.close()
    await nothing_left(run.tunnel_port)


async def test_the_command_starts_at_once_but_reaches_the_database_only_after_the_lock(
    sshd, postgres, databases
) -> None:
    name = await databases()
    holder = await asyncpg.connect(postgres.dsn(name))
    key1, key2 = lock.lock_keys(name)
    await holder.execute("SELECT pg_advisory_lock($1, $2)", key1, key2)
    runner = ScriptedRunner()
    running = asyncio.ensure_future(execute(runner, sshd, postgres, name))
    await asyncio.sleep(1.0)
    assert len(runner.started) == 1  # started while the lock was still held by another session
    assert runner.connected == []  # ... but held at the gate
    released = time.monotonic()
    await holder.execute("SELECT pg_advisory_unlock($1, $2)", key1, key2)
    await holder.close()
    run = await running
    assert run.result is Result.SUCCESS, run.error
    assert runner.connected[0] > released
    assert run.lock_wait is not None
    assert run.lock_wait >= 0.9


async def test_a_lock_held_too_long_fails_the_lock_stage_and_the_command_never_connects(
    sshd, postgres, databases
) -> None:
    name = await databases()
    holder = await asyncpg.connect(postgres.dsn(name))
    key1, key2 = lock.lock_keys(name)
    await holder.execute("SELECT pg_advisory_lock($1, $2)", key1, key2)
    try:
        runner = ScriptedRunner()
        run = await execute(runner, sshd, postgres, name, lock_timeout="0.6")
    finally:
        await holder.close()
    assert run.result is Result.FAILURE
    assert isinstance(run.error, LockError)
    assert run.error.message.startswith(f"the migration lock on database '{name}' is held by ")
    assert run.error.message.endswith("gave up after 0.6 s (lock-timeout)")
    assert runner.connected == []
    assert runner.cancelled == 1
    await nothing_left(run.tunnel_port)


async def test_a_custom_command_starts_only_under_the_lock(sshd, postgres, databases) -> None:
    name = await databases()
    runner = ScriptedRunner(sleeping(0))
    run = await execute(runner, sshd, postgres, name, command="custom", args="alembic upgrade head")
    assert run.result is Result.SUCCESS, run.error
    assert run.applied is None  # not a Django command: no results are read
    assert runner.lock_seen == [True]


async def test_a_dropped_ssh_connection_stops_the_command_and_fails_the_tunnel_stage(sshd, postgres, databases) -> None:
    name = await databases()
    runner = ScriptedRunner(sleeping(30))
    running = asyncio.ensure_future(execute(runner, sshd, postgres, name))
    await asyncio.wait_for(runner.first_query.wait(), 10)
    started = time.monotonic()
    sshd.drop()
    run = await running
    assert time.monotonic() - started < 5
    assert isinstance(run.error, TunnelError)
    assert run.error.anchor == "tunnel-dropped"
    assert run.result is Result.FAILURE
    assert runner.cancelled == 1
    await nothing_left(run.tunnel_port)


async def test_cancelling_the_run_stops_the_command_and_releases_everything(sshd, postgres, databases) -> None:
    name = await databases()
    runner = ScriptedRunner(sleeping(30))
    running = asyncio.ensure_future(execute(runner, sshd, postgres, name))
    await asyncio.wait_for(runner.first_query.wait(), 10)
    running.cancel()
    run = await running  # execute() reports a cancelled run instead of raising
    assert run.cancelled
    assert run.result is Result.FAILURE
    assert runner.cancelled == 1
    await nothing_left(run.tunnel_port)


async def test_the_run_timeout_names_the_stage_that_was_running(sshd, postgres, databases) -> None:
    name = await databases()
    runner = ScriptedRunner(sleeping(30))
    run = await execute(runner, sshd, postgres, name, timeout="1.5")
    assert isinstance(run.error, CommandError)
    assert run.error.message == (
        "timed out: the whole run is limited to 1.5 s (timeout) and the command stage was still running"
    )
    assert runner.cancelled == 1
    await nothing_left(run.tunnel_port)


async def test_a_failing_command_reports_its_exit_code_and_what_it_applied(sshd, postgres, databases) -> None:
    name = await databases()

    async def fails_half_way(connection: asyncpg.Connection, emit: Emit) -> int:
        await connection.execute(
            "CREATE TABLE django_migrations (id serial PRIMARY KEY, app text, name text, applied timestamptz)"
        )
        await connection.execute(
            "INSERT INTO django_migrations (app, name, applied) VALUES ('catalog', '0001_initial', now())"
        )
        emit("  Applying catalog.0001_initial... OK")
        emit("  Applying catalog.0002_product_sku...Traceback (most recent call last):")
        return 1

    plan = ["Planned operations:", "catalog.0002_product_sku", "    Add field sku to product"]
    runner = ScriptedRunner(fails_half_way, plan=plan)
    run = await execute(runner, sshd, postgres, name)
    assert isinstance(run.error, CommandError)
    assert run.error.message == (
        "`manage.py migrate --noinput --fake-initial -v 2` exited with code 1 while applying catalog.0002_product_sku"
    )
    assert run.error.exit_code == 1
    assert run.failed_migration == "catalog.0002_product_sku"
    assert run.applied == ["catalog.0001_initial"]
    assert run.pending == ["catalog.0002_product_sku"]  # from the follow-up `migrate --plan`
    assert runner.argvs == [
        ["manage.py", "migrate", "--noinput", "--fake-initial", "-v", "2"],
        ["manage.py", "migrate", "--plan"],
    ]
    assert run.exit_code == 1
    assert run.output_tail[-1] == "  Applying catalog.0002_product_sku...Traceback (most recent call last):"


async def test_check_with_pending_migrations_is_pending(sshd, postgres, databases) -> None:
    name = await databases()

    async def plan(_connection: asyncpg.Connection, emit: Emit) -> int:
        for line in ["Planned operations:", "catalog.0001_initial", "    Create model Product"]:
            emit(line)
        return 0

    runner = ScriptedRunner(plan)
    run = await execute(runner, sshd, postgres, name, command="check")
    assert run.result is Result.PENDING
    assert isinstance(run.error, PendingMigrationsError)
    assert run.pending == ["catalog.0001_initial"]
    assert run.exit_code == 1
    assert run.lock_wait is None  # a read-only command takes no lock by default
    assert runner.lock_seen == [False]


async def test_probe_runs_no_command(sshd, postgres, databases) -> None:
    name = await databases()
    runner = ScriptedRunner()
    run = await execute(runner, sshd, postgres, name, command="probe")
    assert run.result is Result.SUCCESS, run.error
    assert runner.started == []
    assert run.server is not None
    assert run.server.database == name


async def test_a_refused_forward_fails_the_tunnel_stage_with_the_bastions_reason(sshd, postgres, databases) -> None:
    name = await databases()
    sshd.refuse_forwarding = True
    runner = ScriptedRunner()
    run = await execute(runner, sshd, postgres, name)
    assert isinstance(run.error, TunnelError)
    assert run.error.anchor == "forward-refused"
    assert runner.connected == []
    await nothing_left(run.tunnel_port)


async def test_fan_out_runs_each_database_at_most_concurrency_at_a_time(sshd, postgres, databases) -> None:
    names = [await databases() for _ in range(4)]
    runner = ScriptedRunner()
    run = await execute(runner, sshd, postgres, "", databases=",".join(names), concurrency="2")
    assert run.result is Result.SUCCESS, run.error
    assert run.targets is not None
    assert [target.database for target in run.targets] == names
    assert all(target.result is Result.SUCCESS for target in run.targets)
    assert all(target.applied == [f"{a}.{m}" for a, m in MIGRATIONS] for target in run.targets)
    assert runner.most_at_once == 2
    assert runner.lock_seen == [True] * 4
    assert len(sshd.connections) <= 1  # one SSH connection for all of them (closed by now)


async def test_fan_out_names_the_databases_that_failed(sshd, postgres, databases) -> None:
    names = [await databases() for _ in range(3)]

    async def fail_on_second(connection: asyncpg.Connection, emit: Emit) -> int:
        if await connection.fetchval("SELECT current_database()") == names[1]:
            emit("boom")
            return 2
        return await apply_migrations(connection, emit)

    run = await execute(ScriptedRunner(fail_on_second), sshd, postgres, "", databases=",".join(names))
    assert run.result is Result.FAILURE
    assert isinstance(run.error, CommandError)
    assert run.error.message == f"1 of 3 databases did not succeed: {names[1]} (failure)"
    assert run.targets is not None
    assert [target.result for target in run.targets] == [Result.SUCCESS, Result.FAILURE, Result.SUCCESS]
    assert run.targets[1].exit_code == 2


async def test_a_failed_pull_stops_the_rest_of_the_run_at_once() -> None:
    stopped: list[str] = []

    async def connecting() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            stopped.append("connect")

    pulling: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.05, pulling.set_exception, PullError("manifest unknown"))
    with pytest.raises(PullError):
        await pipeline._unless_failed(connecting(), pulling)
    assert stopped == ["connect"]


async def test_a_finished_pull_lets_the_rest_of_the_run_go_on() -> None:
    pulling: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    pulling.set_result("image")

    async def connecting() -> str:
        await asyncio.sleep(0.05)
        return "connected"

    assert await pipeline._unless_failed(connecting(), pulling) == "connected"


class FakeDaemon:
    """The daemon side of a pull: waits for the settings to be validated, reports layers."""

    def __init__(self) -> None:
        self.validated_first = False
        self.images: list[str] = []

    async def prepare(self, image: Any, on_line: Emit, before_registry: Callable[[], Awaitable[object]]) -> Any:
        self.images.append(str(image.reference))
        await before_registry()
        self.validated_first = True
        on_line("Pulling from team/app")
        on_line("abc: Pull complete")
        return docker_runner.PreparedImage(image_id="sha256:" + "2" * 64, digest="sha256:" + "3" * 64, pulled=True)


async def test_the_pull_waits_for_validated_settings_and_reports_the_digest() -> None:
    parsed = make_settings(mode="docker", image="reg.example.com/team/app", image_tag="v1")
    out = io.StringIO()
    run = RunResult("dev", "docker", "migrate")
    validated = asyncio.Event()
    daemon = FakeDaemon()
    pulling = asyncio.ensure_future(pipeline._pull(daemon, parsed, Console({}, stream=out), Clock(run), validated))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not daemon.validated_first  # the registry is not contacted before the settings are all checked
    validated.set()
    prepared = await pulling
    assert prepared.pulled
    assert daemon.images == ["reg.example.com/team/app:v1"]
    assert run.image == "reg.example.com/team/app:v1"
    assert run.image_digest == "sha256:" + "3" * 64
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["== pull reg.example.com/team/app:v1", "Pulling from team/app", "abc: Pull complete"]
    assert lines[3].startswith(f"image: reg.example.com/team/app:v1 (sha256:{'3' * 64}), pulled in ")


@pytest.mark.parametrize(
    ("overrides", "warning"),
    [
        pytest.param(
            {"ssh_known_hosts": "", "ssh_insecure_skip_host_key_check": "true"},
            "warning: ssh-insecure-skip-host-key-check is true: the bastion's identity is not verified, so a man in "
            "the middle could read the SSH and database credentials. Set ssh-known-hosts or ssh-host-fingerprint.",
            id="host-key-check-skipped",
        ),
        pytest.param(
            {"ssh_legacy_algorithms": "true"},
            "warning: ssh-legacy-algorithms is true: SHA-1 signatures (ssh-rsa), key exchange and MACs are accepted, "
            "which OpenSSH 8.8 and newer refuse. Update the bastion's sshd and remove the flag.",
            id="legacy-algorithms",
        ),
    ],
)
async def test_a_risky_ssh_setting_warns_what_it_risks_on_every_run(
    sshd, postgres, databases, overrides: dict[str, str], warning: str
) -> None:
    name = await databases()
    parsed = make_settings(**inputs(sshd, postgres, name, command="probe", **overrides))
    out = io.StringIO()
    run = await pipeline.execute(parsed, Console({}, stream=out))
    assert run.result is Result.SUCCESS, run.error
    assert out.getvalue().splitlines()[0] == warning


async def test_an_unexpected_exception_still_ends_in_the_failure_contract(sshd, postgres, databases) -> None:
    name = await databases()

    async def buggy(_connection: asyncpg.Connection, _emit: Emit) -> int:
        raise ZeroDivisionError(postgres.password)  # a bug whose message holds a secret

    out = io.StringIO()
    parsed = make_settings(**inputs(sshd, postgres, name))
    console = Console({}, stream=out)
    console.mask(parsed.secrets)
    run = await pipeline.execute(parsed, console, runner=ScriptedRunner(buggy))
    assert run.result is Result.FAILURE
    assert isinstance(run.error, InternalError)
    assert run.error.stage.value == "internal"
    assert run.error.message == f"unexpected ZeroDivisionError in the command stage: {postgres.password}"
    log = out.getvalue()
    assert "== internal error: the details a bug report needs" in log
    assert "ZeroDivisionError: ***" in log
    assert postgres.password not in log
    await nothing_left(run.tunnel_port)


async def test_a_role_that_may_not_read_django_migrations_fails_the_probe_naming_the_privilege(
    sshd, postgres, databases
) -> None:
    name = await databases()
    role = f"r_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres.dsn(name))
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'limited-pw'")
        await admin.execute(
            "CREATE TABLE django_migrations (id serial PRIMARY KEY, app text, name text, applied timestamptz)"
        )
        run = await execute(ScriptedRunner(), sshd, postgres, name, db_user=role, db_password="limited-pw")
    finally:
        await admin.execute("DROP TABLE IF EXISTS django_migrations")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
    assert isinstance(run.error, ProbeError)
    assert run.error.anchor == "missing-privilege"
    assert run.error.message == (
        f"user {role!r} lacks a privilege reading the server's facts in database {name!r}: "
        "permission denied for table django_migrations"
    )


async def lock_holder_pid(postgres: Postgres, name: str) -> int | None:
    key1, key2 = lock.lock_keys(name)
    admin = await asyncpg.connect(postgres.dsn(name))
    try:
        return await admin.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = ($1::bigint & 4294967295)::oid AND objid = ($2::bigint & 4294967295)::oid",
            key1,
            key2,
        )
    finally:
        await admin.close()


async def backends_of(postgres: Postgres, name: str) -> int:
    admin = await asyncpg.connect(postgres.dsn())
    try:
        return int(
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name
            )
        )
    finally:
        await admin.close()


async def terminate(postgres: Postgres, pid: int) -> None:
    admin = await asyncpg.connect(postgres.dsn())
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def test_a_lost_lock_stops_the_command_and_cuts_its_connections(sshd, postgres, databases) -> None:
    name = await databases()
    runner = ScriptedRunner(sleeping(20))
    running = asyncio.ensure_future(execute(runner, sshd, postgres, name, command="custom", args="sleep 20"))
    await asyncio.wait_for(runner.first_query.wait(), 10)
    pid = await lock_holder_pid(postgres, name)
    assert pid is not None
    ended = time.monotonic()
    await terminate(postgres, pid)
    run = await running
    assert time.monotonic() - ended < 3
    assert isinstance(run.error, LockError)
    assert run.error.anchor == "lock-lost"
    assert run.error.message.startswith(f"the migration lock on database {name!r} was lost: its session was ended")
    assert runner.cancelled == 1
    for _ in range(100):  # the command's own session ends with its forwarded connection
        if await backends_of(postgres, name) == 0:
            break
        await asyncio.sleep(0.05)
    assert await backends_of(postgres, name) == 0
    await nothing_left(run.tunnel_port)


async def test_the_lease_is_kept_alive_past_its_length_and_bound_on_the_server(sshd, postgres, databases) -> None:
    name = await databases()
    seen: list[str] = []

    async def long_and_quiet(connection: asyncpg.Connection, emit: Emit) -> int:
        await asyncio.sleep(4)  # more than a lease without a word from the command
        pid = await lock_holder_pid(postgres, name)
        admin = await asyncpg.connect(postgres.dsn(name))
        try:
            seen.append(await admin.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid))
        finally:
            await admin.close()
        return await apply_migrations(connection, emit)

    out = io.StringIO()
    parsed = make_settings(**inputs(sshd, postgres, name, lock_lease_seconds="3"))
    run = await pipeline.execute(parsed, Console({}, stream=out), runner=ScriptedRunner(long_and_quiet))
    assert run.result is Result.SUCCESS, run.error
    assert seen == ["idle"]  # the lock's session is alive, idle between heartbeats
    assert "as a 3 s lease (the server ends it if the action goes silent)" in out.getvalue()


async def test_a_session_ended_while_waiting_for_the_lock_is_a_lock_failure(sshd, postgres, databases) -> None:
    name = await databases()
    holder = await asyncpg.connect(postgres.dsn(name))
    key1, key2 = lock.lock_keys(name)
    await holder.execute("SELECT pg_advisory_lock($1, $2)", key1, key2)
    try:
        running = asyncio.ensure_future(execute(ScriptedRunner(), sshd, postgres, name, lock_timeout="30"))
        admin = await asyncpg.connect(postgres.dsn(name))
        try:
            waiting = None
            for _ in range(100):
                waiting = await admin.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'bastion-migrate' "
                    "AND pid <> $2",
                    name,
                    holder.get_server_pid(),
                )
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting is not None
            await asyncio.sleep(0.6)  # in the wait loop by now
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", waiting)
        finally:
            await admin.close()
        run = await asyncio.wait_for(running, 10)
    finally:
        await holder.close()
    assert isinstance(run.error, LockError)
    assert run.error.message.startswith(f"the session taking the migration lock on database {name!r} ended: ")


async def stale_holder(
    postgres: Postgres, name: str, application_name: str = lock.APPLICATION_NAME
) -> asyncpg.Connection:
    """A session that takes the database's migration lock and then says nothing, like a run whose runner vanished."""
    holder = await asyncpg.connect(postgres.dsn(name), server_settings={"application_name": application_name})
    await holder.execute("SELECT pg_advisory_lock($1, $2)", *lock.lock_keys(name))
    return holder


async def take_lock(
    postgres: Postgres,
    name: str,
    *,
    timeout: float,
    lease: float,
    break_stale: bool,
    user: str = "",
    password: str = "",
) -> tuple[list[str], lock.Lease | LockError]:
    """The waiting side alone, on a real server, with a lease shorter than the action allows.

    Returns what it said while waiting, and the lease it took or the error it gave up with.
    """
    dsn = postgres.dsn(name)
    if user:
        dsn = dsn.replace(f"{postgres.user}:{postgres.password}@", f"{user}:{password}@")
    connection = await asyncpg.connect(dsn, server_settings={"application_name": lock.APPLICATION_NAME})
    said: list[str] = []
    lease_ = lock.Lease(connection, name, asyncio.Lock())
    lease_.break_stale = break_stale
    try:
        await lease_.acquire(timeout, lease, said.append)
    except LockError as exc:
        await connection.close()
        return said, exc
    await lease_.release()
    await connection.close()
    return said, lease_


async def test_a_stale_holder_is_named_in_the_wait_and_the_error_but_left_alone(postgres, databases) -> None:
    name = await databases()
    holder = await stale_holder(postgres, name)
    try:
        said, ended = await take_lock(postgres, name, timeout=1.2, lease=0.4, break_stale=False)
        assert not holder.is_closed()
        assert await holder.fetchval("SELECT 1") == 1  # never ended without lock-break-stale
    finally:
        await holder.close()
    assert isinstance(ended, LockError)
    assert re.search(
        r", idle for [12] s, longer than its 0.4 s lease \(lock-lease-seconds\): probably a dead run; "
        r"gave up after 1.2 s \(lock-timeout\)$",
        ended.message,
    ), ended.message
    assert "lock-break-stale: true" in ended.hint
    assert f"pg_terminate_backend({holder.get_server_pid()})" in ended.hint
    assert said[0].startswith("lock: waiting for bastion-migrate (backend pid ")
    assert said[-1].endswith("probably a dead run")


@pytest.mark.parametrize(
    "application_name",
    [pytest.param(lock.APPLICATION_NAME, id="a-live-run"), pytest.param("manual-maintenance", id="another-client")],
)
async def test_a_holder_that_is_not_stale_is_never_ended(postgres, databases, application_name: str) -> None:
    name = await databases()
    holder = await stale_holder(postgres, name, application_name)

    async def live() -> None:  # a live run speaks every third of its lease
        while True:
            await asyncio.sleep(0.1)
            if application_name == lock.APPLICATION_NAME:
                await holder.fetchval("SELECT 1")

    speaking = asyncio.ensure_future(live())
    try:
        said, ended = await take_lock(postgres, name, timeout=1.2, lease=0.4, break_stale=True)
        assert await holder.fetchval("SELECT 1") == 1
    finally:
        speaking.cancel()
        await asyncio.gather(speaking, return_exceptions=True)
        await holder.close()
    assert isinstance(ended, LockError)
    assert "dead run" not in ended.message
    assert not any(line.startswith("lock: ended") or "dead run" in line for line in said)


async def test_lock_break_stale_ends_a_stale_holder_and_takes_the_lock(postgres, databases) -> None:
    name = await databases()
    holder = await stale_holder(postgres, name)
    pid = holder.get_server_pid()
    try:
        said, taken = await take_lock(postgres, name, timeout=10, lease=0.4, break_stale=True)
    finally:
        await holder.close()
    assert isinstance(taken, lock.Lease), taken
    assert [holder.pid for holder in taken.broken] == [pid]
    ended = [line for line in said if line.startswith("lock: ended ")]
    assert len(ended) == 1
    assert ended[0].startswith(f"lock: ended bastion-migrate (backend pid {pid}, ")
    assert ended[0].endswith("longer than its 0.4 s lease (lock-lease-seconds): probably a dead run (lock-break-stale)")


async def test_a_role_that_may_not_end_the_stale_holder_says_so_and_waits(postgres, databases) -> None:
    name = await databases()
    role = f"r_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres.dsn(name))
    # It may see that the holder is idle, but the holder is a superuser's session: only a superuser may end it.
    await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'limited-pw' IN ROLE pg_read_all_stats")
    holder = await stale_holder(postgres, name)
    try:
        said, ended = await take_lock(
            postgres, name, timeout=1.2, lease=0.4, break_stale=True, user=role, password="limited-pw"
        )
        assert await holder.fetchval("SELECT 1") == 1
    finally:
        await holder.close()
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
    assert isinstance(ended, LockError)
    assert ended.message.endswith("probably a dead run; gave up after 1.2 s (lock-timeout)")
    assert len([line for line in said if line.startswith("lock: could not end bastion-migrate")]) == 1


async def test_the_pipeline_ends_a_stale_holder_when_asked(sshd, postgres, databases) -> None:
    name = await databases()
    holder = await stale_holder(postgres, name)
    out = io.StringIO()
    parsed = make_settings(**inputs(sshd, postgres, name, lock_lease_seconds="3", lock_break_stale="true"))
    try:
        run = await pipeline.execute(parsed, Console({}, stream=out), runner=ScriptedRunner())
        assert holder.is_closed() or not await lock_held_by_another(holder, name)
    finally:
        await holder.close()
    assert run.result is Result.SUCCESS, run.error
    assert run.lock_wait is not None
    assert run.lock_wait >= 3
    assert f"lock: ended bastion-migrate (backend pid {holder.get_server_pid()}" in out.getvalue()


async def test_libpq_applies_the_bounds_and_lets_the_users_own_options_win(postgres, databases, tmp_path) -> None:
    name = await databases()
    psql = Path(shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql")
    app = make_settings(
        db_lock_timeout="2", db_statement_timeout="60", extra_env="PGOPTIONS=-c statement_timeout=7s"
    ).app
    env = command_env(app, postgres.dsn(name), {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    shown = await asyncio.create_subprocess_exec(
        str(psql), postgres.dsn(name), "-Atc",
        "SELECT current_setting('idle_in_transaction_session_timeout'), current_setting('lock_timeout'), "
        "current_setting('statement_timeout')",
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    printed, _ = await shown.communicate()
    assert shown.returncode == 0
    assert printed.decode().strip() == "5min|2s|7s"


async def test_a_holder_whose_state_the_role_may_not_see_is_never_judged_stale(postgres, databases) -> None:
    name = await databases()
    role = f"r_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres.dsn(name))
    await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'limited-pw'")  # pg_stat_activity hides others' state
    holder = await stale_holder(postgres, name)
    try:
        said, ended = await take_lock(
            postgres, name, timeout=1.2, lease=0.4, break_stale=True, user=role, password="limited-pw"
        )
        assert await holder.fetchval("SELECT 1") == 1
    finally:
        await holder.close()
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
    assert isinstance(ended, LockError)
    assert "dead run" not in ended.message
    assert not any(line.startswith(("lock: ended", "lock: could not end")) for line in said)


async def test_releasing_a_lost_lease_leaves_the_session_alone(postgres, databases) -> None:
    name = await databases()
    connection = await asyncpg.connect(postgres.dsn(name))
    try:
        lease = lock.Lease(connection, name, asyncio.Lock())
        await lease.acquire(1, 3, lambda _line: None)
        lease._lose("a heartbeat went unanswered")  # its session may be unusable now: it is not spoken to again
        await lease.release()
        assert not lease.held
        assert await lock_holder_pid(postgres, name) == connection.get_server_pid()  # freed when the session ends
    finally:
        await connection.close()
    assert await lock_holder_pid(postgres, name) is None


async def test_a_roles_shorter_idle_session_timeout_does_not_end_the_lease(sshd, postgres, databases) -> None:
    name = await databases()
    role = f"r_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres.dsn(name))
    seen: list[int | None] = []

    async def long_and_quiet(_connection: asyncpg.Connection, emit: Emit) -> int:
        await asyncio.sleep(2)  # the role ends idle sessions after 1 s; the "pull" before the lock took 1.5 s
        seen.append(await lock_holder_pid(postgres, name))
        emit("done")
        return 0

    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'r-pw' IN ROLE pg_read_all_stats")
        await admin.execute(f"ALTER ROLE {role} SET idle_session_timeout = '1s'")
        await admin.execute(f'GRANT ALL ON DATABASE "{name}" TO {role}')
        run = await execute(
            ScriptedRunner(long_and_quiet, ready_after=1.5), sshd, postgres, name, db_user=role, db_password="r-pw",
            command="custom", args="sleep 4", lock_lease_seconds="3",
        )  # fmt: skip
    finally:
        await admin.execute(f'REVOKE ALL ON DATABASE "{name}" FROM {role}')
        await admin.close()
        await asyncio.sleep(0.2)
        cleanup = await asyncpg.connect(postgres.dsn())
        try:
            await cleanup.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await cleanup.execute(f"DROP ROLE IF EXISTS {role}")
        finally:
            await cleanup.close()
    assert run.result is Result.SUCCESS, run.error
    assert seen[0] is not None  # still held by the action's session, long past the role's 1 s


class HangingSqlmigrate(ScriptedRunner):
    """Migrates as ScriptedRunner does; the show-sql step (``manage.py shell -c``) never answers."""

    async def run(self, argv: Sequence[str], *, database_url: str, output: Output, application_name: str = "") -> int:
        if "shell" in argv:
            await asyncio.sleep(60)
        return await super().run(argv, database_url=database_url, output=output, application_name=application_name)


async def test_a_show_sql_step_that_hangs_does_not_fail_a_migrate_that_succeeded(sshd, postgres, databases) -> None:
    # show-sql never fails the run: it stops short of the run's timeout, which would have failed the run
    # (and sent a workflow's rollback step after a good migrate).
    name = await databases()
    started = time.monotonic()
    run = await execute(HangingSqlmigrate(), sshd, postgres, name, show_sql="true", timeout="8")
    assert run.error is None, run.error
    assert run.result is Result.SUCCESS
    assert run.applied == [f"{app}.{migration}" for app, migration in MIGRATIONS]
    assert run.sql is None
    assert time.monotonic() - started < 8 - target.SHOW_SQL_MARGIN_SECONDS + 2
    await nothing_left(run.tunnel_port)
