"""The lint's rules and weighing, acknowledgements, the answer's reading, outputs and inputs, without the lab."""

from __future__ import annotations

import json

import pytest

from bastion_action import django_shell, lint, operations, report, settings
from bastion_action.errors import SettingsError
from bastion_action.lint import Risk, TableFacts, Thresholds
from bastion_action.operations import MigrationFacts, Operation

THRESHOLDS = Thresholds(rows_medium=1_000, rows_high=100_000, transaction_seconds=60)
SMALL = TableFacts(rows=12, bytes=16_384)
MEDIUM = TableFacts(rows=5_000, bytes=1_000_000)
BIG = TableFacts(rows=40_000_000, bytes=4_000_000_000)
TABLES = {"small": SMALL, "mid": MEDIUM, "big": BIG}


def judged(*ops: Operation, atomic: bool = True, tables: dict[str, TableFacts] | None = None) -> list[lint.Finding]:
    migration = MigrationFacts("app.0002_x", file="app/migrations/0002_x.py", atomic=atomic, operations=ops)
    return list(lint.judge([migration], TABLES if tables is None else tables, THRESHOLDS).findings)


def rules(findings: list[lint.Finding]) -> set[tuple[str, str | None, Risk]]:
    return {(finding.rule, finding.table, finding.risk) for finding in findings}


def sql_op(sql: str, table: str | None = None, kind: str = "RunSQL", **facts: object) -> Operation:
    return Operation(kind=kind, table=table, sql=(sql,), facts={"reversible": True, **facts})


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        pytest.param(
            sql_op('CREATE INDEX "i" ON "big" ("name");', "big", "AddIndex"),
            {("index-not-concurrent", "big", Risk.HIGH)},
            id="create-index",
        ),
        pytest.param(
            sql_op('DROP INDEX IF EXISTS "i";', "big", "RemoveIndex"),
            {("index-not-concurrent", "big", Risk.HIGH)},
            id="drop-index",
        ),
        pytest.param(
            sql_op('CREATE UNIQUE INDEX CONCURRENTLY "i" ON "big" ("name");', "big"),
            {("concurrently-in-atomic", "big", Risk.HIGH)},
            id="concurrently-in-atomic",
        ),
        pytest.param(
            sql_op('ALTER TABLE "big" ADD COLUMN "flag" integer NOT NULL;', "big", "AddField"),
            {("add-column-not-null", "big", Risk.HIGH)},
            id="add-not-null-sql",
        ),
        pytest.param(
            Operation("AddField", table="big", facts={"null": False, "default": "none"}),
            {("add-column-not-null", "big", Risk.HIGH)},
            id="add-not-null-field",
        ),
        pytest.param(
            sql_op("ALTER TABLE big ADD COLUMN stamp timestamptz DEFAULT clock_timestamp() NOT NULL"),
            {("add-column-volatile-default", "big", Risk.HIGH)},
            id="volatile-default",
        ),
        pytest.param(
            Operation("AlterField", table="big", facts={"old_type": "integer", "new_type": "bigint"}),
            {("alter-column-type", "big", Risk.HIGH)},
            id="type-change",
        ),
        pytest.param(
            sql_op('ALTER TABLE "big" ALTER COLUMN "code" TYPE bigint USING "code"::bigint;'),
            {("alter-column-type", "big", Risk.HIGH)},
            id="type-change-sql",
        ),
        pytest.param(
            sql_op('ALTER TABLE "big" ALTER COLUMN "code" SET NOT NULL;', "big", "AlterField"),
            {("set-not-null", "big", Risk.HIGH)},
            id="set-not-null",
        ),
        pytest.param(
            sql_op('ALTER TABLE "big" ADD CONSTRAINT "c" CHECK ("amount" >= 0);', "big", "AddConstraint"),
            {("add-check-constraint", "big", Risk.HIGH)},
            id="check",
        ),
        pytest.param(
            sql_op("ALTER TABLE big ADD CONSTRAINT f FOREIGN KEY (code) REFERENCES other (id)"),
            {("add-foreign-key", "big", Risk.HIGH)},
            id="foreign-key",
        ),
        pytest.param(
            Operation("RunPython", facts={"reversible": False}),
            {("run-python-irreversible", None, Risk.MEDIUM)},
            id="run-python",
        ),
        pytest.param(
            Operation("RunSQL", sql=("UPDATE small SET a = 1",), facts={"reversible": False}),
            {("run-sql-irreversible", None, Risk.MEDIUM)},
            id="run-sql",
        ),
        pytest.param(
            Operation("RemoveField", table="small", facts={"in_previous_state": True}),
            {("drop-column", "small", Risk.HIGH)},
            id="drop-column",
        ),
        pytest.param(
            Operation("DeleteModel", table="small", facts={"in_previous_state": True}),
            {("drop-table", "small", Risk.HIGH)},
            id="drop-table",
        ),
        pytest.param(Operation("RenameField", table="small"), {("rename", "small", Risk.HIGH)}, id="rename"),
        pytest.param(
            sql_op("ALTER TABLE small RENAME COLUMN a TO b"), {("rename", "small", Risk.HIGH)}, id="rename-sql"
        ),
    ],
)
def test_each_rule_fires_with_its_risk(op: Operation, expected: set[tuple[str, str | None, Risk]]) -> None:
    assert rules(judged(op)) == expected


