"""Pure interpretation of a finished command: Django's output + django_migrations rows -> results, verdict."""

from __future__ import annotations

import pytest

from bastion_action import outcome
from bastion_action.errors import CommandError, PendingMigrationsError
from bastion_action.migrations import State
from bastion_action.settings import Command

BEFORE = [("contenttypes", "0001_initial"), ("catalog", "0001_initial")]
AFTER = [*BEFORE, ("catalog", "0002_product_sku"), ("orders", "0001_initial")]

SHOWMIGRATIONS = """\
catalog
 [X] 0001_initial
 [ ] 0002_product_sku
orders
 [ ] 0001_initial
"""

MIGRATE_PLAN = """\
Planned operations:
catalog.0002_product_sku
    Add field sku to product
orders.0001_initial
    Create model Order
"""

MIGRATE_FAILED = """\
Operations to perform:
  Apply all migrations: catalog, orders
Running migrations:
  Applying catalog.0002_product_sku... OK
  Applying orders.0001_initial...Traceback (most recent call last):
django.db.utils.ProgrammingError: relation "orders_order" already exists
"""


def states(found: outcome.Outcome) -> dict[str, list[tuple[str, State]]]:
    assert found.migrations is not None
    return {app: [(m.name, m.state) for m in items] for app, items in found.migrations.items()}


def test_showmigrations_reads_the_state_from_djangos_list() -> None:
    found = outcome.interpret(Command.SHOWMIGRATIONS, SHOWMIGRATIONS, None, BEFORE)
    assert found.applied == []
    assert states(found) == {
        "catalog": [("0001_initial", State.APPLIED), ("0002_product_sku", State.PENDING)],
        "orders": [("0001_initial", State.PENDING)],
    }
    assert found.pending == ["catalog.0002_product_sku", "orders.0001_initial"]
    assert found.failed_migration is None


def test_showmigrations_plan_format_when_args_ask_for_it() -> None:
    text = "[X]  catalog.0001_initial\n[ ]  orders.0001_initial\n"
    found = outcome.interpret(Command.SHOWMIGRATIONS, text, None, BEFORE)
    assert states(found) == {"catalog": [("0001_initial", State.APPLIED)], "orders": [("0001_initial", State.PENDING)]}
    assert found.pending == ["orders.0001_initial"]


@pytest.mark.parametrize("command", [Command.PLAN, Command.CHECK])
def test_plan_and_check_combine_the_rows_with_the_plan(command: Command) -> None:
    found = outcome.interpret(command, MIGRATE_PLAN, None, BEFORE)
    assert found.pending == ["catalog.0002_product_sku", "orders.0001_initial"]
    assert states(found)["catalog"] == [("0001_initial", State.APPLIED), ("0002_product_sku", State.PENDING)]
    assert states(found)["contenttypes"] == [("0001_initial", State.APPLIED)]


def test_migrate_reports_what_this_run_recorded_in_order() -> None:
    found = outcome.interpret(Command.MIGRATE, "Running migrations:\n  Applying x... OK\n", BEFORE, AFTER)
    assert found.applied == ["catalog.0002_product_sku", "orders.0001_initial"]
    assert found.pending == []


def test_a_failed_migrate_names_the_migration_and_what_is_left() -> None:
    after = [*BEFORE, ("catalog", "0002_product_sku")]
    planned = "Planned operations:\norders.0001_initial\n    Create model Order\n"
    found = outcome.interpret(Command.MIGRATE, MIGRATE_FAILED, BEFORE, after, planned)
    assert found.applied == ["catalog.0002_product_sku"]
    assert found.failed_migration == "orders.0001_initial"
    assert found.pending == ["orders.0001_initial"]


def test_migrate_tells_faked_from_applied_in_the_order_recorded() -> None:
    text = (
        "Operations to perform:\n  Apply all migrations: catalog, orders\nRunning migrations:\n"
        "  Applying catalog.0002_product_sku... FAKED\n  Applying orders.0001_initial... OK (0.010s)\n"
    )
    found = outcome.interpret(Command.MIGRATE, text, BEFORE, AFTER)
    assert found.faked == ["catalog.0002_product_sku"]
    assert found.applied == ["orders.0001_initial"]
    assert found.unapplied == []
    assert found.pending == []


