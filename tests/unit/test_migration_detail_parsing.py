"""Per-migration detail from Django's output: timings at verbosity 2, planned operations, show-sql's answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bastion_action import inputs, migrations, show_sql
from bastion_action.gha import Console
from bastion_action.launch import launch
from bastion_action.outcome import UNKNOWN, Outcome
from bastion_action.output import LINE_HEAD, LineSplitter
from bastion_action.settings import Command

V2_WITH_EVERYTHING = """\
Operations to perform:
  Synchronize unmigrated apps: nomig
  Apply all migrations: audit, catalog, orders
Running pre-migrate handlers for application catalog
Running pre-migrate handlers for application orders
Synchronizing apps without migrations:
  Creating tables...
    Creating table nomig_thing
    Running deferred SQL...
Running migrations:
  Rendering model states... DONE (0.020s)
  Unapplying audit.0002_test_hooks... OK (0.002s)
  Applying catalog.0001_initial... FAKED (0.004s)
  Applying orders.0001_initial... OK (12.5s)
  Applying orders.0002_seed_statuses...seeding 3 statuses
 OK (0.031s)
  Applying catalog.0002_product_sku...no newline here OK (0.003s)
Running post-migrate handlers for application catalog
Adding content type 'catalog | product'
Adding permission 'Permission object (1)'
Running post-migrate handlers for application orders
"""


def test_verbosity_2_gives_each_migrations_own_seconds_whatever_else_it_prints() -> None:
    parsed = migrations.parse_migrate(V2_WITH_EVERYTHING)
    assert parsed.ran
    assert parsed.failed is None
    assert parsed.applied == ["orders.0001_initial", "orders.0002_seed_statuses", "catalog.0002_product_sku"]
    assert parsed.faked == ["catalog.0001_initial"]
    assert parsed.seconds == {
        "audit.0002_test_hooks": 0.002,
        "catalog.0001_initial": 0.004,
        "orders.0001_initial": 12.5,
        "orders.0002_seed_statuses": 0.031,
        "catalog.0002_product_sku": 0.003,
    }


def test_a_failure_half_way_keeps_the_seconds_of_what_ended_and_names_the_one_that_did_not() -> None:
    text = textwrap.dedent("""\
        Running migrations:
          Applying catalog.0001_initial... OK (0.004s)
          Applying orders.0001_initial...half of its own line
        Traceback (most recent call last):
          File "manage.py", line 22, in <module>
        RuntimeError: OK (0.1s) is not an ending here
    """)
    parsed = migrations.parse_migrate(text)
    assert parsed.applied == ["catalog.0001_initial"]
    assert parsed.failed == "orders.0001_initial"
    assert parsed.seconds == {"catalog.0001_initial": 0.004}


def test_verbosity_1_has_no_seconds_and_a_migrations_own_ok_line_still_ends_it() -> None:
    text = "Running migrations:\n  Applying a.0001_initial...printing\n OK\n  Applying a.0002_more... OK\n"
    parsed = migrations.parse_migrate(text)
    assert parsed.applied == ["a.0001_initial", "a.0002_more"]
    assert parsed.failed is None
    assert parsed.seconds == {}


def test_a_migrations_line_that_merely_ends_with_ok_does_not_end_it() -> None:
    text = "Running migrations:\n  Applying a.0001_initial...\nstatus OK\nTraceback (most recent call last):\n"
    parsed = migrations.parse_migrate(text)
    assert parsed.failed == "a.0001_initial"
    assert parsed.applied == []


PLAN = """\
Planned operations:
catalog.0003_index
    Raw SQL operation -> CREATE INDEX CONCURRENTLY catalog_...
    Add field weight to product
orders.0003_backfill
    Raw Python operation -> Fill in the weights.
audit.0003_drop
    Undo Create model AuditEvent
    Raw Python operation -> IRREVERSIBLE
