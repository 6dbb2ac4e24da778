"""Pure: a finished command (Django's output, ``django_migrations`` before and after) -> results and verdict."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from bastion_action import migrations
from bastion_action.errors import CommandError, PendingMigrationsError
from bastion_action.migrations import Migration, State
from bastion_action.rollback import Check
from bastion_action.settings import Command

SHOWN_PENDING = 20
SHOWN_DRIFT = 10

Rows = Sequence[tuple[str, str]]  # django_migrations (app, name), in the order recorded


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the database holds after the command, and what this run changed.

    ``None`` where the state could not be read (the command never got going, or printed nothing Django
    would): an unknown count must never read as ``0``.
    """

    applied: list[str] | None  # recorded and run by this run, in order (empty for a read-only command)
    migrations: dict[str, list[Migration]] | None
    pending: list[str] | None
    faked: list[str] | None = None  # recorded by this run without running (FAKED), in order
    unapplied: list[str] | None = None  # rows this run removed, in the order they had been recorded
    failed_migration: str | None = None
    # Verbosity 2: seconds Django took for each migration it applied, faked or unapplied ("app.name")
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    planned: dict[str, list[str]] | None = None  # plan, check: each planned migration's operations, in order


UNKNOWN = Outcome(applied=None, migrations=None, pending=None)


def needs_plan(command: Command, exit_code: int, args: Sequence[str]) -> bool:
    """A failed or targeted ``migrate`` may leave migrations behind: only Django's plan says which."""
    return command is Command.MIGRATE and (exit_code != 0 or bool(args))


def interpret(
    command: Command, output: str, before: Rows | None, after: Rows, planned: str | None = None, *, exit_code: int = 0
) -> Outcome:
    """The results of a Django command from its output, the recorded rows, and (``needs_plan``) the plan's output.

    ``planned`` is ``None`` when no plan was asked for, and empty when asking failed.
    """
    if command is Command.MIGRATE:
        return _migrate(output, before, after, planned, exit_code)
    if exit_code != 0:  # a read-only command that failed printed at most part of the state
        return UNKNOWN
    operations = None
    if command is Command.SHOWMIGRATIONS:
        apps = migrations.parse_showmigrations(output)
        if not apps:  # --plan given in args
            apps = migrations.group_by_app(migrations.parse_showmigrations_plan(output))
        if not apps:
            return UNKNOWN
    elif migrations.has_plan(output):  # plan, check
        operations = migrations.parse_migrate_plan_operations(output)
        plan = migrations.parse_migrate_plan(output)
        apps = migrations.state_from_database(after, plan)
        return Outcome(
            applied=[], faked=[], unapplied=[], migrations=apps, pending=_pending(apps, plan), planned=operations
        )
    else:
        return UNKNOWN
    return Outcome(applied=[], faked=[], unapplied=[], migrations=apps, pending=_pending(apps), planned=operations)


def _migrate(output: str, before: Rows | None, after: Rows, planned: str | None, exit_code: int) -> Outcome:
    printed = migrations.parse_migrate(output)
    if not printed.ran or before is None:
        return dataclasses.replace(UNKNOWN, failed_migration=printed.failed, seconds=printed.seconds)
    fake = set(printed.faked)
    recorded = migrations.applied_since(before, after)
    apps, plan = None, []
    if planned is None and exit_code == 0:  # migrate ran to its end with no target: nothing is left
        apps = migrations.state_from_database(after, [])
    elif planned is not None and migrations.has_plan(planned):
        plan = migrations.parse_migrate_plan(planned)
        apps = migrations.state_from_database(after, plan)
    return Outcome(
        applied=[key for key in recorded if key not in fake],
        faked=[key for key in recorded if key in fake],
        unapplied=migrations.removed_since(before, after),
        migrations=apps,
        pending=None if apps is None else _pending(apps, plan),
        failed_migration=printed.failed,
        seconds=printed.seconds,
    )


