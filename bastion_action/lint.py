"""Pure: PostgreSQL lock and rewrite hazards of pending migrations, weighed with the live facts of their tables.

Input: each migration's operations and SQL (``operations``), each touched table's facts (rows and
size from ``pg_class``, the sessions holding locks on it), the thresholds. Output: findings, each
with its rule, risk, table, the safer pattern and its section of docs/lint.md.

Two kinds of rule. A **weighed** rule's hazard grows with the table: it holds a lock while the
table is scanned or rewritten, so its risk comes from the table's estimated rows (``low`` below
``lint-rows-medium``, ``medium`` below ``lint-rows-high``, else ``high``), one level higher when
a transaction older than ``lint-transaction-seconds`` holds a lock on the table (the migration
queues behind it, and every query on the table behind the migration). A **fixed** rule's hazard
does not depend on the table's size (a migration that cannot be undone; a drop or a rename that
the release still running does not expect; a statement PostgreSQL refuses in a transaction).

A finding is acknowledged by a comment ``# bastion-migrate: ack <rule-id>`` on one of its
operation's lines or on the lines between the previous operation and it; it is still reported,
and no longer counts toward ``risk``.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping, Sequence

from bastion_action.operations import MigrationFacts, Operation

DOCS = "docs/lint.md"


class Risk(enum.StrEnum):
    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return list(Risk).index(self)

    def raised(self) -> Risk:
        return list(Risk)[min(self.rank + 1, Risk.HIGH.rank)]


def highest(risks: Iterable[Risk]) -> Risk:
    return max(risks, key=lambda risk: risk.rank, default=Risk.NONE)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    rows_medium: int = 100_000
    rows_high: int = 10_000_000
    transaction_seconds: float = 60.0


@dataclasses.dataclass(frozen=True)
class TableFacts:
    """A table as the database sees it now; ``rows`` None when never analyzed (and not empty)."""

    rows: int | None
    bytes: int
    lockers: int = 0  # other sessions holding a lock on it now
    oldest_transaction_seconds: float | None = None  # the oldest transaction among them


@dataclasses.dataclass(frozen=True)
class Rule:
    id: str
    title: str
    safer: str
    weighed: bool = True
    fixed: Risk = Risk.HIGH  # a fixed rule's risk


RULES: tuple[Rule, ...] = (
    Rule(
        "index-not-concurrent",
        "index created or dropped without CONCURRENTLY",
        "AddIndexConcurrently / RemoveIndexConcurrently (or CREATE / DROP INDEX CONCURRENTLY) in a migration "
        "with atomic = False",
    ),
    Rule(
        "concurrently-in-atomic",
        "CONCURRENTLY inside an atomic migration",
        "set atomic = False on the migration, and keep the concurrent statement alone in it",
        weighed=False,
        fixed=Risk.HIGH,
    ),
    Rule(
        "add-column-not-null",
        "column added NOT NULL without a default",
        "add the column nullable (or with a constant default), backfill in batches, then set NOT NULL through "
        "a validated CHECK",
    ),
    Rule(
        "add-column-volatile-default",
        "column added with a volatile default (the table is rewritten)",
        "add the column without a default (or a constant one), then backfill in batches",
    ),
    Rule(
        "alter-column-type",
        "column type changed in a way that rewrites the table",
        "add a column of the new type, backfill it in batches, switch reads and writes, drop the old one; "
        "or only widen (varchar(n) to varchar(m > n) or text), which PostgreSQL does without a rewrite",
    ),
    Rule(
        "set-not-null",
        "NOT NULL set on an existing column (a full scan under an exclusive lock)",
        "ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT in a later migration, "
        "then SET NOT NULL (PostgreSQL 12+ uses the valid check and skips the scan)",
    ),
    Rule(
        "add-check-constraint",
        "CHECK constraint added without NOT VALID",
        "ADD CONSTRAINT ... NOT VALID, then VALIDATE CONSTRAINT in a separate migration",
    ),
    Rule(
        "add-foreign-key",
        "foreign key added without NOT VALID",
        "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT in a separate migration",
    ),
    Rule(
        "run-python-irreversible",
        "RunPython without reverse_code",
        "give reverse_code (migrations.RunPython.noop when there is nothing to undo)",
        weighed=False,
        fixed=Risk.MEDIUM,
    ),
    Rule(
        "run-sql-irreversible",
        "RunSQL without reverse_sql",
        "give reverse_sql (migrations.RunSQL.noop when there is nothing to undo)",
        weighed=False,
        fixed=Risk.MEDIUM,
    ),
    Rule(
        "drop-column",
        "column dropped while the release now running still has it in its models",
        "first release: remove the field from the model with SeparateDatabaseAndState(state_operations=[...]); "
        "a later release drops the column",
        weighed=False,
        fixed=Risk.HIGH,
    ),
    Rule(
        "drop-table",
        "table dropped while the release now running still has its model",
        "first release: remove the model from the code (state only); a later release drops the table",
        weighed=False,
        fixed=Risk.HIGH,
    ),
    Rule(
        "rename",
        "column or table renamed under the release now running",
        "add the new column or table beside the old one, write both, switch reads, drop the old one later "
        "(or rename in the model only, with db_column / db_table)",
        weighed=False,
        fixed=Risk.HIGH,
    ),
)
RULES_BY_ID: Mapping[str, Rule] = {rule.id: rule for rule in RULES}


@dataclasses.dataclass(frozen=True)
class Finding:
    migration: str
    operation: str  # Django's description of it
    index: int  # the operation's position in the migration, from 0
    rule: str
    risk: Risk
    table: str | None
    facts: TableFacts | None
    reason: str  # why the rule fired, in one line
    file: str = ""
    line: int = 0
    acknowledged: bool = False
    note: str = ""  # how the facts weighed it

    @property
    def safer(self) -> str:
        return RULES_BY_ID[self.rule].safer

    @property
    def docs(self) -> str:
        return f"{DOCS}#{self.rule}"


@dataclasses.dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    thresholds: Thresholds
    unread: tuple[str, ...] = ()  # migrations that could not be read, operations whose SQL could not be produced

    @property
    def risk(self) -> Risk:
        return highest(finding.risk for finding in self.findings if not finding.acknowledged)


# -- SQL ---------------------------------------------------------------------------------------------------------

_NAME = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED = rf"({_NAME}(?:\s*\.\s*{_NAME})?)"
_CREATE_INDEX = re.compile(
    rf"\bCREATE\s+(?:UNIQUE\s+)?INDEX\b(\s+CONCURRENTLY\b)?.*?\bON\s+(?:ONLY\s+)?{_QUALIFIED}",
    re.IGNORECASE | re.DOTALL,
)
_DROP_INDEX = re.compile(r"\bDROP\s+INDEX\b(\s+CONCURRENTLY\b)?", re.IGNORECASE)
_CONCURRENTLY = re.compile(r"\bCONCURRENTLY\b", re.IGNORECASE)
_ALTER_TABLE = re.compile(rf"\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{_QUALIFIED}", re.IGNORECASE)
_NOT_A_COLUMN = r"(?!(?:CONSTRAINT|CHECK|FOREIGN|UNIQUE|PRIMARY|EXCLUDE)\b)"
_ADD_COLUMN_NOT_NULL = re.compile(r"\bADD\s+(?:COLUMN\s+)?" + _NOT_A_COLUMN + r"[^,;]*\bNOT\s+NULL\b", re.IGNORECASE)
_ADD_COLUMN_DEFAULT = re.compile(
    r"\bADD\s+(?:COLUMN\s+)?" + _NOT_A_COLUMN + r"[^,;]*\bDEFAULT\b([^,;]*)", re.IGNORECASE
)
_VOLATILE = re.compile(
    r"\b(random|clock_timestamp|timeofday|gen_random_uuid|uuid_generate_v[14](?:mc)?|nextval|txid_current)\s*\(",
    re.IGNORECASE,
)
_TYPE_CHANGE = re.compile(r"\bALTER\s+(?:COLUMN\s+)?" + _NAME + r"\s+(?:SET\s+DATA\s+)?TYPE\b", re.IGNORECASE)
_SET_NOT_NULL = re.compile(r"\bSET\s+NOT\s+NULL\b", re.IGNORECASE)
_CHECK = re.compile(r"\bADD\s+(?:CONSTRAINT\s+" + _NAME + r"\s+)?CHECK\b", re.IGNORECASE)
_FOREIGN_KEY = re.compile(r"\bADD\s+(?:CONSTRAINT\s+" + _NAME + r"\s+)?FOREIGN\s+KEY\b", re.IGNORECASE)
_NOT_VALID = re.compile(r"\bNOT\s+VALID\b", re.IGNORECASE)
_RENAME = re.compile(r"\bRENAME\s+(?:COLUMN\s+|TO\b|" + _NAME + r"\s+TO\b)", re.IGNORECASE)
_DROP_COLUMN = re.compile(r"\bDROP\s+(?:COLUMN\s+)?(?!CONSTRAINT\b|DEFAULT\b|NOT\b|INDEX\b)" + _NAME, re.IGNORECASE)
_DROP_TABLE = re.compile(rf"\bDROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?{_QUALIFIED}", re.IGNORECASE)
_COMMENT = re.compile(r"--[^\n]*")


def unquote(name: str) -> str:
    """``"public"."Orders"`` -> ``Orders`` (the table's own name; the schema is the search path's)."""
    last = re.split(r'\.(?=(?:[^"]*"[^"]*")*[^"]*$)', name.strip())[-1].strip()
    return last[1:-1].replace('""', '"') if last.startswith('"') else last.lower()


def statements(operation: Operation) -> list[str]:
    """The operation's SQL, comments removed, one statement per item."""
    # A ';' inside a string or a function body splits a statement too: each piece is still judged.
    pieces = (piece for text in operation.sql for piece in _COMMENT.sub("", text).split(";"))
    return [" ".join(piece.split()) for piece in pieces if piece.strip()]


