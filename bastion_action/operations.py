"""Pure: the lint step's question to Django (each pending migration's operations, lines and SQL) and its answer.

The step is one process through the command's runner, as ``show-sql``'s: ``manage.py shell -c
SCRIPT`` with the project's settings and the command's database URL. For each migration the
script asks Django's migration loader for the state before it, then, operation by operation,
what the operation is (its class, its field's facts, the table it touches, whether it can be
reversed), the SQL Django would run for it (the schema editor collecting SQL, as
``sqlmigrate`` does, with nothing executed), and where it is written: the migration file
(relative to the command's directory) and the operation's first and last line (``ast``), and
each ``# bastion-migrate: ack <rule>`` comment's line.

Everything in the answer is untrusted: ``read`` keeps only the migrations asked for, checks
every value's type, and caps every text and count again.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bastion_action import django_shell

SQL_CHARS = 16 * 1024  # of one operation's SQL
TEXT_CHARS = 500  # a description, a table name, a type, an error
MAX_OPERATIONS = 500  # of one migration
MAX_ACKS = 200  # acknowledgement comments of one migration file


@dataclasses.dataclass(frozen=True)
class Operation:
    """One operation of a migration as Django sees it (``inner``: a SeparateDatabaseAndState's database ones)."""

    kind: str  # the class name: AddField, RunSQL, ...
    description: str = ""  # Django's describe()
    table: str | None = None  # the existing table it works on (None: a new table, or none)
    line: int = 0  # in the migration file; 0 when not known
    end_line: int = 0
    sql: tuple[str, ...] = ()
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # null, default, old_type, reversible...
    inner: tuple[Operation, ...] = ()
    error: str = ""  # collecting its SQL failed

    def all(self) -> tuple[Operation, ...]:
        """This operation and the database operations it holds."""
        return (self, *self.inner)


@dataclasses.dataclass(frozen=True)
class MigrationFacts:
    key: str  # app.name
    file: str = ""  # relative to the command's working directory; '' when outside it or unknown
    atomic: bool = True
    operations: tuple[Operation, ...] = ()
    acks: tuple[tuple[int, frozenset[str]], ...] = ()  # (line, rules) of each acknowledgement comment
    error: str = ""  # the migration could not be read


def new_marker() -> str:
    return django_shell.new_marker("lint")


# Runs inside the project's Python (Django 3.2+, Python 3.8+). Everything lives in one function:
# ``exec`` without globals (Django 3.2's shell) hides the script's top-level names from nested scopes.
_SCRIPT = """\
def _bastion_lint(keys, sql_chars, text_chars, max_operations):
    import ast, inspect, json, os, re, sys
    from django.db import connection
    from django.db.migrations.loader import MigrationLoader
    from django.db.models import NOT_PROVIDED

    loader = MigrationLoader(connection, ignore_no_migrations=True)
    ack = re.compile(r"#\\s*bastion-migrate:\\s*ack\\b([^#\\n]*)")

    def short(value):
        return str(value)[:text_chars]

    def table(state, app, model):
        model_state = state.models.get((app, str(model).lower()))
        if model_state is None:
            return None
        return model_state.options.get("db_table") or "%s_%s" % (app, model_state.name_lower)

    def field_of(state, app, model, name):
        model_state = state.models.get((app, str(model).lower()))
        if model_state is None:
            return None
        return dict(model_state.fields).get(name)

    def db_type(field):
        try:
            found = field.db_type(connection)
        except Exception:
            return None
        return None if found is None else short(found)

    def default_of(field):
        db_default = getattr(field, "db_default", NOT_PROVIDED)
        if db_default is not NOT_PROVIDED:
            return "database"
        if field.has_default():
            return "callable" if callable(field.default) else "constant"
        return "none"

    def describe(op, app, state):
        kind = type(op).__name__
        entry = {"kind": kind, "facts": {}}
        try:
            entry["description"] = short(op.describe())
        except Exception:
            entry["description"] = kind
        facts = entry["facts"]
        model = getattr(op, "model_name", None) or getattr(op, "name", None)
        if kind in ("RenameModel",):
            model = op.old_name
        if kind not in ("CreateModel", "RunSQL", "RunPython", "SeparateDatabaseAndState") and model:
            entry["table"] = table(state, app, model)
        field = getattr(op, "field", None)
        if field is not None and kind in ("AddField", "AlterField"):
            facts["null"] = bool(field.null)
            facts["default"] = default_of(field)
            facts["new_type"] = db_type(field)
            old = field_of(state, app, op.model_name, op.name) if kind == "AlterField" else None
            if old is not None:
                facts["old_type"] = db_type(old)
                facts["old_null"] = bool(old.null)
        if kind == "RunPython":
            facts["reversible"] = op.reverse_code is not None
        if kind == "RunSQL":
            facts["reversible"] = op.reverse_sql is not None
        if kind == "RemoveField":
            facts["in_previous_state"] = field_of(state, app, op.model_name, op.name) is not None
        if kind == "DeleteModel":
            facts["in_previous_state"] = (app, op.name_lower) in state.models
        if kind == "SeparateDatabaseAndState":
            inner, inner_state = [], state.clone()
            for database_op in op.database_operations[:max_operations]:
                inner.append(describe(database_op, app, inner_state))
                database_op.state_forwards(app, inner_state)
            entry["inner"] = inner
        return entry

    def lines_of(module, count):
        try:
            path = inspect.getsourcefile(module)
            with open(path, encoding="utf-8") as handle:
                source = handle.read()
        except Exception:
            return "", [], []
        try:
            relative = os.path.relpath(path, os.getcwd())
        except ValueError:
            relative = ""
        if relative.startswith(".."):
            relative = ""
        spans = []
        try:
            tree = ast.parse(source)
        except SyntaxError:
            tree = None
        for node in ast.walk(tree) if tree is not None else []:
            if isinstance(node, ast.ClassDef):
                for statement in node.body:
                    targets = getattr(statement, "targets", None) or [getattr(statement, "target", None)]
                    names = [getattr(target, "id", None) for target in targets]
                    value = getattr(statement, "value", None)
                    if "operations" in names and isinstance(value, (ast.List, ast.Tuple)):
                        spans = [[item.lineno, getattr(item, "end_lineno", item.lineno)] for item in value.elts]
        acks = []
        for number, text in enumerate(source.splitlines(), 1):
            found = ack.search(text)
            if found:
                acks.append([number, short(found.group(1))])
        return relative, spans if len(spans) == count else [], acks[:200]

    def sql_of(app, name, migration):
        state = loader.project_state((app, name), at_end=False)
        before_each, sqls, errors = [], [], []
        with connection.schema_editor(collect_sql=True, atomic=False) as editor:
            for op in migration.operations[:max_operations]:
                before = state.clone()
                before_each.append(before)
                op.state_forwards(app, state)
                start = len(editor.collected_sql)
                error = ""
                if getattr(op, "reduces_to_sql", True):
                    try:
                        op.database_forwards(app, editor, before, state)
                        for statement in editor.deferred_sql:
                            editor.execute(statement)
                        editor.deferred_sql = []
                    except Exception as exc:
                        error = short("%s: %s" % (type(exc).__name__, exc))
                        editor.deferred_sql = []
                sqls.append([short_sql(text) for text in editor.collected_sql[start:]])
                errors.append(error)
        return before_each, sqls, errors

    def short_sql(text):
        return str(text)[:sql_chars]

    found = {}
    for key in keys:
        app, name = key.split(".", 1)
        try:
            migration = loader.get_migration(app, name)
            module = sys.modules[type(migration).__module__]
            states, sqls, errors = sql_of(app, name, migration)
            operations = list(migration.operations[:max_operations])
            file, spans, acks = lines_of(module, len(operations))
            entries = []
            for index, op in enumerate(operations):
                entry = describe(op, app, states[index])
                entry["sql"] = sqls[index]
                entry["error"] = errors[index]
                if spans:
                    entry["line"], entry["end_line"] = spans[index]
                entries.append(entry)
            found[key] = {
                "file": file,
                "atomic": bool(migration.atomic),
                "operations": entries,
                "acks": acks,
            }
        except Exception as exc:
            found[key] = {"error": short("%s: %s" % (type(exc).__name__, exc))}
    return found


emit(MARKER, _bastion_lint(KEYS, SQL_CHARS, TEXT_CHARS, MAX_OPERATIONS))
"""


def script(marker: str, keys: Sequence[str]) -> str:
    """The Python source ``manage.py shell -c`` runs: each ``app.name`` in ``keys`` described."""
    call = f"emit({marker!r}, _bastion_lint({list(keys)!r}, {SQL_CHARS}, {TEXT_CHARS}, {MAX_OPERATIONS}))\n"
    body = _SCRIPT.replace("emit(MARKER, _bastion_lint(KEYS, SQL_CHARS, TEXT_CHARS, MAX_OPERATIONS))\n", call)
    return django_shell.EMIT + body


def argv(manage_py: str, marker: str, keys: Sequence[str]) -> list[str]:
    """The step's command line after the interpreter."""
    return django_shell.argv(manage_py, script(marker, keys))


_RULE_WORD = re.compile(r"[a-z0-9][a-z0-9-]{0,59}")


def ack_rules(text: str) -> frozenset[str]:
    """The rule ids an acknowledgement comment names: ``ack add-foreign-key, set-not-null -- why`` -> both."""
    words = re.split(r"[\s,]+", text.split("--", 1)[0].strip())
    return frozenset(word for word in words if _RULE_WORD.fullmatch(word))


def _text(value: object, name: str, *, limit: int = TEXT_CHARS) -> str:
    if not isinstance(value, str):
        msg = f"its {name} is not text"
        raise django_shell.UnreadableError(msg)
    return value[:limit]


def _line(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**7 else 0


_FACT_TYPES = (bool, str, type(None))


def _operation(entry: object, key: str, *, depth: int = 0) -> Operation:
    if not isinstance(entry, dict):
        msg = f"an operation of {key} is malformed"
        raise django_shell.UnreadableError(msg)
    facts_in = entry.get("facts", {})
    if not isinstance(facts_in, dict):
        msg = f"an operation of {key} has malformed facts"
        raise django_shell.UnreadableError(msg)
    facts = {
        str(name)[:40]: value[:TEXT_CHARS] if isinstance(value, str) else value
        for name, value in list(facts_in.items())[:20]
        if isinstance(value, _FACT_TYPES)
    }
    sql_in = entry.get("sql", [])
    if not isinstance(sql_in, list) or not all(isinstance(text, str) for text in sql_in):
        msg = f"an operation of {key} has malformed SQL"
        raise django_shell.UnreadableError(msg)
    inner_in = entry.get("inner", [])
    if not isinstance(inner_in, list) or (inner_in and depth):
        msg = f"an operation of {key} has malformed inner operations"
        raise django_shell.UnreadableError(msg)
    table = entry.get("table")
    return Operation(
        kind=_text(entry.get("kind"), "operation kind", limit=80),
        description=_text(entry.get("description", ""), "description"),
        table=None if table is None else _text(table, "table"),
        line=_line(entry.get("line")),
        end_line=_line(entry.get("end_line")),
        sql=tuple(text[:SQL_CHARS] for text in sql_in[:100]),
        facts=facts,
        inner=tuple(_operation(item, key, depth=1) for item in inner_in[:MAX_OPERATIONS]),
        error=_text(entry.get("error", ""), "error"),
    )


def _acks(value: object, key: str) -> tuple[tuple[int, frozenset[str]], ...]:
    if not isinstance(value, list):
        msg = f"the acknowledgements of {key} are malformed"
        raise django_shell.UnreadableError(msg)
    found = []
    for item in value[:MAX_ACKS]:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], str)):  # noqa: PLR2004 - a pair
            msg = f"an acknowledgement of {key} is malformed"
            raise django_shell.UnreadableError(msg)
        found.append((_line(item[0]), ack_rules(item[1][:TEXT_CHARS])))
    return tuple(found)


def read(text: str, marker: str, keys: Sequence[str]) -> list[MigrationFacts]:
    """Each asked-for migration's facts from the step's output, in the order asked.

    Raises ``django_shell.UnreadableError`` when no whole, well-formed answer is there.
    """
    answer = django_shell.answer(marker, text)
    if not isinstance(answer, dict):
        msg = "its result is not a JSON object"
        raise django_shell.UnreadableError(msg)
    found = []
    for key in keys:
        entry = answer.get(key)
        if not isinstance(entry, dict):
            msg = f"its result has no entry for {key}"
            raise django_shell.UnreadableError(msg)
        if "error" in entry:
            found.append(MigrationFacts(key, error=_text(entry["error"], "error")))
            continue
        operations = entry.get("operations")
        if not isinstance(operations, list):
            msg = f"its entry for {key} is malformed"
            raise django_shell.UnreadableError(msg)
        file = _text(entry.get("file", ""), "file")
        found.append(
            MigrationFacts(
                key,
                file="" if file.startswith(("/", "..")) else file,
                atomic=entry.get("atomic") is not False,
                operations=tuple(_operation(item, key) for item in operations[:MAX_OPERATIONS]),
                acks=_acks(entry.get("acks", []), key),
            )
        )
    return found
