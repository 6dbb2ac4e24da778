"""Rollback targets and command: rollback against the lab: the rows come back exactly, or nothing changes."""

from __future__ import annotations

import json

import pytest
from support import admin_sql, assert_failed_in, assert_report, owned_databases, unique, with_docker

from bastion_action import summary

LEDGER = "SAMPLE_EXTRA_APPS=ledger"


def rows(lab, database: str) -> str:
    """``django_migrations`` as the superuser reads it, in the order recorded; '' before Django created it."""
    if admin_sql(lab, "SELECT to_regclass('django_migrations') IS NOT NULL", database) != "t":
        return ""
    return admin_sql(lab, "SELECT app, name FROM django_migrations ORDER BY id", database)


def migrate_inputs(base_inputs) -> dict[str, str]:
    return {**base_inputs, "command": "migrate", "extra-env": LEDGER}


def ledger_rows(lab, database: str) -> list[str]:
    found = admin_sql(lab, "SELECT name FROM django_migrations WHERE app = 'ledger' ORDER BY id", database)
    return found.splitlines()


def test_migrate_then_rollback_restores_the_exact_rows(action, base_inputs, lab, fresh_db) -> None:
    # Only ledger is at a migration before the run (0002); the run takes every app to its last migration.
    first = action({**migrate_inputs(base_inputs), "args": "ledger 0002_opening_balance"})
    assert first.returncode == 0, first.explain()
    before = rows(lab, fresh_db)
    run = action(migrate_inputs(base_inputs))
    assert run.returncode == 0, run.explain()
    targets = json.loads(run.outputs["rollback-targets"])
    assert targets == {"audit": "zero", "catalog": "zero", "ledger": "0002_opening_balance", "orders": "zero"}
    assert run.report["rollback_targets"] == targets
    assert "command: rollback" in run.summary
    assert f"rollback-targets: '{run.outputs['rollback-targets']}'" in run.summary
    assert rows(lab, fresh_db) != before

    back = action(
        {**base_inputs, "command": "rollback", "extra-env": LEDGER, "rollback-targets": run.outputs["rollback-targets"]}
    )
    assert back.returncode == 0, back.explain()
    assert rows(lab, fresh_db) == before
    unapplied = json.loads(back.outputs["unapplied"])
    assert sorted(unapplied) == sorted(json.loads(run.outputs["applied"]))
    assert back.outputs["applied-count"] == "0"
    assert sorted(json.loads(back.outputs["pending"])) == sorted(unapplied)
    report = assert_report(back)
    assert report["rollback"]["targets"] == targets
    assert sorted(report["rollback"]["plan"]) == sorted(unapplied)
    assert report["rollback"]["irreversible"] == []
    assert back.report["lock_wait_seconds"] is not None, "a rollback takes the migration lock"
    assert "↩ unapplied by this run" in back.summary
    assert "rollback-targets" not in back.outputs


def test_rollback_across_an_irreversible_migration_unapplies_nothing(action, base_inputs, lab, fresh_db) -> None:
    first = action(migrate_inputs(base_inputs))
    assert first.returncode == 0, first.explain()
    targets = json.loads(first.outputs["rollback-targets"])
    assert targets["ledger"] == "zero"
    before = rows(lab, fresh_db)
    run = action(
        {
            **base_inputs,
            "command": "rollback",
            "extra-env": LEDGER,
            "rollback-targets": first.outputs["rollback-targets"],
        }
    )
    assert_failed_in(run, "command")
    assert rows(lab, fresh_db) == before, "nothing was unapplied"
    errors = [line for line in run.annotations if line.startswith("::error")]
    assert "ledger.0002_opening_balance is irreversible (RunPython" in errors[0], run.explain()
    assert "nothing was unapplied" in errors[0]
    assert run.outputs["unapplied-count"] == "0"
    rollback = run.report["rollback"]
    assert [item["migration"] for item in rollback["irreversible"]] == ["ledger.0002_opening_balance"]
    ledger = [key for key in rollback["plan"] if key.startswith("ledger.")]
    assert ledger == ["ledger.0003_entry_note", "ledger.0002_opening_balance", "ledger.0001_initial"]
    assert "- `ledger.0002_opening_balance` — ⛔ irreversible: RunPython" in run.summary
    assert "Unapplying" not in run.stdout


