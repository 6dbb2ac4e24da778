"""The walking skeleton against the real lab: tunnel -> probe -> lightweight Django command."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from support import (
    SAMPLE_MIGRATIONS,
    admin_sql,
    applied_rows,
    assert_failed_in,
    finish_action,
    listening,
    processes_mentioning,
    start_action,
)


def test_lab_password_has_the_characters_that_break_the_recipe(lab) -> None:
    assert set(":@/#%") <= set(lab["db_password"])


def test_probe_with_password_auth(action, base_inputs) -> None:
    run = action(base_inputs)
    assert run.returncode == 0, run.explain()
    assert run.outputs["result"] == "success"
    assert run.outputs["exit-code"] == "0"
    assert re.fullmatch(r"[0-9]+", run.outputs["tunnel-port"])
    assert run.outputs["server-version"].startswith("15")
    assert re.fullmatch(r"[0-9]+\.[0-9]{3}", run.outputs["duration-seconds"])
    assert 0 < float(run.outputs["duration-seconds"]) <= run.seconds, "the action's own time, within the process's"
    assert "PostgreSQL 15" in run.summary
    assert "TLS on" in run.summary
    assert "| tunnel |" in run.summary
    assert run.stdout.startswith("::add-mask::"), "masks come before anything else"


def test_an_unknown_event_loop_name_is_warned_about_and_the_run_goes_on(action, base_inputs) -> None:
    run = action(base_inputs, extra_env={"BASTION_MIGRATE_EVENT_LOOP": "asycnio", "RUNNER_DEBUG": "1"})
    assert run.returncode == 0, run.explain()
    warning = "BASTION_MIGRATE_EVENT_LOOP: expected asyncio or uvloop, got 'asycnio'; running on uvloop"
    assert run.annotations == [f"::warning title=bastion-migrate::{warning}"], run.explain()
    assert "::debug::event loop: uvloop" in run.stdout


def test_probe_with_key_auth_and_fingerprint_only(action, base_inputs, lab) -> None:
    inputs = {
        **base_inputs,
        "ssh-user": lab["ssh_key_user"],
        "ssh-password": "",
        "ssh-private-key": Path(lab["ssh_private_key_path"]).read_text(),
        "ssh-known-hosts": "",
        "ssh-host-fingerprint": lab["ssh_host_fingerprint"],
    }
    run = action(inputs)
    assert run.returncode == 0, run.explain()
    assert run.outputs["result"] == "success"


def test_encrypted_key_with_passphrase(action, base_inputs, lab) -> None:
    inputs = {
        **base_inputs,
        "ssh-user": lab["ssh_key_user"],
        "ssh-password": "",
        "ssh-private-key": Path(lab["ssh_encrypted_key_path"]).read_text(),
        "ssh-passphrase": lab["ssh_key_passphrase"],
    }
    run = action(inputs)
    assert run.returncode == 0, run.explain()
    wrong = action({**inputs, "ssh-passphrase": "not-the-passphrase"})
    assert_failed_in(wrong, "settings")
    assert "ssh-passphrase" in wrong.annotations[0]


def test_wrong_host_key_is_refused_and_the_presented_key_shown(action, base_inputs, lab) -> None:
    run = action({**base_inputs, "ssh-known-hosts": lab["ssh_wrong_known_hosts"]})
    assert_failed_in(run, "tunnel")
    assert "not trusted" in run.annotations[0]
    assert lab["ssh_host_fingerprint"] in run.annotations[0]
    assert "tunnel-port" not in run.outputs
    wrong_fp = action({**base_inputs, "ssh-known-hosts": "", "ssh-host-fingerprint": lab["ssh_wrong_host_fingerprint"]})
    assert_failed_in(wrong_fp, "tunnel")


def test_wrong_ssh_password_fails_in_the_tunnel_stage(action, base_inputs) -> None:
    run = action({**base_inputs, "ssh-password": "definitely-wrong-password"})
    assert_failed_in(run, "tunnel")
    user, host, port = base_inputs["ssh-user"], base_inputs["ssh-host"], base_inputs["ssh-port"]
    assert (
        f"::authentication to {user}@{host}:{port} was refused "
        "(ssh-user from the step's input ssh-user; ssh-password from the step's input ssh-password)"
        "%0AHint: Check ssh-user"
    ) in run.annotations[0]


def test_insecure_skip_warns(action, base_inputs) -> None:
    run = action({**base_inputs, "ssh-known-hosts": "", "ssh-insecure-skip-host-key-check": "true"})
    assert run.returncode == 0, run.explain()
    warnings = [line for line in run.annotations if line.startswith("::warning")]
    assert len(warnings) == 1
    assert "man in the middle" in warnings[0]


def test_bad_input_is_named_before_any_connection(action, base_inputs) -> None:
    # The bastion address is unroutable: had the action connected first, it would hang until connect-timeout.
    inputs = {**base_inputs, "ssh-host": "192.0.2.1", "connect-timeout": "30", "db-port": "five"}
    run = action(inputs)
    assert_failed_in(run, "settings")
    assert "db-port: expected a port number 1-65535, got 'five'" in run.annotations[0]
    assert run.seconds < 5
    missing = action({**base_inputs, "ssh-host": ""})
    assert_failed_in(missing, "settings")
    assert "ssh-host: required" in missing.annotations[0]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_showmigrations_then_migrate_then_nothing_left(action, base_inputs, lab, fresh_db, loop) -> None:
    # The whole path on the run's event loop (uvloop) and on the one BASTION_MIGRATE_EVENT_LOOP falls back to.
    env = {"BASTION_MIGRATE_EVENT_LOOP": loop, "RUNNER_DEBUG": "1"}
    show = action({**base_inputs, "command": "showmigrations"}, extra_env=env)
    assert f"::debug::event loop: {loop}" in show.stdout
    assert show.returncode == 0, show.explain()
    assert "[ ] 0001_initial" in show.stdout
    assert applied_rows(lab, fresh_db) == 0

    migrate = action({**base_inputs, "command": "migrate"}, extra_env=env)
    assert migrate.returncode == 0, migrate.explain()
    assert migrate.outputs["result"] == "success"
    assert migrate.stdout.count("Applying ") == len(SAMPLE_MIGRATIONS)
    assert applied_rows(lab, fresh_db) == len(SAMPLE_MIGRATIONS)
    seeded = admin_sql(lab, "SELECT string_agg(code, ',' ORDER BY code) FROM orders_status", fresh_db)
    assert seeded == "cancelled,new,paid,shipped", "the data migration ran"

    again = action({**base_inputs, "command": "migrate"}, extra_env=env)
    assert again.returncode == 0, again.explain()
    assert "No migrations to apply." in again.stdout
    assert applied_rows(lab, fresh_db) == len(SAMPLE_MIGRATIONS)

    after = action({**base_inputs, "command": "showmigrations"}, extra_env=env)
    assert "[ ]" not in after.stdout
    assert after.stdout.count("[X]") == len(SAMPLE_MIGRATIONS)


def test_failing_migration_fails_in_the_command_stage(action, base_inputs) -> None:
    run = action({**base_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_FAIL=1"})
    assert_failed_in(run, "command")
    assert run.outputs["exit-code"] == "1"
    assert "failing on purpose" in run.summary
    assert "Last " in run.summary


def test_whole_run_timeout_names_the_stage(action, base_inputs) -> None:
    run = action({**base_inputs, "command": "migrate", "timeout": "4", "extra-env": "SAMPLE_MIGRATION_SLEEP=60"})
    assert_failed_in(run, "command")
    assert "timed out: the whole run is limited to 4 s (timeout) and the command stage was still" in run.annotations[0]
    assert run.seconds < 20


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_cancel_mid_migration_releases_everything(base_inputs, fresh_db, tmp_path, signum) -> None:
    inputs = {**base_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_SLEEP=60"}
    started = time.monotonic()
    process = start_action(inputs, tmp_path)
    deadline = time.monotonic() + 60
    while len(processes_mentioning(fresh_db)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    children = [pid for pid in processes_mentioning(fresh_db) if pid != process.pid]
    assert children, "the migration never started"
    time.sleep(1)
    os.kill(process.pid, signum)
    cancelled_at = time.monotonic()
    run = finish_action(process, tmp_path, started, timeout=30)
    assert time.monotonic() - cancelled_at < 10, run.explain()
    assert run.returncode == 128 + signum, run.explain()
    assert run.outputs["result"] == "failure"
    assert processes_mentioning(fresh_db) == [], "a child of the run outlived it"
    assert not listening(int(run.outputs["tunnel-port"])), "the tunnel's listener outlived the run"


def test_cancel_ends_children_that_left_the_process_group(base_inputs, tmp_path) -> None:
    marker = f"{int(time.time() * 1000) % 100000 + 200000}"
    script = f"setsid sleep {marker} & setsid sh -c 'sleep {marker}' & sleep 60"
    inputs = {**base_inputs, "command": "custom", "args": f'sh -c "{script}"'}
    started = time.monotonic()
    process = start_action(inputs, tmp_path)
    deadline = time.monotonic() + 30
    while len(processes_mentioning(f"sleep\x00{marker}")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(processes_mentioning(f"sleep\x00{marker}")) >= 2, "the daemons never started"
    os.kill(process.pid, signal.SIGTERM)
    run = finish_action(process, tmp_path, started, timeout=30)
    assert run.returncode == 128 + signal.SIGTERM, run.explain()
    assert run.outputs["exit-code"] == str(128 + signal.SIGTERM)
    assert processes_mentioning(f"sleep\x00{marker}") == [], "a daemon of the command outlived the run"
    assert "Traceback" not in run.stderr
    assert "Exception ignored" not in run.stderr, run.stderr
