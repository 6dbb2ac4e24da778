"""Pure migration logic: database diffs, state assembly, runner/image differences, JSON shape."""

from __future__ import annotations

from bastion_action import migrations
from bastion_action.migrations import Migration, State


def m(key: str, state: State = State.APPLIED) -> Migration:
    app, name = key.split(".")
    return Migration(app, name, state)


def test_applied_since_keeps_recording_order_and_ignores_old_rows() -> None:
    before = [("catalog", "0001_initial")]
    after = [("catalog", "0001_initial"), ("orders", "0001_initial"), ("catalog", "0002_sku")]
    assert migrations.applied_since(before, after) == ["orders.0001_initial", "catalog.0002_sku"]
    assert migrations.applied_since(after, after) == []


def test_state_from_database_then_plan() -> None:
    rows = [("catalog", "0001_initial")]
    planned = [m("catalog.0002_sku", State.PENDING), m("orders.0001_initial", State.PENDING)]
    apps = migrations.state_from_database(rows, planned)
    assert list(apps) == ["catalog", "orders"]
    assert [x.state for x in apps["catalog"]] == [State.APPLIED, State.PENDING]
    assert migrations.pending(x for xs in apps.values() for x in xs) == ["catalog.0002_sku", "orders.0001_initial"]


def test_a_squash_left_to_finish_recording_is_not_pending() -> None:
    # migrate --plan plans nothing for it: showmigrations must not gate on it either
    state = [m("a.0001_squashed_0002", State.PARTIAL), m("a.0003", State.PENDING)]
    assert migrations.pending(state) == ["a.0003"]


def test_removed_since_keeps_the_order_they_had_been_recorded_in() -> None:
    before = [("catalog", "0001_initial"), ("catalog", "0002_sku"), ("orders", "0001_initial")]
    after = [("catalog", "0001_initial")]
    assert migrations.removed_since(before, after) == ["catalog.0002_sku", "orders.0001_initial"]
    assert migrations.removed_since(after, before) == []


def test_differences_between_runner_and_image() -> None:
    runner = {"catalog": [m("catalog.0001"), m("catalog.0002")], "extra": []}
    image = {"catalog": [m("catalog.0001", State.PENDING)], "img": [m("img.0001")]}
    assert migrations.differences(runner, image) == [
        "catalog.0001: applied on the runner, pending in the image",
        "catalog.0002 only on the runner",
        "app extra only on the runner",
        "app img only in the image",
    ]
    assert migrations.differences(runner, runner) == []


def test_a_squash_left_to_finish_recording_is_no_difference() -> None:
    # Django 3.2 prints [X] where 4.2+ prints [-] for the same rows
    older = {"a": [m("a.0001_squashed_0002")]}
    newer = {"a": [m("a.0001_squashed_0002", State.PARTIAL)]}
    assert migrations.differences(older, newer) == []


def test_json_shape() -> None:
    apps = {"catalog": [m("catalog.0001_initial"), m("catalog.0002", State.PARTIAL)], "empty": []}
    assert migrations.as_json(apps) == {
        "catalog": [
            {"name": "0001_initial", "applied": True, "state": "applied"},
            {"name": "0002", "applied": False, "state": "partial"},
        ],
        "empty": [],
    }


def test_migrate_output_without_failure_and_unapply_lines() -> None:
    text = "Operations to perform:\n  Unapplying orders.0002_x... OK\n  Applying orders.0002_x... OK\n"
    expected = migrations.MigrateOutput(ran=True, applied=["orders.0002_x"], faked=[], failed=None)
    assert migrations.parse_migrate(text) == expected


def test_migrate_output_tells_faked_from_run_at_both_verbosities() -> None:
    text = (
        "Operations to perform:\n  Apply all migrations: catalog\nRunning migrations:\n"
        "  Applying catalog.0001_initial... FAKED\n  Applying catalog.0002_sku... OK\n"
        "  Applying orders.0001_initial... FAKED (0.001s)\n  Applying orders.0002_x... OK (0.020s)\n"
    )
    parsed = migrations.parse_migrate(text)
    assert parsed.faked == ["catalog.0001_initial", "orders.0001_initial"]
    assert parsed.applied == ["catalog.0002_sku", "orders.0002_x"]
    assert parsed.ran


def test_a_failed_unapply_is_the_failed_migration() -> None:
    text = "Running migrations:\n  Unapplying catalog.0002_sku...Traceback (most recent call last):\n"
    assert migrations.parse_migrate(text).failed == "catalog.0002_sku"


def test_output_without_migrates_header_did_not_run() -> None:
    assert not migrations.parse_migrate("python: can't open file 'manage.py'\n").ran
    assert not migrations.has_plan("Traceback (most recent call last):\n")
    assert migrations.has_plan("Planned operations:\n  No planned migration operations.\n")