def test_migrate_to_an_earlier_target_reports_the_removed_rows_as_unapplied() -> None:
    text = "Operations to perform:\n  Target specific migration: 0001_initial, from catalog\nRunning migrations:\n"
    text += "  Unapplying orders.0001_initial... OK\n  Unapplying catalog.0002_product_sku... OK\n"
    planned = "Planned operations:\ncatalog.0002_product_sku\n    Add field sku to product\n"
    found = outcome.interpret(Command.MIGRATE, text, AFTER, BEFORE, planned)
    assert found.unapplied == ["catalog.0002_product_sku", "orders.0001_initial"]  # as they had been recorded
    assert found.applied == []
    assert found.pending == ["catalog.0002_product_sku"]


@pytest.mark.parametrize(
    ("command", "output", "planned", "exit_code"),
    [
        pytest.param(Command.MIGRATE, "", None, 1, id="migrate-never-started"),
        pytest.param(Command.MIGRATE, "", None, 0, id="migrate-printed-nothing"),
        pytest.param(Command.MIGRATE, "python: can't open file 'manage.py'", "", 2, id="migrate-no-manage-py"),
        pytest.param(Command.SHOWMIGRATIONS, "", None, 1, id="showmigrations-never-started"),
        pytest.param(Command.SHOWMIGRATIONS, "catalog\nTraceback (most recent call last):\n", None, 1, id="crashed"),
        pytest.param(Command.SHOWMIGRATIONS, "", None, 0, id="showmigrations-printed-nothing"),
        pytest.param(Command.PLAN, "", None, 0, id="plan-printed-nothing"),
        pytest.param(Command.CHECK, MIGRATE_PLAN, None, 1, id="check-failed"),
    ],
)
def test_a_state_that_could_not_be_read_is_unknown_not_empty(
    command: Command, output: str, planned: str | None, exit_code: int
) -> None:
    found = outcome.interpret(
        command, output, BEFORE if command is Command.MIGRATE else None, BEFORE, planned, exit_code=exit_code
    )
    assert found == outcome.UNKNOWN


def test_a_failed_migrate_whose_plan_could_not_be_read_knows_what_it_applied_not_what_is_left() -> None:
    found = outcome.interpret(Command.MIGRATE, MIGRATE_FAILED, BEFORE, AFTER, "", exit_code=1)
    assert found.applied == ["catalog.0002_product_sku", "orders.0001_initial"]
    assert found.pending is None
    assert found.migrations is None
    assert found.failed_migration == "orders.0001_initial"


@pytest.mark.parametrize("command", [Command.SHOWMIGRATIONS, Command.PLAN, Command.CHECK])
def test_a_squash_left_to_finish_recording_is_not_pending_in_any_command(command: Command) -> None:
    rows = [("catalog", "0001_initial"), ("catalog", "0002_product_sku")]
    shown = {
        Command.SHOWMIGRATIONS: (
            "catalog\n [-] 0001_squashed_0002_product_sku (2 squashed migrations) "
            "Run 'manage.py migrate' to finish recording.\n"
        ),
        Command.PLAN: "Planned operations:\n  No planned migration operations.\n",
    }
    found = outcome.interpret(command, shown.get(command, shown[Command.PLAN]), None, rows)
    assert found.pending == []
    assert outcome.verdict(command, ["manage.py"], 0, found) is None


def test_check_that_could_not_read_the_plan_fails_rather_than_pass() -> None:
    error = outcome.verdict(Command.CHECK, ["manage.py", "migrate", "--plan"], 0, outcome.UNKNOWN)
    assert type(error) is CommandError
    assert error.message == "`manage.py migrate --plan` printed no migration plan: the migration state is unknown"


@pytest.mark.parametrize(
    ("command", "exit_code", "args", "expected"),
    [
        pytest.param(Command.MIGRATE, 0, (), False, id="migrate-ok"),
        pytest.param(Command.MIGRATE, 1, (), True, id="migrate-failed"),
        pytest.param(Command.MIGRATE, 0, ("catalog", "0001"), True, id="migrate-targeted"),
        pytest.param(Command.SHOWMIGRATIONS, 1, (), False, id="showmigrations"),
        pytest.param(Command.CHECK, 0, ("catalog",), False, id="check"),
    ],
)
def test_needs_plan(command: Command, exit_code: int, args: tuple[str, ...], expected: bool) -> None:
    assert outcome.needs_plan(command, exit_code, args) is expected