def tables_in(sql: str) -> list[str]:
    """The existing tables a statement works on (ALTER TABLE, CREATE INDEX ... ON, DROP TABLE)."""
    found = [unquote(match[1]) for match in _ALTER_TABLE.finditer(sql)]
    found += [unquote(match[2]) for match in _CREATE_INDEX.finditer(sql)]
    found += [unquote(match[1]) for match in _DROP_TABLE.finditer(sql)]
    return list(dict.fromkeys(found))


# -- the rules ---------------------------------------------------------------------------------------------------

_WIDENING = re.compile(r"(varchar|character varying|numeric|decimal)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", re.IGNORECASE)


def rewrites(old: str, new: str) -> bool:
    """Whether changing a column from ``old`` to ``new`` (PostgreSQL type names) rewrites the table."""
    old, new = " ".join(old.lower().split()), " ".join(new.lower().split())
    if old == new:
        return False
    old_match, new_match = _WIDENING.fullmatch(old), _WIDENING.fullmatch(new)
    if (
        old_match
        and new in {"text", "varchar", "character varying"}
        and old_match[1] in {"varchar", "character varying"}
    ):
        return False
    if old in {"varchar", "character varying"} and new == "text":
        return False
    if old_match and new_match and old_match[1] == new_match[1]:
        if old_match[1] in {"varchar", "character varying"}:
            return int(new_match[2]) < int(old_match[2])
        return not (old_match[3] == new_match[3] and int(new_match[2]) >= int(old_match[2]))
    return True


