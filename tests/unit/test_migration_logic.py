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


def test_partial_squash_counts_as_pending() -> None:
    assert migrations.pending([m("a.0001_squashed_0002", State.PARTIAL)]) == ["a.0001_squashed_0002"]


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
    assert migrations.parse_migrate(text) == migrations.MigrateOutput(applied=["orders.0002_x"], failed=None)