def test_verdict_of_a_failed_command_carries_its_exit_code_and_migration() -> None:
    found = outcome.Outcome(applied=[], migrations={}, pending=["orders.0001_initial"], failed_migration="orders.0001")
    error = outcome.verdict(Command.MIGRATE, ["manage.py", "migrate", "--noinput"], 3, found)
    assert type(error) is CommandError
    assert error.message == "`manage.py migrate --noinput` exited with code 3 while applying orders.0001"
    assert error.exit_code == 3


def test_verdict_of_check_with_pending_migrations_is_pending_not_failure() -> None:
    pending = [f"app.{n:04d}" for n in range(25)]
    found = outcome.Outcome(applied=[], migrations={}, pending=pending)
    error = outcome.verdict(Command.CHECK, ["manage.py", "migrate", "--plan"], 0, found)
    assert isinstance(error, PendingMigrationsError)
    assert error.exit_code == 1
    assert error.message == "25 migration(s) not applied: " + ", ".join(pending[:20]) + " ..."


@pytest.mark.parametrize("command", [Command.SHOWMIGRATIONS, Command.PLAN, Command.MIGRATE])
def test_pending_migrations_fail_only_check(command: Command) -> None:
    found = outcome.Outcome(applied=[], migrations={}, pending=["a.0001"])
    assert outcome.verdict(command, ["manage.py"], 0, found) is None


def test_a_custom_command_is_judged_by_its_exit_code_alone() -> None:
    assert outcome.verdict(Command.CUSTOM, ["alembic", "upgrade", "head"], 0, None) is None
    error = outcome.verdict(Command.CUSTOM, ["alembic", "upgrade", "head"], 2, None)
    assert error is not None
    assert error.message == "`alembic upgrade head` exited with code 2"


@pytest.mark.parametrize(
    ("printed", "named"),
    [
        pytest.param(
            "django.db.utils.OperationalError: canceling statement due to lock timeout", "db-lock-timeout", id="lock"
        ),
        pytest.param(
            "psycopg2.errors.QueryCanceled: canceling statement due to statement timeout",
            "db-statement-timeout",
            id="statement",
        ),
        pytest.param(
            "FATAL:  terminating connection due to idle-in-transaction timeout",
            "db-idle-in-transaction-timeout",
            id="idle-in-transaction",
        ),
    ],
)
def test_a_server_side_bound_that_fired_is_explained(printed: str, named: str) -> None:
    output = f"Running migrations:\n  Applying orders.0001_initial...Traceback (most recent call last):\n{printed}\n"
    found = outcome.interpret(Command.MIGRATE, output, BEFORE, BEFORE, "", exit_code=1)
    error = outcome.verdict(Command.MIGRATE, ["manage.py", "migrate"], 1, found, output)
    assert error is not None
    words = printed.split(": ", 1)[1].removeprefix(" ")
    assert error.message == f"`manage.py migrate` exited with code 1 while applying orders.0001_initial: {words}"
    assert named in error.hint
    assert error.anchor == "server-side-timeouts"
    assert error.exit_code == 1


def test_a_custom_command_cut_by_a_bound_is_explained_too() -> None:
    error = outcome.verdict(
        Command.CUSTOM, ["alembic", "upgrade", "head"], 1, None, "canceling statement due to lock timeout"
    )
    assert error is not None
    assert "db-lock-timeout" in error.hint


def test_a_bound_named_in_the_output_of_a_successful_command_is_no_failure() -> None:
    assert outcome.verdict(Command.CUSTOM, ["x"], 0, None, "canceling statement due to lock timeout") is None


def test_drift_between_the_runner_and_the_image() -> None:
    image = "catalog\n [X] 0001_initial\norders\n [ ] 0001_initial\n"
    found, error = outcome.drift(SHOWMIGRATIONS, image)
    assert found == ["catalog.0002_product_sku only on the runner"]
    assert error is not None
    assert error.anchor == "drift"
    assert (
        error.message
        == "the runner and the image disagree on 1 migration(s): catalog.0002_product_sku only on the runner"
    )


def test_no_drift_when_both_agree() -> None:
    assert outcome.drift(SHOWMIGRATIONS, SHOWMIGRATIONS) == ([], None)


def test_a_failed_rollback_names_the_migration_it_was_unapplying() -> None:
    found = outcome.Outcome(applied=[], migrations={}, pending=[], failed_migration="catalog.0003_review")
    error = outcome.verdict(Command.ROLLBACK, ["manage.py migrate catalog 0002_product_sku"], 1, found)
    assert error is not None
    assert error.message == (
        "`manage.py migrate catalog 0002_product_sku` exited with code 1 while unapplying catalog.0003_review"
    )
