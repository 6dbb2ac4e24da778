"""Pure reporting: the step outputs and the summary of a run."""

from __future__ import annotations

import json
import re

import pytest

from bastion_action import report, summary
from bastion_action.errors import CommandError, TunnelError
from bastion_action.report import Result, RunResult, ServerInfo

SERVER = ServerInfo(version="15.14", database="app", user="migrator", ssl=True, rtt_ms=1.25, applied_migrations=None)


def test_outputs_of_a_success() -> None:
    run = RunResult("dev", "lightweight", "migrate", result=Result.SUCCESS, tunnel_port=40001, server=SERVER)
    run.exit_code, run.duration = 0, 1.23456
    assert report.outputs(run) == {
        "result": "success",
        "exit-code": "0",
        "duration-seconds": "1.235",
        "tunnel-port": "40001",
        "server-version": "15.14",
    }


def test_outputs_of_a_failure_before_the_tunnel() -> None:
    run = RunResult("dev", "lightweight", "migrate", error=TunnelError("refused"))
    assert report.outputs(run) == {"result": "failure", "exit-code": "1", "duration-seconds": "0.000"}


def test_command_exit_code_is_propagated() -> None:
    run = RunResult("dev", "lightweight", "migrate", exit_code=3, error=CommandError("boom", exit_code=3))
    assert run.process_exit_code == 3
    assert report.outputs(run)["exit-code"] == "3"


def test_summary_names_the_stage_and_shows_the_tail() -> None:
    run = RunResult("prod", "lightweight", "migrate", server=SERVER, exit_code=1)
    run.error = CommandError("`manage.py migrate` exited with code 1", hint="See the log.")
    run.timings = {"settings": 0.001, "tunnel": 0.2, "probe": 0.05, "command": 1.5}
    run.output_tail = ["Applying orders.0002...", "RuntimeError: boom | pipe"]
    text = summary.markdown(run)
    assert "❌" in text
    assert "prod" in text
    assert "Failed in the `command` stage" in text
    assert "| tunnel | 0.200 |" in text
    assert "RuntimeError: boom | pipe" in text
    assert "PostgreSQL 15.14" in text


def test_summary_of_a_success_has_no_tail() -> None:
    run = RunResult("dev", "lightweight", "showmigrations", result=Result.SUCCESS, output_tail=["x"])
    assert "Last" not in summary.markdown(run)


def test_structured_outputs_and_the_per_app_table() -> None:
    from bastion_action.migrations import Migration, State  # noqa: PLC0415

    run = RunResult("dev", "lightweight", "migrate", result=Result.SUCCESS, lock_wait=0.25)
    run.applied = ["catalog.0002_sku"]
    run.pending = ["orders.0001_initial"]
    run.migrations = {
        "catalog": [
            Migration("catalog", "0001_initial", State.APPLIED),
            Migration("catalog", "0002_sku", State.APPLIED),
        ],
        "orders": [Migration("orders", "0001_initial", State.PENDING)],
        "nomig": [],
    }
    values = report.outputs(run)
    assert values["applied"] == '["catalog.0002_sku"]'
    assert values["applied-count"] == "1"
    assert values["pending"] == '["orders.0001_initial"]'
    assert values["pending-count"] == "1"
    assert values["lock-wait-seconds"] == "0.250"
    assert values["migrations"].startswith('{"catalog":[{"name":"0001_initial","applied":true')
    text = summary.markdown(run)
    assert "| catalog | `0002_sku` | ✅ applied by this run |" in text
    assert "| catalog | `0001_initial` | ✓ applied |" in text
    assert "| orders | `0001_initial` | … pending |" in text
    assert "| nomig | (no migrations) | |" in text
    assert "1 applied by this run, 1 pending" in text


def test_pending_result_of_check() -> None:
    from bastion_action.errors import PendingMigrationsError  # noqa: PLC0415

    run = RunResult("prod", "docker", "check", result=Result.PENDING, exit_code=1, pending=["a.0001"])
    run.error = PendingMigrationsError("1 migration(s) not applied: a.0001", hint="migrate", exit_code=1)
    assert report.outputs(run)["result"] == "pending"
    assert run.process_exit_code == 1
    text = summary.markdown(run)
    assert "⏳" in text
    assert "**Pending:** 1 migration(s) not applied: a.0001" in text
    assert "Failed in" not in text


def test_faked_and_unapplied_are_outputs_and_are_not_shown_as_applied() -> None:
    from bastion_action.migrations import Migration, State  # noqa: PLC0415

    run = RunResult("dev", "lightweight", "migrate", result=Result.SUCCESS, exit_code=0)
    run.applied, run.faked, run.unapplied = ["orders.0001_initial"], ["catalog.0001_initial"], ["audit.0002_x"]
    run.pending = ["audit.0002_x"]
    run.migrations = {
        "catalog": [Migration("catalog", "0001_initial", State.APPLIED)],
        "orders": [Migration("orders", "0001_initial", State.APPLIED)],
        "audit": [Migration("audit", "0002_x", State.PENDING)],
    }
    values = report.outputs(run)
    assert values["faked"] == '["catalog.0001_initial"]'
    assert values["faked-count"] == "1"
    assert values["unapplied"] == '["audit.0002_x"]'
    assert values["unapplied-count"] == "1"
    assert values["applied-count"] == "1"
    text = summary.markdown(run)
    assert "1 applied by this run, 1 faked by this run, 1 unapplied by this run, 1 pending" in text
    assert "| catalog | `0001_initial` | ◌ faked by this run (recorded, not run) |" in text
    assert "| audit | `0002_x` | ↩ unapplied by this run |" in text
    assert "| orders | `0001_initial` | ✅ applied by this run |" in text