def test_rollback_in_docker_mode(action, base_inputs, lab, fresh_db) -> None:
    inputs = with_docker(migrate_inputs(base_inputs), lab)
    first = action({**inputs, "args": "ledger 0001_initial"})
    assert first.returncode == 0, first.explain()
    before = rows(lab, fresh_db)
    run = action(inputs)
    assert run.returncode == 0, run.explain()
    assert json.loads(run.outputs["rollback-targets"])["ledger"] == "0001_initial"

    blocked = action({**inputs, "command": "rollback", "rollback-targets": run.outputs["rollback-targets"]})
    assert_failed_in(blocked, "command")
    assert summary.text("ledger.0002_opening_balance is irreversible") in blocked.summary
    assert not [line for line in blocked.report["output_tail"] if line.startswith("bastion-migrate-rollback-")]
    assert rows(lab, fresh_db) != before, "nothing was unapplied"

    targets = {**json.loads(run.outputs["rollback-targets"]), "ledger": "0002_opening_balance"}
    partial = action({**inputs, "command": "rollback", "rollback-targets": json.dumps(targets)})
    assert partial.returncode == 0, partial.explain()
    assert ledger_rows(lab, fresh_db) == ["0001_initial", "0002_opening_balance"]
    assert "ledger.0003_entry_note" in json.loads(partial.outputs["unapplied"])
    assert partial.report["image"] is not None


@pytest.fixture
def two_databases(lab):
    with owned_databases(lab, [unique("rb") for _ in range(2)]) as names:
        yield names


def test_fan_out_rollback_targets_are_per_database(action, base_inputs, lab, two_databases) -> None:
    one, two = two_databases
    action({**migrate_inputs(base_inputs), "db-name": one, "args": "ledger 0002_opening_balance"})
    before = {name: rows(lab, name) for name in two_databases}
    inputs = {**migrate_inputs(base_inputs), "db-name": "", "databases": f"{one},{two}"}
    run = action(inputs)
    assert run.returncode == 0, run.explain()
    targets = json.loads(run.outputs["rollback-targets"])
    assert targets[one] == {"audit": "zero", "catalog": "zero", "ledger": "0002_opening_balance", "orders": "zero"}
    assert targets[two]["ledger"] == "zero"
    per_database = json.loads(run.outputs["databases"])
    assert {name: per_database[name]["rollback-targets"] for name in two_databases} == targets
    migrated = rows(lab, two)
    assert f"rollback-targets: '{run.outputs['rollback-targets']}'" in run.summary

    # The second database's way back crosses ledger.0002: it unapplies nothing; the first is rolled back.
    back = action({**inputs, "command": "rollback", "rollback-targets": run.outputs["rollback-targets"]})
    assert back.returncode != 0, back.explain()
    outcome = json.loads(back.outputs["databases"])
    assert outcome[one]["result"] == "success"
    assert outcome[two]["result"] == "failure"
    assert "ledger.0002_opening_balance is irreversible" in outcome[two]["error"]
    assert rows(lab, one) == before[one]
    assert rows(lab, two) == migrated != before[two]
    assert outcome[two]["unapplied-count"] == 0

    # Only the first database's targets: the second has nothing to roll back.
    only = {one: targets[one]}
    again = action({**inputs, "command": "rollback", "rollback-targets": json.dumps(only)})
    assert again.returncode == 0, again.explain()
    assert json.loads(again.outputs["databases"])[two]["unapplied-count"] == 0
