"""Pure: rollback targets, from the rows a migrate changed and from the ``rollback-targets`` input; the rollback step.

A ``migrate`` that changed ``django_migrations`` reports, for each app it touched, the migration
that app was at before the run (its last recorded row then), or ``zero`` when it had none::

    {"catalog": "0002_product_sku", "ledger": "zero"}

In fan-out, one such object per database, by database name: ``{"app_a": {...}, "app_b": {}}``.

``command: rollback`` takes that JSON back. It runs one process where the command runs
(``django_shell``: ``manage.py shell -c SCRIPT``), so Django starts once (in docker mode: one
container) and nothing can change between the check and the unapplying. The script

1. asks Django's ``MigrationExecutor`` for the plan that reaches every target at once, and
   refuses, unapplying nothing, when a target is unknown, when the plan would apply anything,
   or when a migration it would unapply holds an operation that is not reversible (a
   ``RunPython`` without ``reverse_code``, a ``RunSQL`` without ``reverse_sql``);
2. otherwise runs Django's own ``migrate <app> <target>`` (``call_command``, with the system
   checks ``manage.py migrate`` runs) for each app in turn: Django migrates one app to one
   target per call, and each call prints its usual ``Unapplying ...`` lines;
3. answers with what it found (``Check``), and Django's plan for what is left to apply.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence

from bastion_action import django_shell
from bastion_action.errors import CommandError, SettingsError

INPUT = "rollback-targets"
ZERO = "zero"
SHOWN = 10

Targets = tuple[tuple[str, str], ...]  # (app, migration name or "zero"), in the order given

# Django's app labels are identifiers; a migration is a module of the app's migrations package.
_APP = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_NAME = re.compile(r"[A-Za-z0-9_]{1,255}")


# -- from the rows a migrate changed ---------------------------------------------------------------


def from_rows(before: Sequence[tuple[str, str]], after: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Each app whose rows changed -> its last recorded migration before the run, or ``zero``; apps sorted."""
    before_set, after_set = set(before), set(after)
    touched = {app for app, name in after if (app, name) not in before_set}
    touched |= {app for app, name in before if (app, name) not in after_set}
    last = dict(before)  # in the order recorded: each app's last row stays
    return {app: last.get(app, ZERO) for app in sorted(touched)}


def dumps(targets: Mapping[str, object]) -> str:
    """The JSON as the outputs give it and the input takes it back (one line, ASCII)."""
    return json.dumps(targets, ensure_ascii=True)


# -- the input ------------------------------------------------------------------------------------


def _error(message: str, hint: str) -> SettingsError:
    return SettingsError(f"{INPUT}: {message}", hint=hint, inputs=(INPUT,))


_HINT = (
    "Pass the rollback-targets output of the migrate step it undoes, e.g. rollback-targets: "
    "${{ steps.migrate.outputs.rollback-targets }} (between jobs: through a job output)."
)


def _app_targets(value: object, database: str = "") -> Targets:
    where = f" for database {database!r}" if database else ""
    if not isinstance(value, dict):
        msg = f'expected{where} a JSON object of app -> migration name or "zero", got {type(value).__name__}'
        raise _error(msg, _HINT)
    pairs = []
    for app, name in value.items():
        if isinstance(name, dict):
            raise _error(
                f"{app!r}{where} holds an object: targets per database need the databases input",
                "Per-database targets are fan-out's; give the same databases as the migrate step did.",
            )
        if not _APP.fullmatch(app):
            raise _error(f"{app!r}{where} is not a Django app label", _HINT)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise _error(f'{app}{where}: expected a migration name or "zero", got {json.dumps(name)}', _HINT)
        pairs.append((app, name))
    return tuple(pairs)