@pytest.mark.parametrize(
    "op",
    [
        pytest.param(sql_op('CREATE INDEX CONCURRENTLY "i" ON "big" ("name")'), id="concurrent-index-non-atomic"),
        pytest.param(sql_op("ALTER TABLE big ADD COLUMN n integer DEFAULT 0 NOT NULL"), id="constant-default"),
        pytest.param(sql_op("ALTER TABLE big ADD COLUMN n integer NULL"), id="nullable-column"),
        pytest.param(sql_op("ALTER TABLE big ADD CONSTRAINT c CHECK (a > 0) NOT VALID"), id="check-not-valid"),
        pytest.param(
            sql_op("ALTER TABLE big ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES o (id) NOT VALID"), id="fk-not-valid"
        ),
        pytest.param(sql_op("ALTER TABLE big VALIDATE CONSTRAINT c"), id="validate"),
        pytest.param(
            Operation("AlterField", table="big", facts={"old_type": "varchar(20)", "new_type": "varchar(50)"}),
            id="widening",
        ),
        pytest.param(Operation("RemoveField", table="big", facts={"in_previous_state": False}), id="state-gone"),
        pytest.param(Operation("RunPython", facts={"reversible": True}), id="reversible-python"),
    ],
)
def test_the_safe_forms_are_not_findings(op: Operation) -> None:
    assert judged(op, atomic=False) == []


def test_the_same_hazard_is_weighed_by_its_table() -> None:
    by_table = {
        finding.table: finding.risk
        for finding in judged(*(sql_op(f'CREATE INDEX "i_{t}" ON "{t}" ("a")', t) for t in ("small", "mid", "big")))
    }
    assert by_table == {"small": Risk.LOW, "mid": Risk.MEDIUM, "big": Risk.HIGH}


def test_a_long_transaction_holding_a_lock_raises_the_risk_one_level() -> None:
    busy = {"small": TableFacts(rows=12, bytes=8192, lockers=1, oldest_transaction_seconds=600)}
    quick = {"small": TableFacts(rows=12, bytes=8192, lockers=3, oldest_transaction_seconds=2)}
    op = sql_op('CREATE INDEX "i" ON "small" ("a")', "small")
    assert judged(op, tables=busy)[0].risk is Risk.MEDIUM
    assert "raised" in judged(op, tables=busy)[0].note
    assert judged(op, tables=quick)[0].risk is Risk.LOW


def test_a_table_not_there_yet_is_low_and_one_never_analyzed_is_medium() -> None:
    op = sql_op('CREATE INDEX "i" ON "later" ("a")', "later")
    assert judged(op, tables={})[0].risk is Risk.LOW
    assert judged(op, tables={"later": TableFacts(rows=None, bytes=10**9)})[0].risk is Risk.MEDIUM


