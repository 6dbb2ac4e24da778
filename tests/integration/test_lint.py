"""command: lint on the sample's hazard migrations (SAMPLE_EXTRA_APPS=hazards), through the real lab.

The hazards app is migrated up to its seed (12 rows in hazards_small, 150,000 in hazards_big, analyzed);
every later migration is one hazard. The thresholds are set so the small table is low risk and the big
one high.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import admin_sql, owned_databases, unique, with_docker

HAZARDS = {"extra-env": "SAMPLE_EXTRA_APPS=hazards"}
THRESHOLDS = {"lint-rows-medium": "1000", "lint-rows-high": "100000"}

# (migration, rule, table, risk, acknowledged) expected of the pending hazard migrations.
EXPECTED = {
    ("hazards.0003_index_small", "index-not-concurrent", "hazards_small", "low", False),
    ("hazards.0004_index_big", "index-not-concurrent", "hazards_big", "high", False),
    ("hazards.0005_concurrently_in_atomic", "concurrently-in-atomic", "hazards_big", "high", False),
    ("hazards.0006_add_not_null", "add-column-not-null", "hazards_big", "high", False),
    ("hazards.0007_volatile_default", "add-column-volatile-default", "hazards_big", "high", False),
    ("hazards.0008_type_change", "alter-column-type", "hazards_big", "high", False),
    ("hazards.0009_set_not_null", "set-not-null", "hazards_big", "high", False),
    ("hazards.0010_check_constraint", "add-check-constraint", "hazards_big", "high", False),
    ("hazards.0011_foreign_key", "add-foreign-key", "hazards_big", "high", False),
    ("hazards.0012_run_python", "run-python-irreversible", None, "medium", False),
    ("hazards.0013_run_sql", "run-sql-irreversible", None, "medium", False),
    ("hazards.0014_drop_column", "drop-column", "hazards_small", "high", False),
    ("hazards.0015_drop_table", "drop-table", "hazards_retired", "high", False),
    ("hazards.0016_rename", "rename", "hazards_small", "high", False),
    ("hazards.0017_acknowledged", "index-not-concurrent", "hazards_small", "low", False),
    ("hazards.0017_acknowledged", "index-not-concurrent", "hazards_big", "high", True),
}


def recorded(lab: dict[str, Any], database: str) -> list[str]:
    rows = admin_sql(
        lab, "SELECT app || '.' || name FROM django_migrations WHERE app = 'hazards' ORDER BY id", database
    )
    return [line.strip() for line in rows.splitlines() if line.strip()]


def seed(action, inputs: dict[str, str]) -> None:
    """The project's own apps migrated, then the hazards app up to its seed: the hazards are pending."""
    done = action({**inputs, "command": "migrate"})
    assert done.returncode == 0, done.explain()
    done = action({**inputs, **HAZARDS, "command": "migrate", "args": "hazards 0002_seed"})
    assert done.returncode == 0, done.explain()


def found(report: dict[str, Any]) -> set[tuple[Any, ...]]:
    return {
        (item["migration"], item["rule"], item["table"], item["risk"], item["acknowledged"])
        for item in report["findings"]
    }


def workspace(lab: dict[str, Any]) -> dict[str, str]:
    """The checkout holding the sample project, as GITHUB_WORKSPACE: annotations name files relative to it."""
    return {"GITHUB_WORKSPACE": str(Path(lab["sample_project"]).parent)}


def lint_inputs(base_inputs: dict[str, str]) -> dict[str, str]:
    return {**base_inputs, **HAZARDS, **THRESHOLDS, "command": "lint"}