def rolled_back(output: str, before: Rows | None, after: Rows, check: Check | None) -> Outcome:
    """A rollback's results: the rows it removed (and any it added), the state after from its step's answer."""
    printed = migrations.parse_migrate(output)
    if before is None:
        return dataclasses.replace(UNKNOWN, failed_migration=printed.failed, seconds=printed.seconds)
    apps = pending = None
    if check is not None and check.pending is not None:
        pending = list(check.pending)
        left = [Migration(app, name, State.PENDING) for app, _, name in (key.partition(".") for key in pending)]
        apps = migrations.state_from_database(after, left)
    return Outcome(
        applied=migrations.applied_since(before, after),
        faked=[],
        unapplied=migrations.removed_since(before, after),
        migrations=apps,
        pending=pending,
        failed_migration=printed.failed,
        seconds=printed.seconds,
    )


def _pending(apps: dict[str, list[Migration]], plan: Sequence[Migration] = ()) -> list[str]:
    """The pending migrations in apply order when Django's plan is known (else app by app, as Django lists them)."""
    left = migrations.pending(item for items in apps.values() for item in items)
    ordered = [migration.key for migration in plan if migration.key in set(left)]
    return ordered + [key for key in left if key not in set(ordered)]


# PostgreSQL's own words when a server-side bound of the command's sessions fires, and what to say about it.
_BOUNDS_FIRED = (
    (
        "canceling statement due to lock timeout",
        (
            "A statement waited longer than db-lock-timeout for a lock another session holds (a long query or an "
            "open transaction on the same table); the server cancelled it and the migration's transaction rolled "
            "back. Find the blocker in pg_stat_activity and pg_locks and re-run when it is done, or raise "
            "db-lock-timeout."
        ),
    ),
    (
        "canceling statement due to statement timeout",
        (
            "A statement ran longer than db-statement-timeout (or a statement_timeout set on the role or database) "
            "and the server cancelled it; the migration's transaction rolled back. Raise db-statement-timeout, or "
            "set it to 0 for a long data migration."
        ),
    ),
    (
        "terminating connection due to idle-in-transaction timeout",
        (
            "The command kept a transaction open without a word to the database for longer than "
            "db-idle-in-transaction-timeout (slow Python work or an external call inside a migration, or a hang), so "
            "the server ended its session and rolled the transaction back. Raise db-idle-in-transaction-timeout (0 "
            "turns it off), or move the slow work out of the transaction."
        ),
    ),
)


# The line a Python program dies with: ``django.core.exceptions.ImproperlyConfigured: ...``, ``CommandError: ...``.
_CAUSE = re.compile(
    r"^((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Configured|DoesNotExist|Exit|Interrupt)): \S.*$"
)
CAUSE_CHARACTERS = 300


def cause(output: str) -> str:
    """The last exception line the command printed (what a traceback ends with), cut to one short line; else ''."""
    found = ""
    for line in output.splitlines():
        match = _CAUSE.match(line.strip())
        if match:
            found = line.strip()
    if len(found) > CAUSE_CHARACTERS:
        found = found[: CAUSE_CHARACTERS - 1] + "…"
    return found


def verdict(
    command: Command, argv: Sequence[str], exit_code: int, outcome: Outcome | None, output: str = ""
) -> CommandError | None:
    """The run's failure, if any: the command's own exit status first, then ``check``'s pending migrations.

    ``output`` is what the command printed: a server-side bound that fired is named in the hint.
    """
    if exit_code != 0:
        failing = outcome.failed_migration if outcome else None
        fired = next(((words, hint) for words, hint in _BOUNDS_FIRED if words in output), None)
        died_of = cause(output)
        return CommandError(
            f"`{' '.join(argv)}` exited with code {exit_code}"
            + (f" while {'unapplying' if command is Command.ROLLBACK else 'applying'} {failing}" if failing else "")
            + (f": {fired[0]}" if fired else f": {died_of}" if died_of else ""),
            hint=fired[1] if fired else "The command's last lines of output are in the step summary.",
            anchor="server-side-timeouts" if fired else "",
            exit_code=exit_code,
        )
    if command is Command.CHECK and outcome is not None and outcome.pending is None:
        return CommandError(
            f"`{' '.join(argv)}` printed no migration plan: the migration state is unknown",
            hint="Check that `manage.py` and `python` run Django's own migrate; its output is in the step summary.",
            exit_code=1,
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