def test_fixed_rules_do_not_depend_on_size() -> None:
    op = Operation("RenameModel", table="small")
    assert judged(op)[0].risk is judged(Operation("RenameModel", table="big"))[0].risk is Risk.HIGH


def test_indexes_of_a_table_the_migration_creates_are_not_findings() -> None:
    create = sql_op('CREATE TABLE "fresh" ("id" bigint); CREATE INDEX "i" ON "fresh" ("id");', kind="CreateModel")
    assert judged(create) == []


@pytest.mark.parametrize(
    ("old", "new", "rewrites"),
    [
        ("varchar(20)", "varchar(50)", False),
        ("varchar(50)", "varchar(20)", True),
        ("varchar(20)", "text", False),
        ("numeric(10, 2)", "numeric(12, 2)", False),
        ("numeric(10, 2)", "numeric(12, 3)", True),
        ("integer", "bigint", True),
        ("text", "text", False),
    ],
)
def test_which_type_changes_rewrite(old: str, new: str, rewrites: bool) -> None:
    assert lint.rewrites(old, new) is rewrites


def test_an_acknowledged_finding_is_reported_and_not_counted() -> None:
    first = Operation("AddIndex", table="small", line=7, end_line=7, sql=('CREATE INDEX "a" ON "small" ("x")',))
    second = Operation("AddIndex", table="big", line=9, end_line=11, sql=('CREATE INDEX "b" ON "big" ("x")',))
    acks = ((8, operations.ack_rules(" index-not-concurrent -- at night")),)
    migration = MigrationFacts("app.0003", file="f.py", operations=(first, second), acks=acks)
    result = lint.judge([migration], TABLES, THRESHOLDS)
    assert [(finding.table, finding.acknowledged) for finding in result.findings] == [("small", False), ("big", True)]
    assert result.risk is Risk.LOW
    assert result.findings[1].line == 9


def test_an_ack_inside_the_operation_counts_and_one_after_it_does_not() -> None:
    op = Operation("AddIndex", table="big", line=5, end_line=8, sql=('CREATE INDEX "b" ON "big" ("x")',))
    inside = MigrationFacts("a.1", operations=(op,), acks=((6, frozenset({"index-not-concurrent"})),))
    after = MigrationFacts("a.1", operations=(op,), acks=((9, frozenset({"index-not-concurrent"})),))
    other = MigrationFacts("a.1", operations=(op,), acks=((4, frozenset({"set-not-null"})),))
    assert lint.judge([inside], TABLES, THRESHOLDS).findings[0].acknowledged
    assert not lint.judge([after], TABLES, THRESHOLDS).findings[0].acknowledged
    assert not lint.judge([other], TABLES, THRESHOLDS).findings[0].acknowledged


@pytest.mark.parametrize(
    ("comment", "named"),
    [
        (" index-not-concurrent", {"index-not-concurrent"}),
        (" set-not-null, add-foreign-key -- validated by hand", {"set-not-null", "add-foreign-key"}),
        (" drop-column   rename", {"drop-column", "rename"}),
        ("", set()),
        (" -- only a reason", set()),
    ],
)
def test_acknowledgement_comments_name_rules(comment: str, named: set[str]) -> None:
    assert operations.ack_rules(comment) == named


def test_no_finding_is_risk_none() -> None:
    assert lint.judge([MigrationFacts("a.1")], {}, THRESHOLDS).risk is Risk.NONE


def test_every_rule_has_its_section_in_the_docs() -> None:
    from pathlib import Path  # noqa: PLC0415

    text = (Path(__file__).resolve().parents[2] / lint.DOCS).read_text()
    for rule in lint.RULES:
        assert f"\n### {rule.id}\n" in text, rule.id


# -- the answer from Django --------------------------------------------------------------------------------------