def test_lint_weighs_each_hazard_with_its_table_and_places_it_on_the_file(action, base_inputs, lab) -> None:
    seed(action, base_inputs)
    before = recorded(lab, base_inputs["db-name"])
    run = action(lint_inputs(base_inputs), workspace(lab))
    assert run.returncode == 0, run.explain()
    assert run.outputs["result"] == "success"
    report = json.loads(run.outputs["risk-report"])
    assert found(report) == EXPECTED, run.explain()
    assert run.outputs["risk"] == "high"
    assert report["unread"] == []
    by_migration = {item["migration"]: item for item in report["findings"]}
    small, big = by_migration["hazards.0003_index_small"], by_migration["hazards.0004_index_big"]
    assert small["rows"] == 12
    assert big["rows"] == 150_000
    assert big["bytes"] > small["bytes"]
    assert recorded(lab, base_inputs["db-name"]) == before, "lint applies nothing"

    # One annotation per finding, on the migration file and the operation's line.
    annotations = [line for line in run.stdout.splitlines() if line.startswith(("::warning ", "::notice "))]
    placed = [line for line in annotations if "bastion-migrate lint%3A" in line]
    assert len(placed) == len(EXPECTED), run.explain()
    big_index = next(line for line in placed if "0004_index_big" in line)
    assert "file=sample/hazards/migrations/0004_index_big.py,line=7::" in big_index, big_index
    acknowledged = [line for line in placed if line.startswith("::notice ")]
    assert len(acknowledged) == 1
    assert "file=sample/hazards/migrations/0017_acknowledged.py,line=9::" in acknowledged[0]

    # The summary's table: the same rule, low on the small table and high on the big one.
    assert re.search(r"\| `hazards\.0003_index_small`.*\| `hazards_small` \| \\~12 rows.*\| 🟢 low \|", run.summary)
    assert re.search(r"\| `hazards\.0004_index_big`.*\| `hazards_big` \| \\~150,000 rows.*\| 🔴 high \|", run.summary)
    assert "acknowledged (high)" in run.summary
    assert run.report["lint"]["risk"] == "high"


def test_fail_on_risk_high_fails_in_the_command_stage_and_applies_nothing(action, base_inputs, lab) -> None:
    seed(action, base_inputs)
    before = recorded(lab, base_inputs["db-name"])
    run = action({**lint_inputs(base_inputs), "fail-on-risk": "high"})
    assert run.returncode == 1, run.explain()
    assert run.outputs["result"] == "failure"
    assert run.outputs["risk"] == "high"
    errors = [line for line in run.annotations if line.startswith("::error")]
    assert len(errors) == 1, run.explain()
    assert "command failed" in errors[0]
    assert "reaches fail-on-risk high" in errors[0]
    assert recorded(lab, base_inputs["db-name"]) == before == ["hazards.0001_initial", "hazards.0002_seed"]

    # Up to a migration whose only hazard is on the small table, the same gate passes.
    run = action({**lint_inputs(base_inputs), "fail-on-risk": "high", "args": "hazards 0003_index_small"})
    assert run.returncode == 0, run.explain()
    assert run.outputs["risk"] == "low"


def test_check_with_lint_judges_the_same_pending_migrations(action, base_inputs) -> None:
    seed(action, base_inputs)
    run = action({**lint_inputs(base_inputs), "command": "check", "lint": "true", "fail-on-risk": "never"})
    assert run.returncode == 1, run.explain()
    assert run.outputs["result"] == "pending"
    assert found(json.loads(run.outputs["risk-report"])) == EXPECTED


def test_lint_in_the_image(action, base_inputs, lab) -> None:
    seed(action, base_inputs)
    # The image was built from sample/: its migration files are placed there.
    run = action({**with_docker(lint_inputs(base_inputs), lab), "working-directory": "sample"}, workspace(lab))
    assert run.returncode == 0, run.explain()
    report = json.loads(run.outputs["risk-report"])
    assert found(report) == EXPECTED, run.explain()
    placed = [line for line in run.annotations if "bastion-migrate lint%3A" in line]
    assert any("file=sample/hazards/migrations/0004_index_big.py,line=7::" in line for line in placed), placed


@pytest.fixture
def two_databases(lab) -> Iterator[list[str]]:
    with owned_databases(lab, [unique("lint") for _ in range(2)]) as names:
        yield names


def test_fan_out_lints_each_database_with_its_own_tables(action, base_inputs, two_databases) -> None:
    seeded, empty = two_databases
    seed(action, {**base_inputs, "db-name": seeded})
    done = action({**base_inputs, "db-name": empty, "command": "migrate"})
    assert done.returncode == 0, done.explain()
    run = action({**lint_inputs(base_inputs), "db-name": "", "databases": f"{seeded},{empty}"})
    assert run.returncode == 0, run.explain()
    report = json.loads(run.outputs["risk-report"])
    assert report["risk"] == "high"
    per_database = json.loads(run.outputs["databases"])
    assert per_database[seeded]["risk"] == "high"
    on_seeded = {item["rule"] for item in report["findings"] if item["database"] == seeded}
    assert "set-not-null" in on_seeded
    # The other database has no hazards table yet: the whole app is pending, its tables new, so
    # the size-weighed hazards on them are low, and the ones that do not depend on size stay.
    on_empty = [item for item in report["findings"] if item["database"] == empty]
    assert on_empty, run.explain()
    assert all(item["risk"] != "high" or item["rule"] in FIXED_HIGH for item in on_empty), on_empty


FIXED_HIGH = {"concurrently-in-atomic", "drop-column", "drop-table", "rename"}
