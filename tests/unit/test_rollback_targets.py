"""Rollback targets: computed from the rows a migrate changed, read back from the input, shown in the summary."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml
from factories import make_settings
from markdown_check import SCHEMA

from bastion_action import django_shell, outcome, report, rollback, summary
from bastion_action.errors import SettingsError
from bastion_action.report import Result, RunResult
from bastion_action.settings import Command

# -- from the rows ----------------------------------------------------------------------------------


def test_each_app_a_migrate_changed_goes_back_to_its_last_row_before_or_zero() -> None:
    before = [("catalog", "0001_initial"), ("orders", "0001_initial"), ("catalog", "0002_sku")]
    after = [*before, ("ledger", "0001_initial"), ("catalog", "0003_price")]
    assert rollback.from_rows(before, after) == {"catalog": "0002_sku", "ledger": "zero"}


def test_an_app_the_migrate_took_backwards_goes_back_to_where_it_was() -> None:
    before = [("catalog", "0001_initial"), ("catalog", "0002_sku")]
    assert rollback.from_rows(before, before[:1]) == {"catalog": "0002_sku"}


def test_a_migrate_that_changed_nothing_has_nothing_to_roll_back() -> None:
    rows = [("catalog", "0001_initial")]
    assert rollback.from_rows(rows, rows) == {}
    assert rollback.from_rows([], []) == {}


# -- the input ----------------------------------------------------------------------------------------


def test_the_output_is_what_the_input_takes_back() -> None:
    targets = {"catalog": "0002_sku", "ledger": "zero"}
    assert rollback.parse(rollback.dumps(targets)) == (("catalog", "0002_sku"), ("ledger", "zero"))
    assert rollback.parse("{}") == ()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("catalog: zero", "expected JSON", id="not-json"),
        pytest.param('["catalog"]', "a JSON object of app -> migration", id="a-list"),
        pytest.param('{"catalog": 1}', 'catalog: expected a migration name or "zero", got 1', id="a-number"),
        pytest.param('{"catalog": "../x"}', 'catalog: expected a migration name or "zero"', id="a-path"),
        pytest.param('{"cat-alog": "zero"}', "'cat-alog' is not a Django app label", id="bad-label"),
        pytest.param('{"shop": {"catalog": "zero"}}', "targets per database need the databases input", id="fan-out"),
    ],
)
def test_a_bad_input_is_named_with_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(SettingsError) as info:
        rollback.parse(text)
    assert info.value.message.startswith("rollback-targets: ")
    assert says in info.value.message
    assert info.value.inputs == ("rollback-targets",)


def test_fan_out_targets_are_per_database_and_a_database_left_out_has_none() -> None:
    parsed = rollback.parse_fan_out('{"shop_a": {"catalog": "zero"}, "shop_b": {}}', ["shop_a", "shop_b", "shop_c"])
    assert parsed == {"shop_a": (("catalog", "zero"),), "shop_b": ()}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param('{"catalog": "zero"}', "expected targets per database with databases", id="flat"),
        pytest.param('{"shop_x": {"catalog": "zero"}}', "names database(s) not in databases: 'shop_x'", id="unknown"),
        pytest.param('{"shop_a": {"catalog": 3}}', "catalog for database 'shop_a': expected a migration", id="bad"),
    ],
)
def test_bad_fan_out_targets_are_named(text: str, says: str) -> None:
    with pytest.raises(SettingsError) as info:
        rollback.parse_fan_out(text, ["shop_a", "shop_b"])
    assert says in info.value.message


def test_settings_give_each_database_its_own_targets_and_take_the_lock() -> None:
    parsed = make_settings(
        command="rollback", db_name="", databases="shop_a, shop_b", rollback_targets='{"shop_a": {"catalog": "zero"}}'
    )
    assert parsed.command is Command.ROLLBACK
    assert parsed.lock
    assert [target.rollback_targets for target in parsed.targets] == [(("catalog", "zero"),), ()]
    one = make_settings(command="rollback", rollback_targets='{"catalog": "0001_initial"}')
    assert one.db.rollback_targets == (("catalog", "0001_initial"),)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        pytest.param({"command": "rollback"}, "rollback-targets: required with command: rollback", id="missing"),
        pytest.param(
            {"command": "migrate", "rollback_targets": '{"catalog": "zero"}'},
            "rollback-targets: expected nothing unless command is rollback",
            id="with-migrate",
        ),
        pytest.param(
            {"command": "rollback", "rollback_targets": "{}", "args": "catalog zero"},
            "args: expected nothing with command: rollback",
            id="with-args",
        ),
        pytest.param(
            {"command": "rollback", "rollback_targets": "{not json"},
            "rollback-targets: expected JSON",
            id="not-json",
        ),
    ],
)
def test_settings_errors_name_the_input(overrides: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError) as info:
        make_settings(**overrides)
    assert says in str(info.value)


# -- the step's answer ------------------------------------------------------------------------------


MARKER = "bastion-migrate-rollback-" + "0" * 24


def answer_lines(document: object) -> list[str]:
    text = json.dumps(document)
    return [f"{MARKER} 0 {text}", f"{MARKER} end 1 {len(text)}"]


GOOD: dict[str, Any] = {
    "unknown": [],
    "plan": ["ledger.0003_entry_note", "ledger.0002_opening_balance"],
    "irreversible": [["ledger.0002_opening_balance", "RunPython", "Raw Python operation"]],
    "forwards": [],
    "done": False,
    "pending": [],
}


def test_an_irreversible_step_on_the_way_back_is_named_and_nothing_is_unapplied() -> None:
    check = rollback.read("\n".join(["System check identified no issues.", *answer_lines(GOOD)]), MARKER)
    assert check.refused
    failure = rollback.refusal(check)
    assert failure is not None
    assert failure.message == (
        "cannot roll back: ledger.0002_opening_balance is irreversible (RunPython with no reverse: "
        "Raw Python operation); nothing was unapplied"
    )
    assert failure.anchor == "rollback-irreversible"


def test_targets_ahead_of_the_state_or_unknown_are_refused() -> None:
    ahead = rollback.read("\n".join(answer_lines({**GOOD, "irreversible": [], "forwards": ["a.0002_x"]})), MARKER)
    assert "would apply a.0002_x; nothing was unapplied" in str(rollback.refusal(ahead))
    unknown = {**GOOD, "irreversible": [], "unknown": [["shop", "0009_x", "the project has no such migration"]]}
    refused = rollback.refusal(rollback.read("\n".join(answer_lines(unknown)), MARKER))
    assert refused is not None
    assert refused.message.startswith("rollback-targets: shop -> 0009_x: the project has no such migration")


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({**GOOD, "done": "yes"}, id="done-not-bool"),
        pytest.param({**GOOD, "plan": [1]}, id="plan-not-keys"),
        pytest.param({**GOOD, "irreversible": [["a.0001", "RunSQL"]]}, id="short-entry"),
        pytest.param(["not", "an", "object"], id="a-list"),
    ],
)
def test_a_malformed_answer_is_unreadable(document: object) -> None:
    with pytest.raises(django_shell.UnreadableError):
        rollback.read("\n".join(answer_lines(document)), MARKER)


def test_a_line_posing_as_the_answer_without_the_marker_is_ignored() -> None:
    forged = "bastion-migrate-rollback-" + "1" * 24 + ' 0 {"done": true}'
    with pytest.raises(django_shell.UnreadableError, match="printed no result"):
        rollback.read(forged, MARKER)


def test_the_script_carries_the_targets_as_data() -> None:
    script = rollback.script(MARKER, (("catalog", "zero"), ("ledger", "0002_opening_balance")))
    compile(script, "<rollback>", "exec")
    assert "[['catalog', 'zero'], ['ledger', '0002_opening_balance']]" in script


def test_a_rollback_s_results_come_from_the_rows_and_the_answer() -> None:
    before = [("ledger", "0001_initial"), ("ledger", "0002_opening_balance"), ("ledger", "0003_entry_note")]
    check = rollback.read(
        "\n".join(answer_lines({**GOOD, "irreversible": [], "pending": ["ledger.0003_entry_note"]})), MARKER
    )
    output = "Running migrations:\n  Unapplying ledger.0003_entry_note... OK (0.004s)\n"
    found = outcome.rolled_back(output, before, before[:2], check)
    assert found.unapplied == ["ledger.0003_entry_note"]
    assert found.applied == []
    assert found.pending == ["ledger.0003_entry_note"]
    assert found.seconds == {"ledger.0003_entry_note": 0.004}
    assert found.migrations is not None
    assert [m.state.value for m in found.migrations["ledger"]] == ["applied", "applied", "pending"]
    assert outcome.rolled_back(output, before, before[:2], None).pending is None


# -- outputs, report, summary -----------------------------------------------------------------------


def migrated(targets: dict[str, str]) -> RunResult:
    run = RunResult("prod", "lightweight", "migrate", result=Result.SUCCESS, exit_code=0)
    run.applied, run.faked, run.unapplied, run.pending, run.migrations = [], [], [], [], {}
    run.rollback_targets = targets
    return run


def yaml_block(markdown: str) -> tuple[str, Any]:
    """The summary's one YAML code block: its fence, and what YAML reads from it."""
    lines = markdown.splitlines()
    start = next(at for at, line in enumerate(lines) if line.lstrip("`") == "yaml")
    fence = lines[start][: -len("yaml")]
    end = lines.index(fence, start + 1)
    return fence, yaml.safe_load("\n".join(lines[start + 1 : end]))


