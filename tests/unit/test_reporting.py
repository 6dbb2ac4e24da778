"""Pure reporting: the step outputs and the summary of a run."""

from __future__ import annotations

from bastion_action import report
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
    text = report.summary(run)
    assert "❌" in text
    assert "prod" in text
    assert "Failed in the `command` stage" in text
    assert "| tunnel | 0.200 |" in text
    assert "RuntimeError: boom | pipe" in text
    assert "PostgreSQL 15.14" in text


def test_summary_of_a_success_has_no_tail() -> None:
    run = RunResult("dev", "lightweight", "showmigrations", result=Result.SUCCESS, output_tail=["x"])
    assert "Last" not in report.summary(run)


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
    text = report.summary(run)
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
    text = report.summary(run)
    assert "⏳" in text
    assert "**Pending:** 1 migration(s) not applied: a.0001" in text
    assert "Failed in" not in text