@dataclasses.dataclass(frozen=True)
class _Hit:
    rule: str
    reason: str
    table: str | None


def _sql_hits(operation: Operation, atomic: bool, new_tables: set[str]) -> list[_Hit]:  # noqa: C901, PLR0912
    hits: list[_Hit] = []
    for sql in statements(operation):
        tables = tables_in(sql)
        table = tables[0] if tables else operation.table
        if table in new_tables:
            continue  # created by this migration: empty, and nobody else uses it yet
        index = _CREATE_INDEX.search(sql)
        if index and not index[1]:
            hits.append(_Hit("index-not-concurrent", "CREATE INDEX without CONCURRENTLY", unquote(index[2])))
        drop_index = _DROP_INDEX.search(sql)
        if drop_index and not drop_index[1]:
            hits.append(_Hit("index-not-concurrent", "DROP INDEX without CONCURRENTLY", operation.table))
        if atomic and _CONCURRENTLY.search(sql):
            hits.append(_Hit("concurrently-in-atomic", "CONCURRENTLY in a migration that runs in a transaction", table))
        if not _ALTER_TABLE.search(sql):
            continue
        default = _ADD_COLUMN_DEFAULT.search(sql)
        if _ADD_COLUMN_NOT_NULL.search(sql) and not default:
            hits.append(_Hit("add-column-not-null", "ADD COLUMN ... NOT NULL without a default", table))
        if default and _VOLATILE.search(default[1]):
            hits.append(_Hit("add-column-volatile-default", f"ADD COLUMN with DEFAULT {default[1].strip()}", table))
        if _TYPE_CHANGE.search(sql) and operation.kind != "AlterField":
            hits.append(_Hit("alter-column-type", "ALTER COLUMN ... TYPE (the old type is not known here)", table))
        if _SET_NOT_NULL.search(sql):
            hits.append(_Hit("set-not-null", "ALTER COLUMN ... SET NOT NULL", table))
        if _CHECK.search(sql) and not _NOT_VALID.search(sql):
            hits.append(_Hit("add-check-constraint", "ADD CONSTRAINT ... CHECK without NOT VALID", table))
        if _FOREIGN_KEY.search(sql) and not _NOT_VALID.search(sql):
            hits.append(_Hit("add-foreign-key", "ADD CONSTRAINT ... FOREIGN KEY without NOT VALID", table))
        if operation.kind == "RunSQL" and _RENAME.search(sql):
            hits.append(_Hit("rename", "RENAME in SQL", table))
        if operation.kind == "RunSQL" and _DROP_COLUMN.search(sql):
            hits.append(_Hit("drop-column", "DROP COLUMN in SQL", table))
    if operation.kind == "RunSQL":
        for sql in statements(operation):
            drop = _DROP_TABLE.search(sql)
            if drop and unquote(drop[1]) not in new_tables:
                hits.append(_Hit("drop-table", "DROP TABLE in SQL", unquote(drop[1])))
    return hits