def test_the_summary_shows_the_exact_rollback_inputs() -> None:
    run = migrated({"catalog": "0002_sku", "ledger": "zero"})
    text = summary.markdown(run)
    fence, inputs = yaml_block(text)
    assert fence == "```"
    assert inputs == {"command": "rollback", "rollback-targets": report.outputs(run)["rollback-targets"]}


def test_untrusted_names_cannot_end_the_code_block_nor_the_yaml_string() -> None:
    hostile = {"catalog": "x'```\n```\n<b>y</b>", "o'rders": "``````"}
    run = migrated(hostile)
    fence, inputs = yaml_block(summary.markdown(run))
    assert fence == "`" * 7
    assert json.loads(inputs["rollback-targets"]) == hostile
    assert inputs["command"] == "rollback"


def test_a_migrate_that_changed_nothing_shows_no_rollback_but_outputs_an_empty_one() -> None:
    run = migrated({})
    assert "command: rollback" not in summary.markdown(run)
    assert report.outputs(run)["rollback-targets"] == "{}"


def test_fan_out_outputs_and_summary_are_per_database() -> None:
    run = RunResult("prod", "lightweight", "migrate", result=Result.SUCCESS)
    run.targets = [
        RunResult("prod", "lightweight", "migrate", database="shop_a", rollback_targets={"catalog": "zero"}),
        RunResult("prod", "lightweight", "migrate", database="shop_b", rollback_targets={}),
        RunResult("prod", "lightweight", "migrate", database="shop_c"),  # its state was never read
    ]
    values = report.outputs(run)
    assert json.loads(values["rollback-targets"]) == {"shop_a": {"catalog": "zero"}, "shop_b": {}}
    assert json.loads(values["databases"])["shop_a"]["rollback-targets"] == {"catalog": "zero"}
    _, inputs = yaml_block(summary.markdown(run))
    assert inputs["rollback-targets"] == values["rollback-targets"]