MARKER = "bastion-migrate-lint-0123456789abcdef01234567"


def answer(document: object) -> str:
    text = json.dumps(document)
    return f"noise\n{MARKER} 0 {text}\n{MARKER} end 1 {len(text)}\n"


def test_the_answer_is_read_into_facts() -> None:
    document = {
        "app.0002_x": {
            "file": "app/migrations/0002_x.py",
            "atomic": False,
            "operations": [
                {
                    "kind": "AddField",
                    "description": "Add field f to m",
                    "table": "app_m",
                    "line": 7,
                    "end_line": 9,
                    "sql": ["ALTER TABLE ..."],
                    "facts": {"null": False, "default": "none", "nested": {"dropped": True}},
                    "error": "",
                }
            ],
            "acks": [[6, " add-column-not-null"]],
        }
    }
    (facts,) = operations.read(answer(document), MARKER, ["app.0002_x"])
    assert facts.file == "app/migrations/0002_x.py"
    assert facts.atomic is False
    (op,) = facts.operations
    assert (op.kind, op.table, op.line, op.end_line) == ("AddField", "app_m", 7, 9)
    assert dict(op.facts) == {"null": False, "default": "none"}
    assert facts.acks == ((6, frozenset({"add-column-not-null"})),)


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ([], "not a JSON object"),
        ({}, "no entry for app.0002_x"),
        ({"app.0002_x": {"operations": "x"}}, "malformed"),
        ({"app.0002_x": {"operations": [{"kind": 3}]}}, "not text"),
        ({"app.0002_x": {"operations": [{"kind": "X", "sql": [1]}]}}, "malformed SQL"),
        ({"app.0002_x": {"operations": [], "acks": [[1]]}}, "malformed"),
    ],
)
def test_a_malformed_answer_is_refused(document: object, reason: str) -> None:
    with pytest.raises(django_shell.UnreadableError, match=reason):
        operations.read(answer(document), MARKER, ["app.0002_x"])


def test_a_path_outside_the_directory_is_not_kept_and_a_migration_error_is() -> None:
    document = {"a.1": {"file": "../etc/x.py", "operations": []}, "a.2": {"error": "ImportError: no"}}
    first, second = operations.read(answer(document), MARKER, ["a.1", "a.2"])
    assert first.file == ""
    assert second.error == "ImportError: no"
    assert lint.judge([first, second], {}, THRESHOLDS).unread == ("a.2: ImportError: no",)


def test_the_script_compiles_and_carries_its_keys() -> None:
    source = operations.script(MARKER, ["app.0002_x"])
    compile(source, "lint-script", "exec")
    assert "_bastion_lint(['app.0002_x']," in source


# -- outputs and inputs ------------------------------------------------------------------------------------------


def test_outputs_carry_the_risk_and_the_report() -> None:
    run = report.RunResult("dev", "lightweight", "lint", result=report.Result.SUCCESS, database="app")
    run.lint = lint.judge(
        [MigrationFacts("a.1", operations=(Operation("RenameField", table="small"),))], TABLES, THRESHOLDS
    )
    values = report.outputs(run)
    assert values["risk"] == "high"
    document = json.loads(values["risk-report"])
    assert document["findings"][0]["rule"] == "rename"
    assert document["findings"][0]["docs"] == "docs/lint.md#rename"
    assert document["thresholds"]["rows_high"] == 100_000
    assert report.document(run)["lint"] == document


def test_no_lint_sets_no_risk_output() -> None:
    run = report.RunResult("dev", "lightweight", "plan", result=report.Result.SUCCESS)
    assert "risk" not in report.outputs(run)


def test_fan_out_risk_is_the_riskiest_database() -> None:
    low = report.RunResult("dev", "lightweight", "lint", database="one")
    low.lint = lint.judge([], {}, THRESHOLDS)
    high = report.RunResult("dev", "lightweight", "lint", database="two")
    high.lint = lint.judge([MigrationFacts("a.1", operations=(Operation("RenameField"),))], {}, THRESHOLDS)
    run = report.RunResult("dev", "lightweight", "lint", targets=[low, high])
    values = report.outputs(run)
    assert values["risk"] == "high"
    assert [item["database"] for item in json.loads(values["risk-report"])["findings"]] == ["two"]
    assert json.loads(values["databases"])["one"]["risk"] == "none"


