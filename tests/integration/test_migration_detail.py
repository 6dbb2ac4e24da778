"""Per-migration detail against the lab: Django's own timings, planned operations, and show-sql's SQL.

The action's entry point runs as the runner runs it (``action``); its ``debug`` lines say what the
run's results hold. ``results`` runs the same pipeline in a process of its own and hands back the
result fields themselves, for what a log line cannot carry (the SQL).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
from support import ROOT, SAMPLE_MIGRATIONS, action_env, admin_sql, with_docker

# Runs the real pipeline (settings from INPUT_*, the lab's tunnel, database and runner) and prints the
# result fields on its last line.
RESULTS = """\
import asyncio, json, os, sys
from bastion_action import pipeline, settings
from bastion_action.gha import Console
from bastion_action.inputs import raw_from_environ
parsed = settings.parse(raw_from_environ(os.environ), os.environ)
console = Console({}, sys.stderr)
console.mask(parsed.secrets)
run = asyncio.run(pipeline.execute(parsed, console))
targets = run.targets or [run]
print(json.dumps({
    (target.database or ""): {
        "result": target.result.value, "seconds": target.migration_seconds, "planned": target.planned,
        "sql": target.sql,
    }
    for target in targets
}))
"""

TIMING = re.compile(
    r"^::debug::(?:\[(?P<db>[^\]]+)\] )?migration (?P<key>\S+) (?P<done>applied|faked|unapplied) in (?P<s>[0-9.]+) s$"
)


def timings(stdout: str) -> dict[str, tuple[str, float]]:
    found = {}
    for line in stdout.splitlines():
        match = TIMING.match(line)
        if match:
            found[match["key"]] = (match["done"], float(match["s"]))
    return found


def results(inputs: dict[str, str], tmp_path) -> dict[str, dict[str, Any]]:
    workdir = tmp_path / "results"
    workdir.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", RESULTS],
        cwd=ROOT,
        env=action_env(inputs, workdir),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_lightweight_migrate_times_each_migration_at_verbosity_2(action, base_inputs, lab) -> None:
    run = action({**base_inputs, "command": "migrate", "debug": "true"})
    assert run.returncode == 0, run.explain()
    assert f"::group::{lab['runner_python']} manage.py migrate --noinput --fake-initial -v 2" in run.stdout
    assert "Running post-migrate handlers for application audit" in run.stdout  # verbosity 2 took effect
    found = timings(run.stdout)
    assert sorted(found) == sorted(SAMPLE_MIGRATIONS), run.explain()
    assert all(done == "applied" and 0 <= seconds < 30 for done, seconds in found.values())
    # what else reads the output at verbosity 2 is unchanged
    assert sorted(json.loads(run.outputs["applied"])) == sorted(SAMPLE_MIGRATIONS)
    assert run.outputs["pending-count"] == "0"
    assert run.outputs["faked-count"] == "0"
    assert "::group::show-sql" not in run.stdout  # off by default: no extra process


def test_a_failing_migration_at_verbosity_2_is_still_named_and_the_ones_before_it_timed(action, base_inputs) -> None:
    run = action({**base_inputs, "command": "migrate", "debug": "true"}, {"SAMPLE_MIGRATION_FAIL": "1"})
    assert run.returncode == 1, run.explain()
    assert "while applying audit.0002_test_hooks" in run.stdout
    assert sorted(timings(run.stdout)) == sorted(set(SAMPLE_MIGRATIONS) - {"audit.0002_test_hooks"})
    assert json.loads(run.outputs["pending"]) == ["audit.0002_test_hooks"]


def test_a_verbosity_in_args_wins(action, base_inputs) -> None:
    run = action({**base_inputs, "command": "migrate", "args": "--verbosity 1", "debug": "true"})
    assert run.returncode == 0, run.explain()
    assert "Running post-migrate handlers" not in run.stdout
    assert timings(run.stdout) == {}
    assert run.outputs["applied-count"] == str(len(SAMPLE_MIGRATIONS))


def test_docker_migrate_times_each_migration_in_the_image(action, base_inputs, lab) -> None:
    run = action({**with_docker(base_inputs, lab), "command": "migrate", "debug": "true"})
    assert run.returncode == 0, run.explain()
    assert sorted(timings(run.stdout)) == sorted(SAMPLE_MIGRATIONS), run.explain()


def test_plan_keeps_each_pending_migrations_operations(action, base_inputs, tmp_path) -> None:
    partly = action({**base_inputs, "command": "migrate", "args": "catalog 0001"})
    assert partly.returncode == 0, partly.explain()
    run = action({**base_inputs, "command": "plan", "debug": "true"})
    assert run.returncode == 0, run.explain()
    assert "::debug::plan: 5 migration(s), 6 operation(s)" in run.stdout, run.explain()
    assert "::debug::plan: orders.0001_initial: 2 operation(s)" in run.stdout
    got = results({**base_inputs, "command": "plan"}, tmp_path)[""]
    assert got["planned"] == {
        "orders.0001_initial": ["Create model Status", "Create model Order"],
        "orders.0002_seed_statuses": ["Raw Python operation"],
        "catalog.0002_product_sku": ["Add field sku to product"],
        "audit.0001_initial": ["Create model AuditEvent"],
        "audit.0002_test_hooks": ["Raw Python operation"],
    }
    assert got["sql"] is None  # show-sql is off
    assert got["seconds"] == {}


def test_show_sql_on_check_collects_each_pending_migrations_sql(action, base_inputs, lab, fresh_db, tmp_path) -> None:
    inputs = {**base_inputs, "command": "check", "show-sql": "true"}
    run = action({**inputs, "debug": "true"})
    assert run.returncode == 1, run.explain()  # pending: the gate fails, and the SQL is there for the reviewer
    assert "::group::show-sql: sqlmigrate of 6 migration(s)" in run.stdout
    assert "bastion-migrate-sql-" not in run.stdout, "the step's result lines are not shown"
    assert re.search(r"::debug::show-sql: catalog\.0001_initial [0-9,]+ B, ", run.stdout), run.explain()
    got = results(inputs, tmp_path)[""]
    assert got["result"] == "pending"
    assert (
        list(got["sql"])
        == list(got["planned"])
        == [
            "catalog.0001_initial",
            "orders.0001_initial",
            "orders.0002_seed_statuses",
            "catalog.0002_product_sku",
            "audit.0001_initial",
            "audit.0002_test_hooks",
        ]
    )
    assert 'CREATE TABLE "catalog_product"' in got["sql"]["catalog.0001_initial"]
    assert 'ALTER TABLE "catalog_product" ADD COLUMN "sku"' in got["sql"]["catalog.0002_product_sku"]
    assert "Raw Python operation" in got["sql"]["orders.0002_seed_statuses"]
    assert admin_sql(lab, "SELECT to_regclass('catalog_product') IS NULL", fresh_db) == "t", (
        "sqlmigrate changed nothing"
    )


@pytest.mark.parametrize("mode", ["lightweight", "docker"])
def test_show_sql_on_migrate_collects_what_it_applied(action, base_inputs, lab, tmp_path, mode) -> None:
    inputs = {**base_inputs, "command": "migrate", "show-sql": "true"}
    if mode == "docker":
        inputs = with_docker(inputs, lab)
    partly = action({**inputs, "args": "catalog 0001", "show-sql": "false"})
    assert partly.returncode == 0, partly.explain()
    got = results(inputs, tmp_path)[""]
    assert got["result"] == "success"
    applied = [key for key in SAMPLE_MIGRATIONS if key != "catalog.0001_initial"]
    assert sorted(got["sql"]) == sorted(applied) == sorted(got["seconds"])
    assert 'CREATE TABLE "orders_order"' in got["sql"]["orders.0001_initial"]


def test_show_sql_failing_does_not_fail_the_run(action, base_inputs, lab, tmp_path) -> None:
    # A manage.py whose `shell` is broken: the command itself (migrate) still works.
    project = tmp_path / "project"
    subprocess.run(["cp", "-r", lab["sample_project"], str(project)], check=True)
    manage = project / "manage.py"
    manage.write_text(
        manage.read_text().replace(
            "def main():", "def main():\n    if 'shell' in sys.argv:\n        sys.exit('no shell here')\n", 1
        )
    )
    assert "no shell here" in manage.read_text()
    run = action({**base_inputs, "command": "migrate", "show-sql": "true", "working-directory": str(project)})
    assert run.returncode == 0, run.explain()
    assert run.outputs["result"] == "success"
    warnings = [line for line in run.annotations if line.startswith("::warning")]
    assert any("show-sql: no SQL collected: sqlmigrate exited with code 1" in line for line in warnings), run.explain()


def test_fan_out_fills_each_databases_own_detail(action, base_inputs, fresh_db, tmp_path) -> None:
    inputs = {**base_inputs, "command": "migrate", "db-name": "", "databases": fresh_db, "show-sql": "true"}
    run = action({**inputs, "debug": "true", "command": "plan"})
    assert run.returncode == 0, run.explain()
    assert f"::debug::[{fresh_db}] plan: 6 migration(s), 7 operation(s)" in run.stdout, run.explain()
    got = results(inputs, tmp_path)
    assert list(got) == [fresh_db]
    assert sorted(got[fresh_db]["seconds"]) == sorted(SAMPLE_MIGRATIONS) == sorted(got[fresh_db]["sql"])
    assert 'CREATE TABLE "audit_auditevent"' in got[fresh_db]["sql"]["audit.0001_initial"]