billing.0001_initial
"""


def test_planned_operations_per_migration_in_order_as_django_words_them() -> None:
    planned = migrations.parse_migrate_plan_operations(PLAN)
    assert list(planned) == ["catalog.0003_index", "orders.0003_backfill", "audit.0003_drop", "billing.0001_initial"]
    assert planned == {
        "catalog.0003_index": [
            "Raw SQL operation -> CREATE INDEX CONCURRENTLY catalog_...",
            "Add field weight to product",
        ],
        "orders.0003_backfill": ["Raw Python operation -> Fill in the weights."],
        "audit.0003_drop": ["Undo Create model AuditEvent", "Raw Python operation -> IRREVERSIBLE"],
        "billing.0001_initial": [],
    }
    assert [m.key for m in migrations.parse_migrate_plan(PLAN)] == list(planned)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Planned operations:\n  No planned migration operations.\n", {}, id="nothing-planned"),
        pytest.param("System check identified no issues.\n", {}, id="no-plan-printed"),
        pytest.param(
            "Planned operations:\ncatalog.0001_initial\n    Create model Product\nTraceback (most recent call last):\n"
            "  File x\n",
            {"catalog.0001_initial": ["Create model Product"]},
            id="stops-at-other-output",
        ),
    ],
)
def test_plans_without_operations_to_show(text: str, expected: dict[str, list[str]]) -> None:
    assert migrations.parse_migrate_plan_operations(text) == expected


# -- show-sql ---------------------------------------------------------------------------------------------------


def run_script(tmp_path: Path, keys: list[str], sql: dict[str, str | None], before: str = "") -> tuple[str, str]:
    """The real show-sql script, run by a Python whose ``django`` answers sqlmigrate from ``sql``.

    The output goes through the action's own line splitter, as a runner's output does.
    """
    stub = tmp_path / "django" / "core" / "management"
    stub.mkdir(parents=True, exist_ok=True)
    for package in (tmp_path / "django", tmp_path / "django" / "core"):
        (package / "__init__.py").write_text("")
    (stub / "__init__.py").write_text(
        "import json, os, sys\n"
        f"sys.stdout.write({before!r})\n"
        "with open(os.environ['SQL_FILE'], encoding='utf-8') as answers:\n"
        "    ANSWERS = json.load(answers)\n"
        "def call_command(name, app, migration, stdout, no_color):\n"
        "    assert name == 'sqlmigrate' and no_color\n"
        "    text = ANSWERS[app + '.' + migration]\n"
        "    if text is None:\n"
        "        raise LookupError('Cannot find a migration matching %r' % migration)\n"
        "    stdout.write(text)\n"
    )
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(sql), encoding="utf-8")
    marker = show_sql.new_marker()
    done = subprocess.run(
        [sys.executable, "-c", show_sql.script(marker, keys)],
        env={**os.environ, "PYTHONPATH": str(tmp_path), "SQL_FILE": str(answers)},
        capture_output=True,
        check=True,
    )
    splitter = LineSplitter()
    lines = splitter.feed(done.stdout) + splitter.close()
    assert all(len(line) <= LINE_HEAD for line in lines)
    return "\n".join(lines), marker


def test_the_script_and_the_reader_agree(tmp_path: Path) -> None:
    sql = {
        "catalog.0001_initial": 'BEGIN;\nCREATE TABLE "catalog_product" ("id" bigint);\nCOMMIT;\n',
        "orders.0002_seed": "-- Raw Python operation\n-- THIS OPERATION CANNOT BE WRITTEN AS SQL\n",
        "catalog.0003_straße_v2": "-- ünïcode\n",
        "catalog.0009_gone": None,
    }
    keys = list(sql)
    output, marker = run_script(tmp_path, keys, sql, before="a project's own line\nno newline at its end")
    collected = show_sql.read(output, marker, keys)
    assert list(collected) == keys
    assert collected["catalog.0001_initial"] == sql["catalog.0001_initial"]
    assert collected["catalog.0003_straße_v2"] == "-- ünïcode\n"
    assert collected["catalog.0009_gone"].startswith("-- sqlmigrate failed: LookupError: Cannot find a migration")


def test_huge_sql_is_cut_per_migration_and_in_all_and_says_so(tmp_path: Path) -> None:
    keys = [f"app.{number:04}_big" for number in range(12)]
    sql: dict[str, str | None] = dict.fromkeys(keys, "SELECT 1; -- é\n" * 10000)  # 160,000 bytes each
    output, marker = run_script(tmp_path, keys, sql)
    collected = show_sql.read(output, marker, keys)
    cut = [key for key, text in collected.items() if "more bytes not collected" in text]
    skipped = [key for key, text in collected.items() if text == show_sql.SKIPPED]
    assert cut == keys[:8]  # 8 x 64 KiB = 512 KiB
    assert skipped == keys[8:]
    first = collected[keys[0]]
    kept = first[: first.index("\n-- … [")]
    assert len(kept.encode()) <= show_sql.PER_MIGRATION_BYTES
    assert f"[{160_000 - len(kept.encode()):,} more bytes not collected" in first
    assert sum(len(text.encode()) for text in collected.values()) < show_sql.TOTAL_BYTES + 4096


def answer_lines(marker: str, document: object, chunk: int = 10) -> list[str]:
    text = json.dumps(document)
    pieces = [text[at : at + chunk] for at in range(0, len(text), chunk)]
    return [
        *(f"{marker} {index} {piece}" for index, piece in enumerate(pieces)),
        f"{marker} end {len(pieces)} {len(text)}",
    ]


MARKER = "bastion-migrate-sql-0123456789abcdef01234567"
GOOD = {"a.0001_initial": {"sql": "CREATE TABLE a;\n", "more": 0}}


def test_lines_with_another_marker_or_none_are_ignored() -> None:
    hostile = [
        "bastion-migrate-sql-ffffffffffffffffffffffff 0 {}",
        "bastion-migrate-sql-ffffffffffffffffffffffff end 1 2",
        f"{MARKER}",  # the marker alone, no space: not a result line
        "\ufffd\ufffd not UTF-8 once",
        "::error::not a command either",
    ]
    collected = show_sql.read("\n".join([*hostile, *answer_lines(MARKER, GOOD)]), MARKER, ["a.0001_initial"])
    assert collected == {"a.0001_initial": "CREATE TABLE a;\n"}


def test_a_lone_surrogate_in_the_sql_becomes_a_question_mark() -> None:
    lines = answer_lines(MARKER, {"a.0001_initial": {"sql": "-- caf\udce9\n", "more": 0}})
    collected = show_sql.read("\n".join(lines), MARKER, ["a.0001_initial"])
    assert collected == {"a.0001_initial": "-- caf?\n"}
    collected["a.0001_initial"].encode()


def test_only_the_migrations_asked_for_are_kept_and_the_reader_caps_again() -> None:
    document = {
        "a.0001_initial": {"sql": "x" * (show_sql.PER_MIGRATION_BYTES + 10), "more": 5},
        "evil.0001_extra": {"sql": "DROP TABLE users;", "more": 0},
    }
    collected = show_sql.read("\n".join(answer_lines(MARKER, document, 30_000)), MARKER, ["a.0001_initial"])
    assert list(collected) == ["a.0001_initial"]
    assert collected["a.0001_initial"].endswith(show_sql.not_collected(15))


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        pytest.param([], "it printed no result", id="nothing"),
        pytest.param(answer_lines(MARKER, GOOD)[:-1], "ended before its last line", id="no-end"),
        pytest.param(
            [answer_lines(MARKER, GOOD)[0], f"{MARKER} 0 forged", *answer_lines(MARKER, GOOD)[1:]],
            "out of order",
            id="forged-line-with-the-marker",
        ),
        pytest.param([*answer_lines(MARKER, GOOD)[:-1], f"{MARKER} end 99 3"], "do not add up", id="count"),
        pytest.param([f"{MARKER} 0 {{not json", f"{MARKER} end 1 9"], "not JSON", id="not-json"),
        pytest.param(answer_lines(MARKER, ["a list"]), "not a JSON object", id="not-an-object"),
        pytest.param(answer_lines(MARKER, {}), "no entry for a.0001_initial", id="missing"),
        pytest.param(answer_lines(MARKER, {"a.0001_initial": {"sql": 3, "more": 0}}), "malformed", id="sql-not-text"),
        pytest.param(
            answer_lines(MARKER, {"a.0001_initial": {"sql": "", "more": -1}}), "malformed", id="negative-more"
        ),
    ],
)
def test_anything_malformed_is_unreadable_and_says_why(lines: list[str], reason: str) -> None:
    with pytest.raises(show_sql.UnreadableError, match=reason):
        show_sql.read("\n".join(lines), MARKER, ["a.0001_initial"])


def test_markers_are_fresh_for_each_run() -> None:
    assert show_sql.new_marker() != show_sql.new_marker()


@pytest.mark.parametrize(
    ("command", "found", "expected"),
    [
        pytest.param(
            Command.PLAN,
            Outcome(applied=[], migrations={}, pending=["a.0002", "b.0001"]),
            ["a.0002", "b.0001"],
            id="plan",
        ),
        pytest.param(Command.CHECK, UNKNOWN, None, id="check-unknown"),
        pytest.param(
            Command.MIGRATE,
            Outcome(applied=["a.0001"], faked=["a.0000"], migrations=None, pending=None, failed_migration="a.0002"),
            ["a.0001", "a.0002"],
            id="migrate-applied-and-failed",
        ),
        pytest.param(Command.MIGRATE, UNKNOWN, None, id="migrate-unknown"),
        pytest.param(Command.SHOWMIGRATIONS, Outcome(applied=[], migrations={}, pending=[]), [], id="showmigrations"),
    ],
)
def test_which_migrations_the_sql_is_wanted_for(command: Command, found: Outcome, expected: list[str] | None) -> None:
    assert show_sql.wanted(command, found) == expected


def test_the_input_describes_the_caps_the_code_applies() -> None:
    description = inputs.INPUTS_BY_NAME["show-sql"].description
    assert f"{show_sql.PER_MIGRATION_BYTES // 1024} KiB" in description
    assert f"{show_sql.TOTAL_BYTES // 1024} KiB" in description


async def test_concealed_lines_are_kept_for_parsing_but_not_shown() -> None:
    import io  # noqa: PLC0415

    from bastion_action.gha import Console  # noqa: PLC0415

    class Prints:
        where = ""

        def interpreter(self) -> str:
            return "python"

        async def ready(self) -> None:
            return

        async def run(self, argv: object, *, database_url: str, output: object, application_name: str = "") -> int:  # noqa: ARG002
            output.feed(f"shown\n{MARKER} 0 {{}}\n{MARKER[:5]}")  # type: ignore[attr-defined]
            output.feed(" not the marker after all\n")  # type: ignore[attr-defined]
            return 0

    stream = io.StringIO()
    launched = launch(Console({}, stream), Prints(), [], "show-sql", database_url="x", conceal=MARKER)
    assert await launched.wait() == 0
    assert stream.getvalue().splitlines() == ["== show-sql", "shown", f"{MARKER[:5]} not the marker after all"]
    assert list(launched.output) == ["shown", f"{MARKER} 0 {{}}", f"{MARKER[:5]} not the marker after all"]


def test_sql_or_an_error_cut_short_never_ends_inside_a_secret() -> None:
    # The step caps each migration's SQL and each error in the project's process, before the action's
    # redaction: a cap falling inside the password left most of it, which no longer matched whole.
    console = Console({})
    password = "Mi:gr@te/#%pw1"
    console.mask([password])
    sql = ("A" + password) * 6000  # the 64 KiB cap falls somewhere inside a copy of it
    cut_at = show_sql.PER_MIGRATION_BYTES
    error = "RuntimeError: cannot describe: " + "y" * (show_sql.ERROR_CHARS - 36) + password
    document = {
        "a.0001_initial": {"sql": sql[:cut_at], "more": len(sql) - cut_at},
        "a.0002_x": {"error": error[: show_sql.ERROR_CHARS]},
    }
    lines = answer_lines(MARKER, document, 30_000)
    collected = show_sql.read("\n".join(lines), MARKER, ["a.0001_initial", "a.0002_x"], console.safe_length)
    for text in collected.values():
        shown = console.redact(text)
        assert not [size for size in range(4, len(password)) if password[:size] in shown.replace("***", "")]
    assert (
        collected["a.0001_initial"]
        .rstrip("\n")
        .endswith("more bytes not collected: show-sql keeps 64 KiB per migration]")
    )
    assert collected["a.0002_x"].endswith("yyy …\n")


def test_a_secret_s_start_before_an_ellipsis_is_masked() -> None:
    # Django's plan shortens a RunSQL to 40 characters and an ellipsis.
    console = Console({})
    console.mask(["Mi:gr@te/#%pw1"])
    assert console.redact("Raw SQL operation -> ALTER ROLE migrator PASSWORD 'Mi:gr…") == (
        "Raw SQL operation -> ALTER ROLE migrator PASSWORD '***…"
    )
    assert console.redact("'Mi:gr@te...' and 'Mi:g...'") == "'***...' and '***...'"
    assert console.redact("Mi… and plain … text") == "Mi… and plain … text"  # too short to tell from a word
