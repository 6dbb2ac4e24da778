"""The lock is a lease, watched for the whole command; the command's sessions carry server-side bounds."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from support import admin_sql, assert_failed_in, finish_action, start_action, table_locked, wait_for

Lab = dict[str, Any]

# A custom command that keeps a database session open (as a migration would) and then sleeps.
HOLD_A_SESSION = (
    "import os, time, psycopg2; "
    "c = psycopg2.connect(os.environ['DATABASE_URL']); c.cursor().execute('SELECT 1'); "
    "print('connected', flush=True); time.sleep(20)"
)


def lock_holder_pid(lab: Lab, database: str) -> int | None:
    pid = admin_sql(
        lab,
        "SELECT pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 1651733614 AND d.datname = current_database()",
        database,
    )
    return int(pid) if pid else None


def sessions_of(lab: Lab, database: str) -> list[str]:
    """The application names (or ``-``) of every session on ``database`` but the asking one."""
    names = admin_sql(
        lab, "SELECT coalesce(nullif(application_name, ''), '-') FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()", database
    )  # fmt: skip
    return names.splitlines()


def test_a_lost_lock_fails_the_run_at_once_and_cuts_the_commands_sessions(base_inputs, lab, fresh_db, tmp_path):
    inputs = {
        **base_inputs,
        "command": "custom",
        "args": f'{lab["runner_python"]} -c "{HOLD_A_SESSION}"',
    }
    started = time.monotonic()
    process = start_action(inputs, tmp_path)
    try:
        wait_for(lambda: len(sessions_of(lab, fresh_db)) >= 2, "the lock's and the command's sessions", 15)
        time.sleep(1)
        pid = lock_holder_pid(lab, fresh_db)
        assert pid is not None
        admin_sql(lab, f"SELECT pg_terminate_backend({pid})")
        terminated = time.monotonic()
        run = finish_action(process, tmp_path, started, timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert time.monotonic() - terminated < 5, run.explain()
    assert_failed_in(run, "lock")
    assert "was lost: its session was ended" in run.annotations[0], run.explain()
    # The command's own session went with the lock: no other run can migrate alongside it.
    wait_for(lambda: sessions_of(lab, fresh_db) == [], "the sessions to end", 5)


def test_db_lock_timeout_fails_a_migration_that_would_queue_behind_a_long_transaction(
    action, base_inputs, lab, fresh_db
):
    first = action({**base_inputs, "command": "migrate", "args": "catalog 0001"})  # catalog.0002 left to do
    assert first.returncode == 0, first.explain()
    argv = list(lab["db_admin_argv"])
    argv[argv.index("-d") + 1] = fresh_db
    holder = subprocess.Popen(  # a long transaction holding the table catalog.0002 alters
        [*argv, "-c", "LOCK TABLE catalog_product IN ACCESS SHARE MODE; SELECT pg_sleep(30)"],
        env={**os.environ, "PGAPPNAME": "long-report"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: "long-report" in sessions_of(lab, fresh_db), "the long transaction", 15)
        started = time.monotonic()
        run = action({**base_inputs, "command": "migrate", "db-lock-timeout": "2"})
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert_failed_in(run, "command")
    assert waited < 15, run.explain()
    [error] = run.annotations
    assert "lock timeout" in error, run.explain()
    assert "db-lock-timeout" in error, run.explain()


def test_a_probe_waiting_on_another_sessions_lock_says_so(action, base_inputs, lab, fresh_db) -> None:
    first = action({**base_inputs, "command": "migrate"})
    assert first.returncode == 0, first.explain()
    with table_locked(lab, fresh_db, "django_migrations"):  # another session's ACCESS EXCLUSIVE lock
        run = action({**base_inputs, "command": "showmigrations", "connect-timeout": "3"})
    assert_failed_in(run, "probe")
    assert "the database did not answer reading the server's facts within 3 s (connect-timeout)" in run.annotations[0]
    assert "A lock another session holds makes the query wait" in run.annotations[0], run.explain()
