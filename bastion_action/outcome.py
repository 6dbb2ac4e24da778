"""Pure: a finished command (Django's output, ``django_migrations`` before and after) -> results and verdict."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from bastion_action import migrations
from bastion_action.errors import CommandError, PendingMigrationsError
from bastion_action.migrations import Migration
from bastion_action.settings import Command

SHOWN_PENDING = 20
SHOWN_DRIFT = 10

Rows = Sequence[tuple[str, str]]  # django_migrations (app, name), in the order recorded


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the database holds after the command, and what this run changed."""

    applied: list[str]  # recorded by this run, in order (empty for a read-only command)
    migrations: dict[str, list[Migration]]
    pending: list[str]
    failed_migration: str | None = None


def needs_plan(command: Command, exit_code: int, args: Sequence[str]) -> bool:
    """A failed or targeted ``migrate`` may leave migrations behind: only Django's plan says which."""
    return command is Command.MIGRATE and (exit_code != 0 or bool(args))


def interpret(command: Command, output: str, before: Rows | None, after: Rows, planned: str = "") -> Outcome:
    """The results of a Django command from its output, the recorded rows, and (``needs_plan``) the plan's output."""
    applied = [] if before is None else migrations.applied_since(before, after)
    failed = None
    if command is Command.SHOWMIGRATIONS:
        apps = migrations.parse_showmigrations(output)
        if not apps:  # --plan given in args
            apps = migrations.group_by_app(migrations.parse_showmigrations_plan(output))
    elif command in {Command.PLAN, Command.CHECK}:
        apps = migrations.state_from_database(after, migrations.parse_migrate_plan(output))
    else:
        failed = migrations.parse_migrate(output).failed
        apps = migrations.state_from_database(after, migrations.parse_migrate_plan(planned))
    pending = migrations.pending(item for items in apps.values() for item in items)
    return Outcome(applied=applied, migrations=apps, pending=pending, failed_migration=failed)


def verdict(command: Command, argv: Sequence[str], exit_code: int, outcome: Outcome | None) -> CommandError | None:
    """The run's failure, if any: the command's own exit status first, then ``check``'s pending migrations."""
    if exit_code != 0:
        failing = outcome.failed_migration if outcome else None
        return CommandError(
            f"`{' '.join(argv)}` exited with code {exit_code}" + (f" while applying {failing}" if failing else ""),
            hint="The command's last lines of output are in the step summary.",
            exit_code=exit_code,
        )
    if command is Command.CHECK and outcome is not None and outcome.pending:
        pending = outcome.pending
        shown = ", ".join(pending[:SHOWN_PENDING]) + (" ..." if len(pending) > SHOWN_PENDING else "")
        return PendingMigrationsError(
            f"{len(pending)} migration(s) not applied: {shown}",
            hint="Run this action with command: migrate (after review) to apply them.",
            exit_code=1,
        )
    return None


def drift(on_runner: str, in_image: str) -> tuple[list[str], CommandError | None]:
    """Compare mode: how the runner's ``showmigrations`` and the image's differ, and the failure that makes."""
    found = migrations.differences(
        migrations.parse_showmigrations(on_runner), migrations.parse_showmigrations(in_image)
    )
    if not found:
        return found, None
    return found, CommandError(
        f"the runner and the image disagree on {len(found)} migration(s): " + "; ".join(found[:SHOWN_DRIFT]),
        hint="The runner's checkout and the image were not built from the same code: "
        "rebuild the image, or check out the commit it was built from.",
        anchor="drift",
    )