_RENAMES = {"RenameField": "RenameField", "RenameModel": "RenameModel", "AlterModelTable": "AlterModelTable"}
_CONCURRENT_KINDS = {"AddIndexConcurrently", "RemoveIndexConcurrently"}


def _kind_hits(operation: Operation, atomic: bool) -> list[_Hit]:
    hits: list[_Hit] = []
    for part in operation.all():
        facts, table = part.facts, part.table
        if part.kind == "RunPython" and facts.get("reversible") is False:
            hits.append(_Hit("run-python-irreversible", "RunPython without reverse_code", table))
        if part.kind == "RunSQL" and facts.get("reversible") is False:
            hits.append(_Hit("run-sql-irreversible", "RunSQL without reverse_sql", table))
        if part.kind == "RemoveField" and facts.get("in_previous_state") is True:
            hits.append(_Hit("drop-column", "RemoveField of a field the previous models still have", table))
        if part.kind == "DeleteModel" and facts.get("in_previous_state") is True:
            hits.append(_Hit("drop-table", "DeleteModel of a model the previous models still have", table))
        if part.kind in _RENAMES:
            hits.append(_Hit("rename", part.kind, table))
        if part.kind in _CONCURRENT_KINDS and atomic:
            hits.append(_Hit("concurrently-in-atomic", f"{part.kind} in an atomic migration", table))
        old_type, new_type = facts.get("old_type"), facts.get("new_type")
        if isinstance(old_type, str) and isinstance(new_type, str) and rewrites(old_type, new_type):
            hits.append(_Hit("alter-column-type", f"type {old_type} -> {new_type} rewrites the table", table))
        if part.kind == "AddField" and facts.get("null") is False and facts.get("default") == "none":
            hits.append(_Hit("add-column-not-null", "AddField NOT NULL without a default", table))
    return hits


def _weigh(rule: Rule, facts: TableFacts | None, thresholds: Thresholds) -> tuple[Risk, str]:
    if not rule.weighed:
        return rule.fixed, "fixed: does not depend on the table's size"
    if facts is None:
        return Risk.LOW, "the table does not exist yet (a pending migration creates it): empty"
    if facts.rows is None:
        risk, note = Risk.MEDIUM, "never analyzed: its row count is not known"
    elif facts.rows >= thresholds.rows_high:
        risk, note = Risk.HIGH, f"{facts.rows:,} rows >= lint-rows-high {thresholds.rows_high:,}"
    elif facts.rows >= thresholds.rows_medium:
        risk, note = Risk.MEDIUM, f"{facts.rows:,} rows >= lint-rows-medium {thresholds.rows_medium:,}"
    else:
        risk, note = Risk.LOW, f"{facts.rows:,} rows < lint-rows-medium {thresholds.rows_medium:,}"
    age = facts.oldest_transaction_seconds
    if age is not None and age >= thresholds.transaction_seconds:
        risk = risk.raised()
        note += f"; raised: a transaction {age:.0f} s old holds a lock on it"
    return risk, note


def acknowledged_rules(migration: MigrationFacts, index: int) -> frozenset[str]:
    """The rules acknowledged for operation ``index``: comments on its lines, or between the previous one and it."""
    operation = migration.operations[index]
    if not operation.line:
        return frozenset()
    previous_end = migration.operations[index - 1].end_line if index else 0
    last = operation.end_line or operation.line
    rules: set[str] = set()
    for line, named in migration.acks:
        if previous_end < line <= last:
            rules |= named
    return frozenset(rules)


