"""What a stopped command leaves busy on the server is ended with it, before the lock goes.

PostgreSQL runs a statement on after its client has gone, and notices only when it next writes to
it: a cancelled, timed-out or lock-less migration would keep its transaction, and the locks it
took, for the rest of its statement (here a ``pg_sleep(60)`` inside the sample's migration; in
production an ``ALTER TABLE`` rewriting a large table). The action names the command's sessions
(``PGAPPNAME``: ``bastion-migrate command <token>``) and ends those still busy once the command
has ended, on its own session (or a new one when that is gone), before it lets the lock go.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from support import (
    ActionRun,
    admin_sql,
    assert_failed_in,
    finish_action,
    processes_mentioning,
    recorded_migrations,
    sleepers,
    start_action,
    wait_for,
    with_docker,
)

Lab = dict[str, Any]

SLEEP = 60  # s: the migration's statement; every test here ends long before it would
PREFIX = "bastion-migrate command "


@contextlib.contextmanager
def watched(lab: Lab, database: str) -> Iterator[list[tuple[int, int]]]:
    """(action's advisory locks, sessions of the action's command running pg_sleep), sampled in one statement."""
    query = (
        "SELECT (SELECT count(*) FROM pg_locks l WHERE l.locktype = 'advisory' AND l.classid = 1651733614 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())) || ' ' || "
        "(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
        "AND query LIKE 'SELECT pg_sleep%' AND application_name LIKE 'bastion-migrate command %')"
    )
    samples: list[tuple[int, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            locks, busy = admin_sql(lab, query, database).split()
            samples.append((int(locks), int(busy)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield samples
    finally:
        done.set()
        sampler.join()


def lose_the_lock(lab: Lab, database: str) -> None:
    """End the session holding the action's lock on ``database``, as an administrator (or a pooler) would."""
    holder = admin_sql(
        lab,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 1651733614 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        database,
    )
    admin_sql(lab, f"SELECT pg_terminate_backend({int(holder)})")


def migrating(base_inputs: dict[str, str], lab: Lab, mode: str, **more: str) -> dict[str, str]:
    inputs = {**base_inputs, "command": "migrate", "extra-env": f"SAMPLE_MIGRATION_SLEEP={SLEEP}", **more}
    return with_docker(inputs, lab) if mode == "docker" else inputs


def assert_ended_before_the_lock_went(run: ActionRun, samples: list[tuple[int, int]]) -> None:
    assert samples, "the watch took no sample"
    assert (1, 1) in samples, f"the watch never saw the lock held and the statement running: {samples}"
    # From the lock held with the statement running to neither: never the lock gone while the statement ran.
    assert (0, 1) not in samples[samples.index((1, 1)) :], f"the lock went before the statement: {samples}"
    assert samples[-1] == (0, 0), samples
    assert "command: ended 1 session(s) it left busy on the server, rolled back: pid " in run.stdout, run.explain()


