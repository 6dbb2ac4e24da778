"""Pure reporting: outputs, summary, console masking and annotation escaping."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bastion_action import report
from bastion_action.errors import CommandError, TunnelError
from bastion_action.gha import Console
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


def console(environ: dict[str, str]) -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(environ, stream), stream


def test_masks_come_first_and_only_on_github() -> None:
    gh, out = console({"GITHUB_ACTIONS": "true"})
    gh.mask(["hunter2", "line1\nline2"])
    gh.line("password is hunter2")
    lines = out.getvalue().splitlines()
    assert lines[0] == "::add-mask::hunter2"
    assert lines[1] == "::add-mask::line1%0Aline2"
    assert lines[2] == "password is ***"

    local, out = console({})
    local.mask(["hunter2"])
    local.line("password is hunter2")
    assert out.getvalue() == "password is ***\n"


def test_longer_secrets_are_redacted_before_their_parts() -> None:
    gh, out = console({})
    gh.mask(["abc", "xxabcxx"])
    gh.line("xxabcxx abc")
    assert out.getvalue() == "*** ***\n"


def test_annotation_is_escaped_and_names_the_stage() -> None:
    gh, out = console({"GITHUB_ACTIONS": "true"})
    gh.failure(TunnelError("50% lost\r\nreally", hint="do this"))
    assert out.getvalue() == (
        "::error title=bastion-migrate%3A tunnel failed::50%25 lost%0D%0Areally%0AHint: do this\n"
    )


def test_outputs_and_summary_go_to_files(tmp_path: Path) -> None:
    output, summary = tmp_path / "out", tmp_path / "summary"
    gh, _ = console({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary)})
    gh.mask(["s3cret"])
    gh.set_outputs({"result": "success", "leak": "s3cret"})
    gh.summary("# hi s3cret")
    assert "s3cret" not in output.read_text()
    assert "result<<ghadelimiter_" in output.read_text()
    assert summary.read_text() == "# hi ***\n"


@pytest.mark.parametrize("github", [True, False], ids=["github", "local"])
def test_warning(github: bool) -> None:
    env = {"GITHUB_ACTIONS": "true"} if github else {}
    gh, out = console(env)
    gh.warning("careful")
    assert out.getvalue() == ("::warning title=bastion-migrate::careful\n" if github else "warning: careful\n")


def test_groups_are_written_without_a_stray_space() -> None:
    gh, out = console({"GITHUB_ACTIONS": "true"})
    with gh.group("manage.py 100%"):
        gh.line("inside")
    assert out.getvalue() == "::group::manage.py 100%25\ninside\n::endgroup::\n"


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