def _new_tables(migration: MigrationFacts) -> set[str]:
    """Tables this migration creates (CREATE TABLE in its SQL): linting their indexes and constraints is moot."""
    found = set()
    for operation in migration.operations:
        for sql in statements(operation):
            match = re.search(rf"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_QUALIFIED}", sql, re.IGNORECASE)
            if match:
                found.add(unquote(match[1]))
    return found


def touched_tables(migrations: Sequence[MigrationFacts]) -> list[str]:
    """Every existing table the operations name: the ones whose live facts the judgement needs."""
    found: list[str] = []
    for migration in migrations:
        for operation in migration.operations:
            found += [part.table for part in operation.all() if part.table]
            for sql in statements(operation):
                found += tables_in(sql)
    return list(dict.fromkeys(found))


def judge(migrations: Sequence[MigrationFacts], tables: Mapping[str, TableFacts], thresholds: Thresholds) -> Report:
    """Every rule on every operation of ``migrations``; ``tables``: the facts of the tables that exist now."""
    findings: list[Finding] = []
    for migration in migrations:
        new_tables = _new_tables(migration)
        for index, operation in enumerate(migration.operations):
            acked = acknowledged_rules(migration, index)
            hits = _kind_hits(operation, migration.atomic) + _sql_hits(operation, migration.atomic, new_tables)
            seen: set[tuple[str, str | None]] = set()
            for hit in hits:
                if (hit.rule, hit.table) in seen:
                    continue
                seen.add((hit.rule, hit.table))
                rule = RULES_BY_ID[hit.rule]
                facts = tables.get(hit.table) if hit.table else None
                risk, note = _weigh(rule, facts, thresholds)
                findings.append(
                    Finding(
                        migration=migration.key,
                        operation=operation.description or operation.kind,
                        index=index,
                        rule=hit.rule,
                        risk=risk,
                        table=hit.table,
                        facts=facts,
                        reason=hit.reason,
                        file=migration.file,
                        line=operation.line,
                        acknowledged=hit.rule in acked,
                        note=note,
                    )
                )
    unread = [f"{migration.key}: {migration.error}" for migration in migrations if migration.error]
    # An operation whose SQL Django could not produce is judged by its kind alone: said, not passed over.
    unread += [
        f"{migration.key}: operation {index + 1} ({part.description or part.kind}): its SQL could not be "
        f"produced, so it was judged by its kind alone: {part.error}"
        for migration in migrations
        for index, operation in enumerate(migration.operations)
        for part in operation.all()
        if part.error
    ]
    return Report(tuple(findings), thresholds, tuple(unread))


def size(count: int) -> str:
    """``12.3 MB``: bytes as the summary shows them."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":  # noqa: PLR2004
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


def scale(facts: TableFacts | None) -> str:
    """``~40,000,000 rows, 1.4 GB``, or why there is nothing to say."""
    if facts is None:
        return "new table"
    rows = "rows unknown" if facts.rows is None else f"~{facts.rows:,} rows"
    return f"{rows}, {size(facts.bytes)}"


def finding_document(finding: Finding, database: str | None) -> dict[str, object]:
    facts = finding.facts
    return {
        "database": database,
        "migration": finding.migration,
        "operation": finding.operation,
        "operation_index": finding.index,
        "rule": finding.rule,
        "risk": finding.risk.value,
        "acknowledged": finding.acknowledged,
        "table": finding.table,
        "rows": None if facts is None else facts.rows,
        "bytes": None if facts is None else facts.bytes,
        "lockers": None if facts is None else facts.lockers,
        "oldest_transaction_seconds": None
        if facts is None or facts.oldest_transaction_seconds is None
        else round(facts.oldest_transaction_seconds, 1),
        "reason": finding.reason,
        "weighed": finding.note,
        "safer": finding.safer,
        "docs": finding.docs,
        "file": finding.file or None,
        "line": finding.line or None,
    }


def document(report: Report, database: str | None) -> dict[str, object]:
    """The report's JSON form (risk-report output, the JSON report's ``lint``)."""
    thresholds = report.thresholds
    return {
        "risk": report.risk.value,
        "thresholds": {
            "rows_medium": thresholds.rows_medium,
            "rows_high": thresholds.rows_high,
            "transaction_seconds": thresholds.transaction_seconds,
        },
        "findings": [finding_document(finding, database) for finding in report.findings],
        "unread": list(report.unread),
    }