RAW = {
    "environment": "dev",
    "mode": "lightweight",
    "ssh-host": "bastion",
    "ssh-user": "u",
    "ssh-password": "p",
    "ssh-insecure-skip-host-key-check": "true",
    "db-host": "db",
    "db-name": "app",
    "db-user": "u",
    "db-password": "p",
}


def test_lint_inputs_are_parsed() -> None:
    parsed = settings.parse(
        {**RAW, "command": "lint", "fail-on-risk": "HIGH", "lint-rows-medium": "10", "lint-rows-high": "1_000"}, {}
    )
    assert parsed.lint is True
    assert parsed.fail_on_risk is Risk.HIGH
    assert parsed.lint_thresholds == Thresholds(10, 1000, 60.0)
    assert parsed.command.read_only
    assert settings.parse({**RAW, "command": "plan"}, {}).lint is False
    assert settings.parse({**RAW, "command": "check", "lint": "true"}, {}).lint is True


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"command": "lint", "fail-on-risk": "severe"}, "fail-on-risk: expected high | medium | low | never"),
        ({"command": "migrate", "lint": "true"}, "lint: expected false with command: migrate"),
        ({"command": "lint", "lint-rows-high": "5", "lint-rows-medium": "10"}, "lint-rows-high: expected at least"),
        ({"command": "lint", "lint-rows-medium": "many"}, "lint-rows-medium: expected a whole number"),
    ],
)
def test_bad_lint_inputs_are_named(inputs: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings.parse({**RAW, **inputs}, {})
    assert message in caught.value.message


def test_the_summary_table_renders_and_the_report_follows_its_schema() -> None:
    from markdown_check import assert_report_valid, assert_tables_render  # noqa: PLC0415

    from bastion_action import summary  # noqa: PLC0415

    hostile = Operation("RenameField", description="Rename | `x` <b>", table="sm|all", line=3, end_line=3)
    facts = MigrationFacts(
        "a.1", file="a/m|1.py", operations=(hostile, Operation("RunPython", facts={"reversible": False}))
    )
    for run in (
        report.RunResult("dev", "lightweight", "lint", result=report.Result.SUCCESS),
        report.RunResult("dev", "lightweight", "lint", targets=[report.RunResult("dev", "lightweight", "lint")]),
    ):
        for target in run.targets or [run]:
            target.database = "app" if run.targets else None
            target.lint = lint.judge([facts], {"sm|all": SMALL}, THRESHOLDS)
        text = summary.markdown(run)
        assert "acknowledged" not in text
        assert "**Lint:** risk 🔴 **high**, 2 finding(s)" in text
        assert_tables_render(text)
        assert_report_valid(report.document(run))


def test_an_operation_whose_sql_django_could_not_produce_is_said_not_passed_over() -> None:
    # sqlmigrate of a migration altering a table an earlier pending migration creates fails to introspect it:
    # that operation is judged by its kind alone, and the run says so (a warning, the summary, the report).
    failed = Operation("AlterField", "Alter field sku on product", error="ProgrammingError: no such table")
    inner = Operation("SeparateDatabaseAndState", inner=(Operation("RunSQL", error="ValueError: bad"),))
    judged = lint.judge([MigrationFacts("shop.0002_x", operations=(failed, inner))], {}, THRESHOLDS)
    assert judged.unread == (
        (
            "shop.0002_x: operation 1 (Alter field sku on product): its SQL could not be produced, so it was judged by "
            "its kind alone: ProgrammingError: no such table"
        ),
        (
            "shop.0002_x: operation 2 (RunSQL): its SQL could not be produced, so it was judged by its kind alone: "
            "ValueError: bad"
        ),
    )
