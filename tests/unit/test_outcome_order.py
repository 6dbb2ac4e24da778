"""The pending list follows Django's plan (apply order), not the apps' order, whenever the plan is known."""

from __future__ import annotations

from bastion_action import outcome
from bastion_action.settings import Command

# orders.0001 depends on catalog.0002: Django plans it between catalog's migrations and after audit's.
PLAN = """Planned operations:
audit.0001_initial
    Create model AuditEvent
catalog.0001_initial
    Create model Product
orders.0001_initial
    Create model Order
catalog.0002_product_sku
    Add field sku to product
"""


def test_plan_and_check_list_pending_in_apply_order() -> None:
    for command in (Command.PLAN, Command.CHECK):
        found = outcome.interpret(command, PLAN, None, [])
        assert found.pending == [
            "audit.0001_initial",
            "catalog.0001_initial",
            "orders.0001_initial",
            "catalog.0002_product_sku",
        ]


def test_a_failed_migrate_lists_what_is_left_in_apply_order() -> None:
    output = "Operations to perform:\n  Apply all migrations: audit, catalog, orders\nRunning migrations:\n"
    output += "  Applying audit.0001_initial... OK (0.010s)\n  Applying catalog.0001_initial...Traceback\n"
    before: list[tuple[str, str]] = []
    after = [("audit", "0001_initial")]
    left = PLAN.replace("audit.0001_initial\n    Create model AuditEvent\n", "")
    found = outcome.interpret(Command.MIGRATE, output, before, after, left, exit_code=1)
    assert found.pending == ["catalog.0001_initial", "orders.0001_initial", "catalog.0002_product_sku"]
