"""Fan-out: several databases behind one bastion, over one SSH connection, with bounded concurrency."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

import pytest
from support import admin_sql, finish_action, owned_databases, start_action, table_locked, unique, with_docker

from bastion_action import summary

HELD_SECONDS = 7.0  # how long the locks keep the slow databases' commands waiting


def accepted_logins(lab) -> int:
    return Path(lab["sshd_log"]).read_text(errors="replace").count(f"Accepted password for {lab['ssh_password_user']}")


@pytest.fixture
def databases(lab):
    with owned_databases(lab, [unique("fan") for _ in range(3)]) as names:
        yield names


def recorded(lab, database: str) -> int:
    return int(admin_sql(lab, "SELECT count(*) FROM django_migrations", database))


def test_fan_out_migrates_each_database_over_one_connection(action, base_inputs, lab, databases) -> None:
    logins = accepted_logins(lab)
    inputs = {**base_inputs, "command": "migrate", "db-name": "", "databases": "\n".join(databases)}
    run = action({**inputs, "concurrency": "2"})
    assert run.returncode == 0, run.explain()
    assert accepted_logins(lab) - logins == 1, "one SSH connection serves every database"
    per_database = json.loads(run.outputs["databases"])
    assert sorted(per_database) == sorted(databases)
    for name in databases:
        assert per_database[name]["result"] == "success"
        assert per_database[name]["applied-count"] == 6
        assert recorded(lab, name) == 6
    assert run.outputs["applied-count"] == "18"
    assert run.outputs["result"] == "success"
    assert "**3 databases** over one SSH connection" in run.summary
    for name in databases:
        assert f"| `{name}` | ✅ success | 6 | 0 |" in run.summary
        assert f"::group::[{name}] " in run.stdout, "each database's output is its own group"

    again = action({**inputs, "command": "check"})
    assert again.returncode == 0, again.explain()
    assert again.outputs["pending-count"] == "0"


def test_fan_out_reports_each_database_failure(action, base_inputs, lab, databases) -> None:
    missing = unique("absent")
    targets = [databases[0], missing, f"{lab['db_host']}:{lab['db_port']}/{databases[1]}"]
    run = action({**base_inputs, "command": "migrate", "db-name": "", "databases": ",".join(targets)})
    assert run.returncode == 1, run.explain()
    assert run.outputs["result"] == "failure"
    errors = [line for line in run.annotations if line.startswith("::error")]
    assert len(errors) == 1, run.explain()
    assert "1 of 3 databases did not succeed" in errors[0]
    per_database = json.loads(run.outputs["databases"])
    assert per_database[missing]["result"] == "failure"
    assert per_database[missing]["error"] == (
        f"probe: database '{missing}' does not exist (databases from the step's input databases)"
    )
    assert per_database[databases[0]]["applied-count"] == 6
    assert per_database[databases[1]]["applied-count"] == 6
    assert summary.text(f"probe: database '{missing}' does not exist") in run.summary


def test_fan_out_check_is_pending_when_any_database_is(action, base_inputs, lab, databases) -> None:
    action({**base_inputs, "command": "migrate", "db-name": databases[0]})
    run = action({**base_inputs, "command": "check", "db-name": "", "databases": ",".join(databases[:2])})
    assert run.returncode == 1, run.explain()
    assert run.outputs["result"] == "pending"
    per_database = json.loads(run.outputs["databases"])
    assert per_database[databases[0]]["result"] == "success"
    assert per_database[databases[1]]["result"] == "pending"
    assert run.outputs["pending-count"] == "6"
    assert recorded(lab, databases[0]) == 6


def test_fan_out_in_docker_mode_pulls_once(action, base_inputs, lab, databases) -> None:
    inputs = {**with_docker(base_inputs, lab), "command": "migrate", "db-name": "", "databases": ",".join(databases)}
    run = action(inputs)
    assert run.returncode == 0, run.explain()
    prepared = [line for line in run.stdout.splitlines() if line.startswith("image: ") and " from the " not in line]
    assert len(prepared) == 1, "the image is prepared once for every database"
    assert run.outputs["image-digest"].startswith("sha256:")
    for name in databases:
        assert recorded(lab, name) == 6


@pytest.fixture
def secrets(secrets, lab):  # the registry password joins the scanned secrets
    return [*secrets, lab["registry_password"]]


def test_fan_out_read_only_commands_share_one_django_process(action, base_inputs, databases) -> None:
    """Resident processes serve the databases in turn (concurrency 1), each with its own state and output."""
    action({**base_inputs, "command": "migrate", "db-name": databases[1]})
    missing = unique("absent")
    targets = [databases[0], missing, databases[1], databases[2]]
    inputs = {**base_inputs, "command": "showmigrations", "db-name": "", "databases": ",".join(targets)}
    run = action({**inputs, "concurrency": "1", "debug": "true"})
    assert run.returncode == 1, run.explain()
    per_database = json.loads(run.outputs["databases"])
    assert per_database[missing]["result"] == "failure"
    assert [per_database[name]["pending-count"] for name in databases] == [6, 0, 6]
    assert [per_database[name]["result"] for name in databases] == ["success"] * 3
    # The missing database's command was stopped mid-request, and its process with it: a second one served the rest.
    assert "resident processes: 2 started, 3 command(s) served, at most 1 at once" in run.stdout, run.explain()
    for name in databases:
        assert f"::group::[{name}] " in run.stdout
    assert "bastion-migrate-resident-" not in run.stdout, "the end-of-command lines are never shown"


def test_fan_out_starts_no_more_resident_processes_than_the_runner_has_cpus(action, base_inputs, databases) -> None:
    """A Django start-up is CPU work: concurrency 8 on this runner starts at most one process per CPU."""
    inputs = {**base_inputs, "command": "showmigrations", "db-name": "", "databases": ",".join(databases)}
    run = action({**inputs, "concurrency": "8", "debug": "true"})
    assert run.returncode == 0, run.explain()
    cpus = len(os.sched_getaffinity(0))  # the action runs on this machine, with this test's affinity
    limit = min(8, cpus)
    found = re.search(
        rf"resident processes: (\d+) started, 3 command\(s\) served, at most {limit} at once "
        rf"\(8 for databases that waited 2 s; concurrency 8, {cpus} CPUs\)",
        run.stdout,
    )
    assert found, run.explain()
    assert int(found.group(1)) <= min(limit, len(databases))


def test_databases_held_by_the_server_do_not_hold_up_the_others(action, base_inputs, lab, tmp_path) -> None:
    """As many databases as the runner has CPUs keep their resident processes waiting on a table another
    session has locked: the next database waits for a free process no longer than the patience (2 s),
    then gets one of its own, and is done long before the locks go."""
    cpus = len(os.sched_getaffinity(0))
    with owned_databases(lab, [unique("held") for _ in range(cpus + 1)]) as names:
        *held, free = names
        inputs = {**base_inputs, "db-name": "", "databases": "\n".join(names), "concurrency": str(cpus + 1)}
        assert action({**inputs, "command": "migrate"}).returncode == 0
        with contextlib.ExitStack() as locks:
            for name in held:
                locks.enter_context(table_locked(lab, name, "django_migrations"))
            process = start_action({**inputs, "command": "showmigrations", "debug": "true"}, tmp_path / "run")
            started = time.monotonic()
            time.sleep(HELD_SECONDS)
        run = finish_action(process, tmp_path / "run", started, timeout=60)
    assert run.returncode == 0, run.explain()
    per_database = json.loads(run.outputs["databases"])
    assert all(per_database[name]["duration-seconds"] >= HELD_SECONDS - 0.5 for name in held), per_database
    assert per_database[free]["duration-seconds"] < HELD_SECONDS - 2, per_database
    assert f"resident processes: {cpus + 1} started, {cpus + 1} command(s) served" in run.stdout, run.explain()


def test_a_name_two_servers_share_keeps_both_results(action, base_inputs, lab, databases) -> None:
    # The same database name on two servers (DigitalOcean calls every cluster's `defaultdb`); here the second
    # "server" is a port nothing listens on. Each result keeps its own key: neither overwrites the other.
    name = databases[0]
    here, nowhere = f"{lab['db_host']}:{lab['db_port']}/{name}", f"{lab['db_host']}:5433/{name}"
    run = action({**base_inputs, "command": "migrate", "db-name": "", "databases": f"{here}\n{nowhere}"})
    assert run.returncode == 1, run.explain()
    per_database = json.loads(run.outputs["databases"])
    assert sorted(per_database) == sorted([here, nowhere])
    assert per_database[here]["result"] == "success"
    assert per_database[here]["applied-count"] == 6
    assert per_database[nowhere]["result"] == "failure"
    assert json.loads(run.outputs["rollback-targets"])[here] == {"audit": "zero", "catalog": "zero", "orders": "zero"}
    assert f"1 of 2 databases did not succeed: {nowhere} (failure)" in run.annotations[0]
    assert f"[{here}] " in run.stdout
    assert recorded(lab, name) == 6