@pytest.mark.parametrize("mode", ["lightweight", "docker"])
def test_a_cancelled_migrations_statement_is_ended_before_the_lock_goes(
    mode: str, base_inputs, lab, fresh_db, tmp_path, secrets
) -> None:
    started = time.monotonic()
    process = start_action(migrating(base_inputs, lab, mode), tmp_path)
    try:
        wait_for(lambda: sleepers(lab, fresh_db), "the migration's statement", 60)
        with watched(lab, fresh_db) as samples:
            [name] = sleepers(lab, fresh_db)
            assert name.startswith(PREFIX)
            os.kill(process.pid, signal.SIGTERM)  # as GitHub cancels a run
            run = finish_action(process, tmp_path, started, timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert run.returncode == 128 + signal.SIGTERM, run.explain()
    assert_ended_before_the_lock_went(run, samples)
    assert sleepers(lab, fresh_db) == []
    assert "audit.0002_test_hooks" not in recorded_migrations(lab, fresh_db), "rolled back with its session"
    assert not run.leaks(secrets)
    workdir = tmp_path / "again"
    again = finish_action(start_action({**base_inputs, "command": "migrate"}, workdir), workdir, time.monotonic())
    assert again.returncode == 0, again.explain()
    assert "audit.0002_test_hooks" in recorded_migrations(lab, fresh_db)


def test_a_timed_out_migrations_statement_is_ended(base_inputs, lab, fresh_db, tmp_path) -> None:
    started = time.monotonic()
    process = start_action(migrating(base_inputs, lab, "lightweight", timeout="8"), tmp_path)
    with watched(lab, fresh_db) as samples:
        run = finish_action(process, tmp_path, started, timeout=30)
    assert_failed_in(run, "command")
    assert "timed out: the whole run is limited to 8 s" in run.stdout, run.explain()
    assert_ended_before_the_lock_went(run, samples)
    assert sleepers(lab, fresh_db) == []


def test_a_lost_lock_ends_the_statement_on_a_new_session(base_inputs, lab, fresh_db, tmp_path) -> None:
    """The lock's session itself is gone: the action opens another (the link is up) to end the statement."""
    started = time.monotonic()
    process = start_action(migrating(base_inputs, lab, "lightweight"), tmp_path)
    try:
        wait_for(lambda: sleepers(lab, fresh_db), "the migration's statement", 60)
        lose_the_lock(lab, fresh_db)
        run = finish_action(process, tmp_path, started, timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert_failed_in(run, "lock")
    assert "command: ended 1 session(s) it left busy on the server" in run.stdout, run.explain()
    assert sleepers(lab, fresh_db) == []
    assert "audit.0002_test_hooks" not in recorded_migrations(lab, fresh_db)


def test_sessions_the_action_did_not_name_are_never_ended(base_inputs, lab, fresh_db, tmp_path) -> None:
    """A name the user gave (PGAPPNAME in extra-env) is kept, so the action cannot tell the command's
    sessions from others of that name and ends none; a stranger's session named like the action's,
    with another token, is not the run's either."""
    argv = list(lab["db_admin_argv"])
    argv[argv.index("-d") + 1] = fresh_db
    stranger = subprocess.Popen(
        [*argv, "-c", f"SELECT pg_sleep({SLEEP})"],
        env={**os.environ, "PGAPPNAME": f"{PREFIX}00000000"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    inputs = migrating(base_inputs, lab, "lightweight")
    inputs["extra-env"] += "\nPGAPPNAME=deploy-job"
    started = time.monotonic()
    process = start_action(inputs, tmp_path)
    try:
        wait_for(lambda: len(sleepers(lab, fresh_db)) == 2, "the stranger's and the migration's statements", 60)
        os.kill(process.pid, signal.SIGTERM)
        run = finish_action(process, tmp_path, started, timeout=15)
        assert run.returncode == 128 + signal.SIGTERM, run.explain()
        assert "command: ended" not in run.stdout, run.explain()
        assert sleepers(lab, fresh_db) == ["bastion-migrate command 00000000", "deploy-job"]
    finally:
        if process.poll() is None:
            process.kill()
        stranger.kill()
        stranger.wait()
        admin_sql(
            lab,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'SELECT pg_sleep%'",
            fresh_db,
        )


# Started by a custom command in a session of its own, it outlives the command (the run ends it last of all):
# two connections, one kept busy and one idle; when the busy one is ended, the idle one starts new work.
_LINGERER = """
import os, sys, psycopg2
busy, idle = psycopg2.connect(os.environ["DATABASE_URL"]), psycopg2.connect(os.environ["DATABASE_URL"])
idle.autocommit = True  # idle, not idle in a transaction
idle.cursor().execute("SELECT 1")
print("connected", flush=True)
try:
    busy.cursor().execute("SELECT pg_sleep(60)")
except Exception:
    pass
idle.cursor().execute("LOCK TABLE django_migrations IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)")
"""


def test_a_process_the_command_left_behind_gets_nothing_more_through(base_inputs, lab, fresh_db, tmp_path) -> None:
    script, log = tmp_path / "lingerer.py", tmp_path / "lingerer.log"
    script.write_text(_LINGERER)
    migrated = finish_action(start_action({**base_inputs, "command": "migrate"}, tmp_path / "m"), tmp_path / "m", 0.0)
    assert migrated.returncode == 0, migrated.explain()
    command = (
        f"bash -c 'setsid {lab['runner_python']} {script} </dev/null >{log} 2>&1 & "
        f"until grep -q connected {log}; do sleep 0.1; done; sleep 1'"
    )
    inputs = {**base_inputs, "command": "custom", "args": command}
    run = finish_action(start_action(inputs, tmp_path / "c"), tmp_path / "c", time.monotonic())
    assert run.returncode == 0, run.explain()
    assert "command: ended 1 session(s) it left busy on the server" in run.stdout, run.explain()
    time.sleep(1)
    left = admin_sql(
        lab,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'bastion-migrate command %'",
        fresh_db,
    )
    assert left == "0", f"sessions of the command outlived the run\n{log.read_text()}"
    assert sleepers(lab, fresh_db) == []


# A command that ignores SIGTERM (the action's stop then takes its 3 s grace) and runs a long statement.
_STUBBORN = """
import os, signal, time, psycopg2
signal.signal(signal.SIGTERM, signal.SIG_IGN)
connection = psycopg2.connect(os.environ["DATABASE_URL"])
try:
    connection.cursor().execute("SELECT pg_sleep(60)")
except Exception:
    pass
time.sleep(60)
"""


def test_a_lost_lock_ends_the_statement_before_the_command_is_stopped(base_inputs, lab, fresh_db, tmp_path) -> None:
    """Another run may take the lock as soon as it is lost: the command's statement is ended at once, not
    after the command has been stopped (which a command ignoring SIGTERM makes wait for its grace)."""
    script = tmp_path / "stubborn.py"
    script.write_text(_STUBBORN)
    inputs = {**base_inputs, "command": "custom", "args": f"{lab['runner_python']} {script}"}
    started = time.monotonic()
    process = start_action(inputs, tmp_path / "run")
    try:
        wait_for(lambda: sleepers(lab, fresh_db), "the command's statement", 60)
        [command] = [pid for pid in processes_mentioning(str(script)) if str(script) in psutil.Process(pid).cmdline()]
        lose_the_lock(lab, fresh_db)
        wait_for(lambda: not sleepers(lab, fresh_db), "the statement ended", 15)
        assert psutil.pid_exists(command), "the statement outlived the command: it was ended only after the stop"
        run = finish_action(process, tmp_path / "run", started, timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert_failed_in(run, "lock")
    assert "command: ended 1 session(s) it left busy on the server" in run.stdout, run.explain()