def test_a_refused_rollback_s_report_and_summary_name_the_irreversible_step() -> None:
    run = RunResult("prod", "lightweight", "rollback", exit_code=3)
    run.rollback_asked = {"ledger": "zero"}
    check = rollback.read("\n".join(answer_lines(GOOD)), MARKER)
    run.rollback_plan, run.irreversible = check.plan, check.irreversible
    document = report.document(run)
    jsonschema.validate(document, SCHEMA)
    assert document["rollback"] == {
        "targets": {"ledger": "zero"},
        "plan": ["ledger.0003_entry_note", "ledger.0002_opening_balance"],
        "irreversible": [
            {
                "migration": "ledger.0002_opening_balance",
                "operation": "RunPython",
                "description": "Raw Python operation",
            }
        ],
    }
    text = summary.markdown(run)
    assert "crosses an irreversible migration, so nothing was unapplied" in text
    assert "- `ledger.0002_opening_balance` — ⛔ irreversible: RunPython, Raw Python operation" in text


def test_databases_two_servers_share_a_name_are_told_apart_and_rolled_back_each() -> None:
    # DigitalOcean names every cluster's database "defaultdb": a fan-out over two clusters has the name twice.
    entries = "db1.example.com/defaultdb, db2.example.com:25060/defaultdb, shop_c"
    parsed = make_settings(command="migrate", db_name="", databases=entries)
    assert [target.key for target in parsed.targets] == [
        "db1.example.com:5432/defaultdb",
        "db2.example.com:25060/defaultdb",
        "shop_c",  # a name no other database of the run has stays the key
    ]
    assert [target.name for target in parsed.targets] == ["defaultdb", "defaultdb", "shop_c"]
    # The migrate's output keys them so; a rollback given that output finds each one's own targets.
    run = RunResult("prod", "lightweight", "migrate", result=Result.SUCCESS)
    run.targets = [
        RunResult("prod", "lightweight", "migrate", database=target.key, rollback_targets={"catalog": app})
        for target, app in zip(parsed.targets, ("zero", "0001_initial", "0002_x"), strict=True)
    ]
    values = report.outputs(run)
    assert set(json.loads(values["databases"])) == {target.key for target in parsed.targets}
    back = make_settings(command="rollback", db_name="", databases=entries, rollback_targets=values["rollback-targets"])
    assert [target.rollback_targets for target in back.targets] == [
        (("catalog", "zero"),),
        (("catalog", "0001_initial"),),
        (("catalog", "0002_x"),),
    ]
