"""The entry: argv / INPUT_* -> settings -> pipeline -> outputs, summary, exit code (in process, no lab)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_postgres import Postgres, running_postgres
from sshd import SSHD, start_sshd
from support import parse_output_file, runner_commands

import bastion_action
from bastion_action import cli, settings, summary
from bastion_action.runners import local


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def sshd_thread() -> Iterator[SSHD]:
    """An in-process SSH server on its own event loop in a thread: cli.main() runs its own loop in this one."""
    loop = asyncio.new_event_loop()
    started: list[SSHD] = []
    stop = asyncio.Event()
    ready = threading.Event()

    async def serve() -> None:
        async with start_sshd() as server:
            started.append(server)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    assert ready.wait(10)
    try:
        yield started[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@pytest.fixture(autouse=True)
def _no_subreaper(monkeypatch: pytest.MonkeyPatch) -> None:
    # A subreaper test process would adopt (and a run's sweep end) daemons the tests start, PostgreSQL included.
    monkeypatch.setattr(local, "become_subreaper", lambda: True)


def github_env(tmp_path: Path, **inputs: str) -> dict[str, str]:
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(tmp_path / "out"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "sum"),
    }
    env.update({"INPUT_" + name.upper(): value for name, value in inputs.items()})
    return env


def outputs(tmp_path: Path) -> dict[str, str]:
    return parse_output_file((tmp_path / "out").read_text())


def test_flags_win_over_input_variables_and_env_is_an_alias() -> None:
    raw = cli.raw_inputs(["--env", "uat", "--db-port", "6543"], {"INPUT_DB_PORT": "5432", "INPUT_DB_NAME": "app"})
    assert raw == {"environment": "uat", "db-port": "6543", "db-name": "app"}


def test_the_action_itself_passes_no_flags() -> None:
    assert cli.raw_inputs([], {"INPUT_SSH_HOST": "b", "OTHER": "x"}) == {"ssh-host": "b"}


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        pytest.param(["--no-such-flag", "x"], "unknown flag --no-such-flag; see --help for the flags", id="far"),
        pytest.param(["--comand", "migrate"], "unknown flag --comand; did you mean --command?", id="typo"),
        pytest.param(["--comm", "migrate"], "unknown flag --comm; did you mean --command?", id="no-abbreviation"),
        pytest.param(["--db_user=u"], "unknown flag --db_user; did you mean --db-user?", id="underscores"),
        pytest.param(["migrate"], "unexpected argument 'migrate'; every value follows its flag", id="positional"),
        pytest.param(["--command"], "argument --command: expected one argument", id="no-value"),
    ],
)
def test_a_bad_flag_is_one_line_with_the_nearest_flag(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.raw_inputs(argv, {})
    assert info.value.code == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.startswith(f"bastion-migrate: {error}")
    assert printed.err.count("\n") == 1


def test_help_still_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.raw_inputs(["--help"], {})
    assert info.value.code == 0
    assert "--ssh-host VALUE" in capsys.readouterr().out


def test_version_flag_names_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"], {})
    assert info.value.code == 0
    assert capsys.readouterr().out == f"bastion-migrate {bastion_action.__version__}\n"


def test_the_version_is_the_checkouts_then_the_installed_one_then_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert bastion_action.__version__ == project["version"]
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "bastion-migrate"\nversion = "9.8.7"\n')
    assert bastion_action._version(pyproject) == "9.8.7"
    pyproject.write_text('[project]\nname = "another-project"\nversion = "1.0"\n')
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"bastion-migrate": "2.3.4"}[name])
    assert bastion_action._version(pyproject) == "2.3.4", "another project's pyproject.toml is not ours"

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert bastion_action._version(tmp_path / "missing.toml") == "0+unknown"
    pyproject.write_text("[project\n")
    assert bastion_action._version(pyproject) == "0+unknown"


def version_first(lines: list[str]) -> None:
    """The version is the first thing printed after the masks (and the block that keeps the runner from acting)."""
    shown = [line for line in lines if not line.startswith(("::add-mask::", "::stop-commands::"))]
    assert shown[0] == f"bastion-migrate {bastion_action.__version__}"
    last_mask = max((at for at, line in enumerate(lines) if line.startswith("::add-mask::")), default=-1)
    assert lines.index(shown[0]) > last_mask


def test_bad_input_fails_in_the_settings_stage_with_masks_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = github_env(tmp_path, ssh_host="b", ssh_user="u", ssh_password="pw-Secret!1", ssh_port="99999")
    assert cli.main([], env) == 1
    lines = capsys.readouterr().out.splitlines()
    first_other = next(number for number, line in enumerate(lines) if not line.startswith("::add-mask::"))
    assert set(lines[:first_other]) == {"::add-mask::pw-Secret!1", "::add-mask::pw-Secret%25211"}  # and its URL form
    version_first(lines)
    errors = [line for line in lines if line.startswith("::error")]
    assert len(errors) == 7  # the port, the host key, the database and the image: every problem in one run
    assert all(error.startswith("::error title=bastion-migrate%3A settings failed::") for error in errors)
    assert (
        "::error title=bastion-migrate%3A settings failed::ssh-port: expected a port number 1-65535, got '99999' "
        "(from the step's input ssh-port)%0AHint: Fix the 'ssh-port' input of the step."
    ) in errors
    assert "pw-Secret!1" not in "\n".join(line for line in lines if not line.startswith("::add-mask::"))
    found = outputs(tmp_path)
    assert found["result"] == "failure"
    assert found["exit-code"] == "1"
    assert "**Failed in the `settings` stage:**" in (tmp_path / "sum").read_text()


def probe_env(tmp_path: Path, sshd: SSHD, postgres: Postgres) -> dict[str, str]:
    return github_env(
        tmp_path,
        environment="unit",
        mode="lightweight",
        command="probe",
        ssh_host=sshd.host,
        ssh_port=str(sshd.port),
        ssh_user=sshd.user,
        ssh_password=sshd.password,
        ssh_known_hosts=sshd.known_hosts,
        db_host=postgres.host,
        db_port=str(postgres.port),
        db_name="postgres",
        db_user=postgres.user,
        db_password=postgres.password,
        db_sslmode="disable",
    )


def test_a_probe_end_to_end(
    tmp_path: Path, sshd_thread: SSHD, postgres: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([], probe_env(tmp_path, sshd_thread, postgres)) == 0
    lines = capsys.readouterr().out.splitlines()
    version_first(lines)
    assert [line for line in lines if line.startswith("::debug::")] == []  # only when asked for
    shown = [line for line in lines if not line.startswith("::add-mask::")]
    assert [line for line in shown if postgres.password in line or sshd_thread.password in line] == []
    found = outputs(tmp_path)
    assert found["result"] == "success"
    assert found["exit-code"] == "0"
    assert found["server-version"].startswith("15")
    assert int(found["tunnel-port"]) > 0
    summary = (tmp_path / "sum").read_text()
    assert summary.startswith("### ✅ bastion-migrate: `probe` on unit — success")


def test_a_bug_while_parsing_still_writes_the_failure_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(settings, "parse", broken)
    assert cli.main([], github_env(tmp_path, ssh_host="b")) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("::error")]
    assert errors == [
        (
            "::error title=bastion-migrate%3A internal failed::unexpected KeyError in the settings stage: 'surprise'"
            "%0AHint: This is a bug in bastion-migrate. Please report it with this log (secrets are masked in it)."
        )
    ]
    assert outputs(tmp_path)["result"] == "failure"
    assert "**Failed in the `internal` stage:**" in (tmp_path / "sum").read_text()


def test_a_bug_while_reporting_still_writes_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_args: object) -> str:
        raise ValueError("bad table")

    monkeypatch.setattr(summary, "markdown", broken)
    env = github_env(tmp_path, ssh_host="b", ssh_user="u", ssh_password="pw-Secret!1", ssh_port="99999")
    assert cli.main([], env) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("::error")]
    # the settings failures; the reporting bug does not add one of its own
    assert errors
    assert all(error.startswith("::error title=bastion-migrate%3A settings failed::") for error in errors)
    assert outputs(tmp_path)["result"] == "failure"


def test_runner_debug_turns_on_debug_lines_for_every_stage_with_secrets_masked(
    tmp_path: Path, sshd_thread: SSHD, postgres: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    env = probe_env(tmp_path, sshd_thread, postgres) | {"RUNNER_DEBUG": "1"}
    assert cli.main([], env) == 0
    lines = capsys.readouterr().out.splitlines()
    debug = [
        line.removeprefix("::debug::") for line in runner_commands("\n".join(lines)) if line.startswith("::debug::")
    ]
    stages = [line for line in debug if line.startswith("stage ")]
    assert [line.split(" after ")[0] for line in stages] == [
        "stage settings: started",
        "stage settings: ended",
        "stage settings: started",
        "stage settings: ended",
        "stage tunnel: started",
        "stage tunnel: ended",
        "stage tunnel: started",
        "stage tunnel: ended",
        "stage probe: started",
        "stage probe: ended",
    ]
    assert any(line.startswith(f"tunnel: {sshd_thread.host}: SSH-2.0-AsyncSSH_") for line in debug), debug
    assert any(line.startswith("settings: database(s) 127.0.0.1:") for line in debug), debug
    shown = [line for line in lines if not line.startswith("::add-mask::")]
    assert [line for line in shown if postgres.password in line or sshd_thread.password in line] == []


def test_outputs_the_runner_cannot_take_fail_the_step_with_the_results_in_the_log(
    tmp_path: Path, sshd_thread: SSHD, postgres: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    # The runner's disk is full: a workflow must not go on as if outputs it cannot see said "success".
    env = {**probe_env(tmp_path, sshd_thread, postgres), "GITHUB_OUTPUT": "/dev/full"}
    assert cli.main([], env) == 1
    printed = capsys.readouterr().out
    errors = [line for line in printed.splitlines() if line.startswith("::error")]
    assert len(errors) == 1
    assert errors[0].startswith(
        "::error title=bastion-migrate%3A report failed::the step's outputs could not be written to GITHUB_OUTPUT "
        "([Errno 28] No space left on device): the run's own result (success, exit code 0)"
    )
    assert "  result: success" in printed.splitlines()  # the outputs, in the log instead
    assert "Traceback" not in printed
    assert (tmp_path / "sum").read_text().startswith("### ✅ bastion-migrate: `probe` on unit — success")


def test_a_step_summary_the_runner_cannot_take_is_a_warning(
    tmp_path: Path, sshd_thread: SSHD, postgres: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**probe_env(tmp_path, sshd_thread, postgres), "GITHUB_STEP_SUMMARY": "/dev/full"}
    assert cli.main([], env) == 0  # the run succeeded, and the workflow has its outputs
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("::error")] == []
    assert (
        "::warning title=bastion-migrate::the step summary could not be written to GITHUB_STEP_SUMMARY "
        "([Errno 28] No space left on device); it is not shown"
    ) in lines
    assert outputs(tmp_path)["result"] == "success"


def test_a_failed_run_keeps_its_own_exit_code_and_failure_when_its_outputs_cannot_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        **github_env(tmp_path, ssh_host="b", ssh_user="u", ssh_password="pw", ssh_port="0"),
        "GITHUB_OUTPUT": "/nonexistent/out",
    }
    assert cli.main([], env) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("::error")]
    assert errors[0].startswith("::error title=bastion-migrate%3A settings failed::")
    assert errors[-1].startswith("::error title=bastion-migrate%3A report failed::the step's outputs could not be")
    assert "(failure, exit code 1)" in errors[-1]


def test_a_secret_in_a_failure_is_redacted_before_the_summary_escapes_it(
    tmp_path: Path, sshd_thread: SSHD, postgres: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    # db-user from a team secret: the probe's failure names it. The summary escapes Markdown (`_` -> `\_`), so
    # a redaction of the finished Markdown no longer found it: every text is redacted before it is escaped.
    env = probe_env(tmp_path, sshd_thread, postgres)
    del env["INPUT_DB_USER"]
    user = "no_such*user_[x]"
    env["INPUT_SECRETS"] = json.dumps({"UNIT_DB_USER": user})
    assert cli.main([], env) == 1
    printed = "\n".join(line for line in capsys.readouterr().out.splitlines() if not line.startswith("::add-mask::"))
    written = (tmp_path / "sum").read_text() + (tmp_path / "out").read_text()
    assert "**Failed in the `probe` stage:** the database refused user '\\*\\*\\*'" in written
    for shown in (printed, written):
        assert "user" in shown
        assert not [form for form in ("no_such", "no\\_such", "such\\*user", "user_", "user\\_") if form in shown]
