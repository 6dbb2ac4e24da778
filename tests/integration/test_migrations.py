"""Migration intelligence and safety against the lab: plan, check, structured results, the lock."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from support import (
    SAMPLE_MIGRATIONS,
    admin_sql,
    finish_action,
    processes_mentioning,
    recorded_migrations,
    start_action,
    start_lock_holder,
    with_docker,
)

SAMPLE = list(SAMPLE_MIGRATIONS)


def test_check_plan_migrate_check(action, base_inputs, lab, fresh_db) -> None:
    check = action({**base_inputs, "command": "check"})
    assert check.returncode == 1, check.explain()
    assert check.outputs["exit-code"] == "1"
    assert check.outputs["result"] == "pending"
    assert check.outputs["pending-count"] == "6"
    assert sorted(json.loads(check.outputs["pending"])) == sorted(SAMPLE)
    errors = [line for line in check.annotations if line.startswith("::error")]
    assert len(errors) == 1
    assert "6 migration(s) not applied" in errors[0]
    assert "catalog.0001_initial" in errors[0]
    assert "**Pending:**" in check.summary

    plan = action({**base_inputs, "command": "plan"})
    assert plan.returncode == 0, plan.explain()
    assert plan.outputs["result"] == "success"
    assert plan.outputs["pending-count"] == "6"
    assert plan.outputs["applied-count"] == "0"
    assert recorded_migrations(lab, fresh_db) == [], "plan changes nothing"

    migrate = action({**base_inputs, "command": "migrate"})
    assert migrate.returncode == 0, migrate.explain()
    assert json.loads(migrate.outputs["applied"]) == recorded_migrations(lab, fresh_db)
    assert sorted(json.loads(migrate.outputs["applied"])) == sorted(SAMPLE)
    assert migrate.outputs["applied-count"] == "6"
    assert migrate.outputs["pending-count"] == "0"
    assert re.fullmatch(r"[0-9]+\.[0-9]{3}", migrate.outputs["lock-wait-seconds"])
    assert float(migrate.outputs["lock-wait-seconds"]) < 1, "nobody else holds the lock: taken at once"
    state = json.loads(migrate.outputs["migrations"])
    assert state["catalog"][0] == {"name": "0001_initial", "applied": True, "state": "applied"}
    assert "✅ applied by this run" in migrate.summary

    again = action({**base_inputs, "command": "check"})
    assert again.returncode == 0, again.explain()
    assert again.outputs["result"] == "success"
    assert again.outputs["pending-count"] == "0"


def test_showmigrations_state_and_targeted_migrate(action, base_inputs) -> None:
    partial = action({**base_inputs, "command": "migrate", "args": "catalog"})
    assert partial.returncode == 0, partial.explain()
    assert json.loads(partial.outputs["applied"]) == ["catalog.0001_initial", "catalog.0002_product_sku"]
    assert sorted(json.loads(partial.outputs["pending"])) == sorted(SAMPLE[2:])

    show = action({**base_inputs, "command": "showmigrations"})
    assert show.returncode == 0, show.explain()
    assert show.outputs["applied-count"] == "0"
    assert show.outputs["pending-count"] == "4"
    state = json.loads(show.outputs["migrations"])
    assert [m["applied"] for m in state["catalog"]] == [True, True]
    assert [m["applied"] for m in state["orders"]] == [False, False]


def test_failed_migrate_names_the_migration_and_what_is_left(action, base_inputs, lab, fresh_db) -> None:
    run = action({**base_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_FAIL=1"})
    assert run.returncode == 1, run.explain()
    assert run.outputs["exit-code"] == "1"
    assert "while applying audit.0002_test_hooks" in run.annotations[0]
    assert json.loads(run.outputs["pending"]) == ["audit.0002_test_hooks"]
    assert json.loads(run.outputs["applied"]) == recorded_migrations(lab, fresh_db)
    assert "| failed on | `audit.0002_test_hooks` |" in run.summary


@pytest.mark.parametrize("mode", ["lightweight", "docker"])
def test_custom_command_exit_code_and_database_url(action, base_inputs, lab, mode) -> None:
    inputs = {**base_inputs, "command": "custom"}
    if mode == "docker":
        inputs = with_docker(inputs, lab)
    script = (
        "import os, sys, urllib.parse as u; p = u.urlsplit(os.environ['DATABASE_URL']); "
        "print('custom sees', p.scheme, p.hostname, p.path); sys.exit(3)"
    )
    python = lab["runner_python"] if mode == "lightweight" else "python"
    run = action({**inputs, "args": f'{python} -c "{script}"'})
    assert run.outputs["exit-code"] == "3", run.explain()
    assert run.returncode == 3
    assert f"custom sees postgresql 127.0.0.1 /{base_inputs['db-name']}" in run.stdout
    assert run.outputs["result"] == "failure"
    assert "pending" not in run.outputs, "custom commands have no structured migration outputs"
    assert "lock-wait-seconds" in run.outputs, "custom commands take the lock by default"


def test_custom_needs_args(action, base_inputs) -> None:
    run = action({**base_inputs, "command": "custom"})
    assert run.returncode == 1
    assert "args: required with command: custom" in run.annotations[0]


def test_two_concurrent_migrations_apply_each_migration_once(base_inputs, lab, fresh_db, tmp_path, secrets) -> None:
    inputs = {**base_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_SLEEP=2"}
    started = time.monotonic()
    processes = [start_action(inputs, tmp_path / f"run{n}") for n in range(2)]
    runs = [finish_action(process, tmp_path / f"run{n}", started) for n, process in enumerate(processes)]
    for run in runs:
        assert run.returncode == 0, run.explain()
        assert not run.leaks(secrets)
    applied = [json.loads(run.outputs["applied"]) for run in runs]
    assert sorted(applied, key=len) == [[], recorded_migrations(lab, fresh_db)], "one applied all, the other none"
    waits = sorted(float(run.outputs["lock-wait-seconds"]) for run in runs)
    assert waits[1] > 1.5, "the second run waited for the first"
    waiter = runs[0] if float(runs[0].outputs["lock-wait-seconds"]) == waits[1] else runs[1]
    assert "lock: waiting for bastion-migrate" in waiter.stdout, "the holder is named while waiting"
    assert recorded_migrations(lab, fresh_db) == [*dict.fromkeys(recorded_migrations(lab, fresh_db))], (
        "no migration recorded twice"
    )


def test_lock_timeout_names_the_holder(action, base_inputs, lab, fresh_db) -> None:
    holder = start_lock_holder(lab, fresh_db, seconds=20)
    try:
        time.sleep(1)
        run = action({**base_inputs, "command": "migrate", "lock-timeout": "2"})
    finally:
        # Killing the client (runuser) would leave psql's backend asleep with the lock; end the backend.
        admin_sql(lab, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'other-deploy'")
        holder.wait(timeout=30)
    assert run.returncode == 1, run.explain()
    assert run.annotations[0].startswith("::error title=bastion-migrate%3A lock failed::")
    assert "held by other-deploy" in run.annotations[0]
    assert recorded_migrations(lab, fresh_db) == [], "nothing ran without the lock"


def test_killed_run_does_not_leave_the_lock_held(action, base_inputs, lab, fresh_db, tmp_path) -> None:
    slow = {**base_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_SLEEP=30"}
    process = start_action(slow, tmp_path / "killed")
    deadline = time.monotonic() + 60
    while "audit.0001_initial" not in recorded_migrations(lab, fresh_db) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    for pid in processes_mentioning(fresh_db):  # the orphaned manage.py of the killed run
        os.kill(pid, signal.SIGKILL)
    run = action({**base_inputs, "command": "migrate", "lock-timeout": "20"})
    assert run.returncode == 0, run.explain()
    assert float(run.outputs["lock-wait-seconds"]) < 15
    assert recorded_migrations(lab, fresh_db) == [*dict.fromkeys(recorded_migrations(lab, fresh_db))]
    assert sorted(recorded_migrations(lab, fresh_db)) == sorted(SAMPLE)


def test_application_name_is_visible_to_operators(base_inputs, lab, tmp_path) -> None:
    slow = {**base_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_SLEEP=4"}
    process = start_action(slow, tmp_path / "run")
    names: set[str] = set()

    def watch() -> None:
        for _ in range(40):
            names.update(admin_sql(lab, "SELECT application_name FROM pg_stat_activity").splitlines())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    watcher.join()
    run = finish_action(process, tmp_path / "run", time.monotonic())
    assert run.returncode == 0, run.explain()
    assert "bastion-migrate" in names
    assert Path(tmp_path / "run" / "summary").read_text()


def test_without_the_lock_concurrent_migrations_collide(base_inputs, lab, fresh_db, tmp_path) -> None:
    """The control experiment: with `lock: false`, Django alone does not stop two runs."""
    inputs = {**base_inputs, "command": "migrate", "lock": "false", "extra-env": "SAMPLE_MIGRATION_SLEEP=2"}
    started = time.monotonic()
    processes = [start_action(inputs, tmp_path / f"run{n}") for n in range(2)]
    runs = [finish_action(process, tmp_path / f"run{n}", started) for n, process in enumerate(processes)]
    rows = recorded_migrations(lab, fresh_db)
    failed = [run for run in runs if run.returncode != 0]
    recorded_twice = len(rows) != len(set(rows))
    assert failed or recorded_twice, "two unlocked runs should fail or apply a migration twice"
    assert all("lock-wait-seconds" not in run.outputs for run in runs)
    for run in failed:
        assert run.outputs["result"] == "failure"