def _loaded(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _error(f"expected JSON, could not parse it ({exc})", _HINT) from None


def parse(text: str) -> Targets:
    """One database's targets: ``{"app": "0001_initial" | "zero", ...}``; ``{}`` is nothing to roll back."""
    return _app_targets(_loaded(text), "")


def parse_fan_out(text: str, databases: Sequence[str]) -> dict[str, Targets]:
    """Fan-out: ``{"<database>": {"app": ...}, ...}``; a database left out has nothing to roll back."""
    value = _loaded(text)
    if not isinstance(value, dict):
        msg = f'expected a JSON object of database -> {{app: migration or "zero"}}, got {type(value).__name__}'
        raise _error(msg, _HINT)
    if value and all(isinstance(item, str) for item in value.values()):
        raise _error(
            "expected targets per database with databases, got app -> migration",
            "Pass the rollback-targets output of a migrate step that ran with the same databases.",
        )
    unknown = [name for name in value if name not in databases]
    if unknown:
        raise _error(
            f"names database(s) not in databases: {', '.join(map(repr, unknown))}",
            "Give the same databases as the migrate step whose rollback-targets this is.",
        )
    return {name: _app_targets(item, name) for name, item in value.items()}


def describe(targets: Targets) -> str:
    """``catalog -> 0001_initial, ledger -> zero`` for the log."""
    return ", ".join(f"{app} -> {name}" for app, name in targets) or "nothing"


# -- the step -------------------------------------------------------------------------------------


def new_marker() -> str:
    return django_shell.new_marker("rollback")


# Runs inside the project's Python, as django_shell.EMIT says: no helper may call another of the script's names.
_SCRIPT = """\
import sys, traceback
from django.core.management import call_command
marker, wanted = {marker!r}, {targets!r}
answer = {{"unknown": [], "plan": [], "irreversible": [], "forwards": [], "done": False, "pending": None}}
code = 0
try:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor
    executor = MigrationExecutor(connection)
    targets = []
    for app, name in wanted:
        if app not in executor.loader.migrated_apps:
            answer["unknown"].append([app, name, "the project has no migrations for this app"])
        elif name != "zero" and (app, name) not in executor.loader.graph.nodes:
            answer["unknown"].append([app, name, "the project has no such migration (or a squash replaced it)"])
        else:
            targets.append((app, None if name == "zero" else name))
    if not answer["unknown"]:
        for migration, backwards in executor.migration_plan(targets):
            key = "%s.%s" % (migration.app_label, migration.name)
            if not backwards:
                answer["forwards"].append(key)
                continue
            answer["plan"].append(key)
            operations = list(migration.operations)
            while operations:
                operation = operations.pop(0)
                inner = getattr(operation, "database_operations", None)
                if inner:  # SeparateDatabaseAndState: its database operations are what gets undone
                    operations[:0] = list(inner)
                elif not operation.reversible:
                    answer["irreversible"].append([key, type(operation).__name__, operation.describe()[:200]])
    if answer["unknown"] or answer["forwards"] or answer["irreversible"]:
        code = 3
    else:
        for app, name in wanted:
            call_command("migrate", app, name, interactive=False, verbosity=2, skip_checks=False)
        answer["done"] = True
except Exception:
    traceback.print_exc()
    code = 1
try:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor
    executor = MigrationExecutor(connection)
    pending = []
    for migration, backwards in executor.migration_plan(executor.loader.graph.leaf_nodes()):
        pending.append("%s.%s" % (migration.app_label, migration.name))
    answer["pending"] = pending
except Exception:
    pass
emit(marker, answer)
sys.exit(code)
"""
REFUSED = 3  # the script's exit status when it unapplied nothing because the plan cannot be followed


def script(marker: str, targets: Targets) -> str:
    """The Python source ``manage.py shell -c`` runs: check the backwards plan, then migrate each app back."""
    return django_shell.EMIT + _SCRIPT.format(marker=marker, targets=[list(pair) for pair in targets])


def argv(manage_py: str, marker: str, targets: Targets) -> list[str]:
    return django_shell.argv(manage_py, script(marker, targets))


@dataclasses.dataclass(frozen=True)
class Irreversible:
    migration: str  # app.name
    operation: str  # the operation's class: RunPython, RunSQL, ...
    description: str  # Django's describe() of it


@dataclasses.dataclass(frozen=True)
class Check:
    """What the step found: the backwards plan, and why it refused to follow it, if it did."""

    plan: list[str]  # the migrations to unapply, in Django's order
    irreversible: list[Irreversible]
    forwards: list[str]  # migrations reaching the targets would apply
    unknown: list[tuple[str, str, str]]  # (app, name, why)
    done: bool  # every app was migrated back
    pending: list[str] | None  # after the step, in apply order (None: Django could not say)

    @property
    def refused(self) -> bool:
        return bool(self.irreversible or self.forwards or self.unknown)


def _strings(value: object, width: int) -> list[list[str]]:
    if not isinstance(value, list) or not all(
        isinstance(item, list) and len(item) == width and all(isinstance(part, str) for part in item) for item in value
    ):
        raise django_shell.UnreadableError("its result is malformed")
    return value


def _keys(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise django_shell.UnreadableError("its result is malformed")
    return value


def read(text: str, marker: str) -> Check:
    """The step's answer from its output; raises ``django_shell.UnreadableError`` when there is no whole one."""
    answer = django_shell.answer(marker, text)
    if not isinstance(answer, dict) or not isinstance(answer.get("done"), bool):
        raise django_shell.UnreadableError("its result is malformed")
    pending = answer.get("pending")
    return Check(
        plan=_keys(answer.get("plan")),
        irreversible=[Irreversible(*item) for item in _strings(answer.get("irreversible"), 3)],
        forwards=_keys(answer.get("forwards")),
        unknown=[(app, name, why) for app, name, why in _strings(answer.get("unknown"), 3)],
        done=answer["done"],
        pending=None if pending is None else _keys(pending),
    )


def _listed(items: Sequence[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def refusal(check: Check) -> CommandError | None:
    """Why the step unapplied nothing, as the run's failure; None when it went ahead."""
    nothing = "; nothing was unapplied"
    if check.unknown:
        return CommandError(
            f"{INPUT}: " + "; ".join(f"{app} -> {name}: {why}" for app, name, why in check.unknown[:SHOWN]) + nothing,
            hint="The targets must name migrations of the code that runs; roll back with the code that applied "
            "them (the same image or checkout as the migrate step).",
            anchor="rollback-targets",
            exit_code=REFUSED,
        )
    if check.irreversible:
        first = check.irreversible[0]
        others = sorted({item.migration for item in check.irreversible} - {first.migration})
        more = f" (and {_listed(others)})" if others else ""
        return CommandError(
            f"cannot roll back: {first.migration} is irreversible ({first.operation} with no reverse: "
            f"{first.description}){more}{nothing}",
            hint="Django cannot unapply a RunPython without reverse_code or a RunSQL without reverse_sql. Roll back "
            "to a target after it, give the operation a reverse (migrations.RunPython.noop when undoing needs "
            "nothing) in a new release, or restore the database from a backup.",
            anchor="rollback-irreversible",
            exit_code=REFUSED,
        )
    if check.forwards:
        return CommandError(
            f"{INPUT}: reaching them would apply {_listed(check.forwards)}{nothing}",
            hint="A rollback only unapplies: its targets are behind the database's state. Use command: migrate "
            "to move forwards.",
            anchor="rollback-targets",
            exit_code=REFUSED,
        )
    return None
