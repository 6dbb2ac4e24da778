"""Pure: Django's migration command output -> structured state; database snapshots -> diffs.

The formats, as printed by Django 3.2 to 5.x:

``showmigrations`` (list)::

    catalog
     [X] 0001_initial
     [X] 0002_product_sku (applied at 2026-11-24 01:02:03)   <- verbosity 2
     [-] 0001_squashed_0002_product_sku (2 squashed migrations) Run 'manage.py migrate' to finish recording.
    nomig
     (no migrations)

``showmigrations --plan``::

    [X]  catalog.0001_initial
    [ ]  orders.0001_initial ... (catalog.0002_product_sku)   <- verbosity 2: dependencies

``migrate --plan``::

    Planned operations:
    catalog.0001_initial
        Create model Product
        Raw SQL operation -> CREATE INDEX CONCURRENTLY idx ON...   <- cut to 40 characters by Django
        Raw Python operation -> Fill in the SKUs.                   <- the function's docstring, if any
        Undo Add field sku to product                               <- backwards (a target behind the state)
        Raw Python operation -> IRREVERSIBLE                        <- backwards, and it cannot be
      No planned migration operations.                          <- nothing to do

``migrate``::

      Applying catalog.0001_initial... OK
      Applying orders.0001_initial... OK (0.012s)               <- verbosity 2
      Applying catalog.0001_initial... FAKED                    <- --fake-initial found the tables
      Unapplying catalog.0002_product_sku... OK                 <- migrate to an earlier target
      Applying audit.0002_test_hooks...Traceback (most recent call last):
      Applying audit.0002_test_hooks...what the migration printed
     OK (0.004s)                                                <- its end, on a line of its own

Verbosity 2 also prints ``Running pre-migrate handlers for application catalog``,
``Running post-migrate handlers ...``, ``  Rendering model states... DONE (0.020s)``,
and (with ``django.contrib`` apps) ``Adding content type ...`` / ``Adding permission ...``:
none of them is a migration's line.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping, Sequence


class State(enum.StrEnum):
    APPLIED = "applied"
    PENDING = "pending"
    # A squash whose replaced migrations are all applied but which is not recorded itself yet:
    # Django 4.2+ marks it [-] ("Run 'manage.py migrate' to finish recording"). Its operations have
    # all run and ``migrate --plan`` plans nothing for it, so it is not pending: shown, not counted.
    PARTIAL = "partial"


@dataclasses.dataclass(frozen=True)
class Migration:
    app: str
    name: str
    state: State

    @property
    def key(self) -> str:
        return f"{self.app}.{self.name}"


# Django's list format indents with one space; the app label line is not indented.
# After the name: " (applied at ...)", " (2 squashed migrations) Run 'manage.py migrate' to finish recording."
_LIST_ENTRY = re.compile(r"^ \[(?P<mark>[X \-])\] (?P<name>\S+)(?: .*)?$")
_NO_MIGRATIONS = re.compile(r"^ \(no migrations\)$")
_APP_LABEL = re.compile(r"^(?P<app>[^\s\[(][^\s]*)$")
_PLAN_ENTRY = re.compile(r"^\[(?P<mark>[X \-])\]  (?P<app>[^.\s]+)\.(?P<name>\S+)(?: \.\.\. \(.*\))?(?: \(.*\))?$")
_MIGRATE_PLAN_ENTRY = re.compile(r"^(?P<app>[^.\s]+)\.(?P<name>\S+)$")
_APPLYING = re.compile(r"^  (?P<verb>Applying|Unapplying) (?P<app>[^.\s]+)\.(?P<name>\S+?)\.\.\.(?P<rest>.*)$")
# How Django ends a migration's line: " OK" or " FAKED", and at verbosity 2 its own timing " (0.012s)".
_ENDING = r"(?P<ended>OK|FAKED)(?: \((?P<seconds>[0-9]+(?:\.[0-9]+)?)s\))?"
_ENDED_AT_ONCE = re.compile(rf"^\s*{_ENDING}(?:\s.*)?$")  # right after "...": nothing printed in between
# After the migration's own output: its end alone on a line, or (timed, so unmistakable) after text with no newline.
_ENDED_LATER = re.compile(rf"^\s*{_ENDING}\s*$|^.*\s(?P<timed>OK|FAKED) \((?P<timed_seconds>[0-9]+\.[0-9]+)s\)\s*$")
_MARKS = {"X": State.APPLIED, " ": State.PENDING, "-": State.PARTIAL}


def parse_showmigrations(text: str) -> dict[str, list[Migration]]:
    """``showmigrations`` list format -> per app, the migrations in shown order (apps with none included)."""
    apps: dict[str, list[Migration]] = {}
    current: str | None = None
    for line in text.splitlines():
        entry = _LIST_ENTRY.match(line)
        if entry and current is not None:
            apps[current].append(Migration(current, entry["name"], _MARKS[entry["mark"]]))
            continue
        if _NO_MIGRATIONS.match(line) and current is not None:
            continue
        label = _APP_LABEL.match(line)
        if label:
            current = label["app"]
            apps.setdefault(current, [])
        else:
            current = None  # anything else (warnings, tracebacks) ends the app's block
    return apps


def parse_showmigrations_plan(text: str) -> list[Migration]:
    """``showmigrations --plan`` -> every migration in plan order with its state."""
    plan = []
    for line in text.splitlines():
        entry = _PLAN_ENTRY.match(line)
        if entry:
            plan.append(Migration(entry["app"], entry["name"], _MARKS[entry["mark"]]))
    return plan


def parse_migrate_plan(text: str) -> list[Migration]:
    """``migrate --plan`` -> the planned migrations, in apply order (all pending)."""
    return [
        Migration(app, name, State.PENDING)
        for app, name in (key.split(".", 1) for key in parse_migrate_plan_operations(text))
    ]


def parse_migrate_plan_operations(text: str) -> dict[str, list[str]]:
    """``migrate --plan`` -> each planned migration (``app.name``, in apply order) and its operations as printed.

    An operation's words are Django's (``Create model Product``, ``Raw SQL operation -> ...``,
    ``Raw Python operation -> IRREVERSIBLE``), kept as they are, without the indentation.
    """
    lines = text.splitlines()
    try:
        start = next(index for index, line in enumerate(lines) if line.strip() == "Planned operations:")
    except StopIteration:
        return {}
    planned: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        if line.startswith(" "):  # operations are indented under their migration
            if current is not None:
                current.append(line.strip())
            continue
        entry = _MIGRATE_PLAN_ENTRY.match(line)
        if not entry:
            break
        current = planned.setdefault(f"{entry['app']}.{entry['name']}", [])
    return planned


@dataclasses.dataclass(frozen=True)
class MigrateOutput:
    ran: bool  # migrate printed its header or a migration: the lists below are its own account of what it did
    applied: list[str]  # "app.name", in order, printed OK: recorded and run
    faked: list[str]  # printed FAKED: recorded without running (--fake-initial found the tables, or --fake)
    failed: str | None  # the migration being applied or unapplied when the command failed
    # Verbosity 2: each migration applied, faked or unapplied, and the seconds Django says it took, in order
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


# Printed by every migrate at verbosity 1 or more, before it touches the database.
_MIGRATE_HEADERS = frozenset({"Operations to perform:", "Running migrations:"})


def parse_migrate(text: str) -> MigrateOutput:
    """``migrate`` output -> what it ran and faked, in order, and the migration it failed on, if any.

    What it unapplied is read from ``django_migrations`` instead: the rows say it exactly. A migration
    that prints something of its own gets its " OK" after that output; until then it is the one running.
    """
    applied: list[str] = []
    faked: list[str] = []
    seconds: dict[str, float] = {}
    running: tuple[str, str] | None = None  # (verb, key) of a migration started and not ended yet
    ran = False

    def ended(verb: str, key: str, end: re.Match[str]) -> None:
        took = end["seconds"] if end["ended"] else end["timed_seconds"]
        if took is not None:
            seconds[key] = float(took)
        if verb == "Applying":
            (faked if (end["ended"] or end["timed"]) == "FAKED" else applied).append(key)

    for line in text.splitlines():
        entry = _APPLYING.match(line)
        ran = ran or bool(entry) or line.strip() in _MIGRATE_HEADERS
        if entry:
            key = f"{entry['app']}.{entry['name']}"
            end = _ENDED_AT_ONCE.match(entry["rest"]) or _ENDED_LATER.match(entry["rest"])
            if end:
                running = None
                ended(entry["verb"], key, end)
            else:
                running = (entry["verb"], key)
            continue
        if running is not None:
            end = _ENDED_LATER.match(line)
            if end:
                verb, key = running
                running = None
                ended(verb, key, end)
    return MigrateOutput(ran=ran, applied=applied, faked=faked, failed=running[1] if running else None, seconds=seconds)


def has_plan(text: str) -> bool:
    """``migrate --plan`` printed its header: its (possibly empty) plan can be trusted."""
    return any(line.strip() == "Planned operations:" for line in text.splitlines())


def pending(migrations: Iterable[Migration]) -> list[str]:
    """Keys not applied, in order; a squash whose replaced migrations are all applied is not pending."""
    return [migration.key for migration in migrations if migration.state is State.PENDING]


def group_by_app(migrations: Iterable[Migration]) -> dict[str, list[Migration]]:
    apps: dict[str, list[Migration]] = {}
    for migration in migrations:
        apps.setdefault(migration.app, []).append(migration)
    return apps


def applied_since(before: Sequence[tuple[str, str]], after: Sequence[tuple[str, str]]) -> list[str]:
    """Rows of django_migrations (app, name) present after and not before, in the order they were recorded."""
    seen = set(before)
    return [f"{app}.{name}" for app, name in after if (app, name) not in seen]


def removed_since(before: Sequence[tuple[str, str]], after: Sequence[tuple[str, str]]) -> list[str]:
    """Rows of django_migrations present before and not after, in the order they had been recorded."""
    return applied_since(after, before)


def state_from_database(rows: Sequence[tuple[str, str]], planned: Iterable[Migration]) -> dict[str, list[Migration]]:
    """Per-app state when Django printed only a plan: applied rows from the database, then the planned ones."""
    apps: dict[str, list[Migration]] = {}
    for app, name in rows:
        apps.setdefault(app, []).append(Migration(app, name, State.APPLIED))
    for migration in planned:
        apps.setdefault(migration.app, []).append(migration)
    return apps


def _recorded_or_not(state: State) -> State:
    # Django 3.2 marks a squash whose replaced migrations are all applied [X], 4.2+ [-]: the same rows
    return State.APPLIED if state is State.PARTIAL else state


def differences(runner: Mapping[str, Sequence[Migration]], image: Mapping[str, Sequence[Migration]]) -> list[str]:
    """Each migration whose presence or state differs between two views, as readable lines."""
    lines = []
    for app in sorted(set(runner) | set(image)):
        ours = {m.name: _recorded_or_not(m.state) for m in runner.get(app, [])}
        theirs = {m.name: _recorded_or_not(m.state) for m in image.get(app, [])}
        if app not in image:
            lines.append(f"app {app} only on the runner")
            continue
        if app not in runner:
            lines.append(f"app {app} only in the image")
            continue
        for name in [*ours, *(name for name in theirs if name not in ours)]:
            if name not in theirs:
                lines.append(f"{app}.{name} only on the runner")
            elif name not in ours:
                lines.append(f"{app}.{name} only in the image")
            elif ours[name] != theirs[name]:
                lines.append(f"{app}.{name}: {ours[name].value} on the runner, {theirs[name].value} in the image")
    return lines


def as_json(apps: Mapping[str, Sequence[Migration]]) -> dict[str, list[dict[str, object]]]:
    """The ``migrations`` output: per app, each migration with ``applied`` true/false (and its exact state)."""
    return {
        app: [
            {"name": migration.name, "applied": migration.state is State.APPLIED, "state": migration.state.value}
            for migration in migrations
        ]
        for app, migrations in apps.items()
    }
