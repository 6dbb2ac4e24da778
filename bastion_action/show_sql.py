"""Pure: the ``show-sql`` step, asking Django for each migration's SQL (``sqlmigrate``) and reading its answer.

The step is one process through the command's runner (``django_shell``: ``manage.py shell -c
SCRIPT``), with the project's settings and the command's database URL. The script runs
``sqlmigrate`` for each migration, capturing its output, and answers with one JSON object::

    {"catalog.0001_initial": {"sql": "BEGIN;\\n...", "more": 0}, "orders.0001_initial": {"skipped": true}}

The answer is untrusted: ``read`` keeps only the migrations asked for, caps each one's SQL and the
total again, and fails on anything malformed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bastion_action import django_shell
from bastion_action.django_shell import UnreadableError
from bastion_action.outcome import Outcome
from bastion_action.settings import Command

__all__ = ["UnreadableError", "argv", "new_marker", "read", "script", "sizes", "wanted"]

PER_MIGRATION_BYTES = 64 * 1024
TOTAL_BYTES = 512 * 1024
ERROR_CHARS = 1000


def wanted(command: Command, found: Outcome) -> list[str] | None:
    """The migrations whose SQL the report wants, in order; None when the state they come from is unknown.

    ``plan`` and ``check``: the pending ones. ``migrate``: the ones it ran (not those it faked), and the one
    it failed on. Other commands: none.
    """
    if command in {Command.PLAN, Command.CHECK}:
        if found.planned is not None:  # in the order they would be applied
            return list(found.planned)
        return None if found.pending is None else list(found.pending)
    if command is Command.MIGRATE:
        if found.applied is None and found.failed_migration is None:
            return None
        keys = list(found.applied or [])
        if found.failed_migration is not None and found.failed_migration not in keys:
            keys.append(found.failed_migration)
        return keys
    return []


def new_marker() -> str:
    return django_shell.new_marker("sql")


# Runs inside the project's Python (Django 3.2+, Python 3.8+): no comprehension may use the script's names
# (``exec`` without globals on some versions), nothing newer than 3.8.
_SCRIPT = """\
from io import StringIO
from django.core.management import call_command
marker, keys, per, total = {marker!r}, {keys!r}, {per}, {total}
found, spent = {{}}, 0
for key in keys:
    if spent >= total:
        found[key] = {{"skipped": True}}
        continue
    app, name = key.split(".", 1)
    buffer = StringIO()
    try:
        call_command("sqlmigrate", app, name, stdout=buffer, no_color=True)
    except Exception as exc:
        found[key] = {{"error": ("%s: %s" % (type(exc).__name__, exc))[:{error}]}}
        continue
    data = buffer.getvalue().encode("utf-8", "replace")
    room = min(per, total - spent)
    found[key] = {{"sql": data[:room].decode("utf-8", "ignore"), "more": max(0, len(data) - room)}}
    spent += min(len(data), room)
emit(marker, found)
"""


def script(marker: str, keys: Sequence[str]) -> str:
    """The Python source ``manage.py shell -c`` runs: ``sqlmigrate`` for each ``app.name`` in ``keys``."""
    return django_shell.EMIT + _SCRIPT.format(
        marker=marker,
        keys=list(keys),
        per=PER_MIGRATION_BYTES,
        total=TOTAL_BYTES,
        error=ERROR_CHARS,
    )


def argv(manage_py: str, marker: str, keys: Sequence[str]) -> list[str]:
    """The step's command line after the interpreter."""
    return django_shell.argv(manage_py, script(marker, keys))


def _kib(size: int) -> str:
    return f"{size // 1024} KiB"


def not_collected(more: int) -> str:
    return f"\n-- … [{more:,} more bytes not collected: show-sql keeps {_kib(PER_MIGRATION_BYTES)} per migration]\n"


SKIPPED = f"-- [not collected: show-sql keeps {_kib(TOTAL_BYTES)} of SQL in all]\n"


def _clean(text: str) -> bytes:
    """UTF-8 of ``text``; a lone surrogate (an undecodable byte Python kept) becomes ``?``."""
    return text.encode("utf-8", "replace")


def _whole(text: str) -> int:
    return len(text)


def read(text: str, marker: str, keys: Sequence[str], safe_length: Callable[[str], int] = _whole) -> dict[str, str]:
    """Each asked-for migration's SQL from the step's output, in the order asked, capped again.

    A migration ``sqlmigrate`` failed on gets a ``-- sqlmigrate failed: ...`` comment instead; one past
    the total cap, a comment saying so. Raises ``UnreadableError`` when no whole answer is there.
    A text cut short (by the step, in the project's process, or here) ends at ``safe_length`` of it:
    not inside a secret, which redaction could no longer see whole.
    """
    answer = django_shell.answer(marker, text)
    if not isinstance(answer, dict):
        msg = "its result is not a JSON object"
        raise UnreadableError(msg)
    collected: dict[str, str] = {}
    spent = 0
    for key in keys:
        entry = answer.get(key)
        if not isinstance(entry, dict):
            msg = f"its result has no entry for {key}"
            raise UnreadableError(msg)
        if entry.get("skipped") is True or spent >= TOTAL_BYTES:
            collected[key] = SKIPPED
            continue
        error = entry.get("error")
        if isinstance(error, str):
            if len(error) >= ERROR_CHARS:  # cut by the step
                error = error[:ERROR_CHARS]
                error = error[: safe_length(error)] + " …"
            collected[key] = "-- sqlmigrate failed: " + " ".join(_clean(error).decode().split()) + "\n"
            continue
        sql, more = entry.get("sql"), entry.get("more")
        if not isinstance(sql, str) or not isinstance(more, int) or isinstance(more, bool) or more < 0:
            msg = f"its entry for {key} is malformed"
            raise UnreadableError(msg)
        data = _clean(sql)
        room = min(PER_MIGRATION_BYTES, TOTAL_BYTES - spent)
        kept = data[:room].decode("utf-8", "ignore")
        if more or len(kept) < len(sql):
            kept = kept[: safe_length(kept)]
        more += len(data) - len(kept.encode())
        spent += len(kept.encode())
        collected[key] = kept + not_collected(more) if more else kept
    return collected


def sizes(collected: dict[str, str]) -> str:
    """``catalog.0001_initial 412 B, orders.0001_initial 1,024 B`` for the debug log."""
    return ", ".join(f"{key} {len(sql.encode()):,} B" for key, sql in collected.items())