def test_an_unread_state_leaves_every_count_empty_and_says_so() -> None:
    run = RunResult("dev", "lightweight", "migrate", exit_code=1, error=CommandError("boom", exit_code=1))
    values = report.outputs(run)
    assert not {name for name in values if name.endswith("-count")}, "an unset output reads as empty, not 0"
    assert "**Migration state: unknown.**" in summary.markdown(run)


def test_a_squash_left_to_finish_recording_is_shown_not_counted() -> None:
    from bastion_action.migrations import Migration, State  # noqa: PLC0415

    squash = Migration("catalog", "0001_squashed_0002", State.PARTIAL)
    run = RunResult("dev", "lightweight", "showmigrations", result=Result.SUCCESS, exit_code=0)
    run.applied, run.faked, run.unapplied, run.pending = [], [], [], []
    run.migrations = {"catalog": [squash]}
    text = summary.markdown(run)
    assert "| catalog | `0001_squashed_0002` | ◐ replaced migrations applied, squash not recorded yet |" in text
    assert "0 pending" in text


def test_fan_out_outputs_carry_the_new_lists_and_sum_only_known_counts() -> None:
    one = RunResult("dev", "lightweight", "migrate", result=Result.SUCCESS, database="a", exit_code=0)
    one.applied, one.faked, one.unapplied, one.pending = ["x.0001"], ["x.0002"], [], []
    two = RunResult("dev", "lightweight", "migrate", database="b", exit_code=1)
    run = RunResult("dev", "lightweight", "migrate", targets=[one, two])
    values = report.outputs(run)
    databases = json.loads(values["databases"])
    assert databases["a"]["faked"] == ["x.0002"]
    assert databases["a"]["faked-count"] == 1
    assert databases["a"]["unapplied-count"] == 0
    assert "faked-count" not in databases["b"]
    assert "faked-count" not in values, "b's state is unknown: the sum is too"
    assert "| `b` | ❌ failure | unknown | unknown | unknown | unknown |" in summary.markdown(run)


HOSTILE_NAMES = [
    pytest.param("0003_a`|x|<b>", id="pipes-backticks-html"),
    pytest.param("0003_a\n::error::forged", id="newline-workflow-command"),
    pytest.param("0003_a\r\n| evil | row | here |", id="crlf-new-row"),
    pytest.param("0003_``a``|", id="backtick-runs"),
    pytest.param("0003_a\\", id="trailing-backslash"),
    pytest.param("[click](https://evil.example)", id="link"),
    pytest.param("0003_a\u2028</details>", id="unicode-line-separator"),
]


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def _cells(row: str) -> int:
    """Cells of a table row as GFM splits it: at pipes not escaped by a backslash."""
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", row)) - 1


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_migration_and_database_names_keep_the_summary_shape(name: str) -> None:
    from bastion_action.migrations import Migration, State  # noqa: PLC0415

    def build(migration: str, database: str, message: str) -> RunResult:
        target = RunResult("dev", "lightweight", "migrate", database=database, exit_code=1)
        target.error = CommandError(message, hint=message, exit_code=1)
        run = RunResult(name, "lightweight", "migrate", exit_code=1, server=SERVER, image=name, targets=[target])
        run.error = CommandError(message, hint=message, exit_code=1)
        run.applied, run.faked, run.unapplied, run.pending = [f"app.{migration}"], [], [], [f"app.{migration}"]
        run.migrations = {"app": [Migration("app", migration, State.APPLIED), Migration("app", "x", State.PENDING)]}
        run.failed_migration = f"app.{migration}"
        run.drift = [f"app.{migration} only on the runner"]
        run.output_tail = [migration, "```", "</pre></details>"]
        return run

    plain = summary.markdown(build("0003_a", "db", "boom"))
    hostile = summary.markdown(build(name, name, f"boom {name} </details>"))
    assert [_cells(row) for row in _table_rows(hostile)] == [_cells(row) for row in _table_rows(plain)]
    assert len(hostile.splitlines()) == len(plain.splitlines())
    assert not [line for line in hostile.splitlines() if line.startswith("::")], "no line of its own"
    ours = {"<details>", "<details open>", "<summary>", "</summary>", "<pre>", "</pre>", "</details>"}
    assert not [tag for tag in re.findall(r"<[^>]*>?", hostile) if tag not in ours], "no raw < from the input"
    assert hostile.count("</details>") == plain.count("</details>") == 1
    outside_code = re.sub(r"(`+).*?\1|^<pre>$.*?^</pre>$", "", hostile, flags=re.MULTILINE | re.DOTALL)
    assert not re.search(r"(?<!\\)\[[^\]]*(?<!\\)\]\(", outside_code), "no link outside a code span"


def test_a_code_span_is_fenced_longer_than_any_backtick_run_inside() -> None:
    run = RunResult("dev", "lightweight", "migrate", failed_migration="app.0001_``x``", exit_code=1)
    assert "| failed on | ``` app.0001_``x`` ``` |" in summary.markdown(run)
