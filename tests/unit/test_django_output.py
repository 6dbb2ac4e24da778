"""Parsers against real output of Django 3.2, 4.2 and 5.2 (tests/unit/django_output/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion_action import migrations

SAMPLES = Path(__file__).parent / "django_output"
CASES = sorted(SAMPLES.glob("*/*.json"))


def as_expected(apps: dict[str, list[migrations.Migration]]) -> dict[str, list[list[str]]]:
    return {app: [[m.name, m.state.value] for m in items] for app, items in apps.items()}


@pytest.mark.parametrize("case", CASES, ids=[f"{path.parent.name}/{path.stem}" for path in CASES])
def test_real_output(case: Path) -> None:
    expected = json.loads(case.read_text())
    text = case.with_suffix(".txt").read_text(encoding="utf-8")
    kind = expected["format"]
    if kind == "list":
        apps = migrations.parse_showmigrations(text)
        assert as_expected(apps) == expected["migrations"]
        flat = [m for items in apps.values() for m in items]
        assert sorted(migrations.pending(flat)) == sorted(expected["pending"])
    elif kind == "plan":
        plan = migrations.parse_showmigrations_plan(text)
        assert as_expected(migrations.group_by_app(plan)) == expected["migrations"]
        assert migrations.pending(plan) == expected["pending"]
    elif kind == "migrate-plan":
        assert [m.key for m in migrations.parse_migrate_plan(text)] == expected["pending"]
        if "operations" in expected:
            operations = migrations.parse_migrate_plan_operations(text)
            assert operations == expected["operations"]
            assert list(operations) == expected["pending"]
    else:
        assert kind == "migrate"
        parsed = migrations.parse_migrate(text)
        assert parsed.ran
        assert parsed.applied == expected["applied"]
        assert parsed.faked == expected.get("faked", [])
        assert parsed.failed == expected["failed"]
        # Django times each migration only at verbosity 2; "timed" lists them in the order printed
        assert list(parsed.seconds) == expected.get("timed", [])
        assert all(0 <= seconds < 60 for seconds in parsed.seconds.values())


def test_every_version_is_covered() -> None:
    assert {path.parent.name for path in CASES} == {"3.2", "4.2", "5.2"}
    assert {json.loads(path.read_text())["format"] for path in CASES} == {"list", "plan", "migrate-plan", "migrate"}
