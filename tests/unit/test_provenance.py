"""Where each input came from: errors name the source and say where to fix it, every problem at once,
near misses get a suggestion, and the log's "resolved inputs" group names each source (no secret value)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import BASE_INPUTS
from support import parse_output_file

from bastion_action import cli, settings
from bastion_action.errors import SettingsError

# Everything but the database port and the bastion, which each case gives from its own source.
TEAM = {key: value for key, value in BASE_INPUTS.items() if key not in {"ssh-host", "db-port"}}
BAD_PORT = "54x2"


def error(raw: dict[str, str], environ: dict[str, str], flags: frozenset[str] = frozenset()) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        settings.parse(raw, environ, flags=flags)
    return info.value


def only_problem(caught: SettingsError) -> SettingsError:
    assert len(caught.problems) == 1, [problem.message for problem in caught.problems]
    (problem,) = caught.problems
    assert isinstance(problem, SettingsError)
    return problem


def workspace(tmp_path: Path, text: str = "") -> dict[str, str]:
    if text:
        (tmp_path / ".github").mkdir(exist_ok=True)
        (tmp_path / ".github/bastion-migrate.yml").write_text(text)
    return {"GITHUB_WORKSPACE": str(tmp_path)}


@pytest.mark.parametrize(
    ("source", "named", "fix"),
    [
        pytest.param("input", "(from the step's input db-port)", "Fix the 'db-port' input of the step.", id="input"),
        pytest.param("flag", "(from the flag --db-port)", "Fix --db-port on the command line.", id="flag"),
        pytest.param(
            "prefixed",
            "(from secret DEV_DB_PORT (secrets input))",
            "Fix the secret DEV_DB_PORT in the repository's, organisation's or environment's secrets.",
            id="secrets-json-prefixed",
        ),
        pytest.param(
            "plain",
            "(from environment secret DB_PORT (secrets input))",
            "Fix the secret DB_PORT in the job's environment secrets.",
            id="secrets-json-plain",
        ),
        pytest.param(
            "environ",
            "(from environment variable DEV_DB_PORT)",
            "Fix the environment variable DEV_DB_PORT (the job's or step's env).",
            id="environment-variable",
        ),
        pytest.param(
            "file",
            "(from .github/bastion-migrate.yml line 5 (environments.dev.db-port))",
            "Fix environments.dev.db-port at line 5 of .github/bastion-migrate.yml.",
            id="topology-file",
        ),
    ],
)
def test_a_bad_value_names_its_source_and_where_to_fix_it(tmp_path: Path, source: str, named: str, fix: str) -> None:
    raw = {**TEAM, "environment": "dev", "ssh-host": "bastion.example.com"}
    environ = workspace(tmp_path)
    flags: frozenset[str] = frozenset()
    if source in {"input", "flag"}:
        raw["db-port"] = BAD_PORT
        flags = frozenset({"db-port"}) if source == "flag" else flags
    elif source == "prefixed":
        raw["secrets"] = json.dumps({"DEV_DB_PORT": BAD_PORT, "DB_PORT": "5432"})
    elif source == "plain":
        raw["secrets"] = json.dumps({"DB_PORT": BAD_PORT})
    elif source == "environ":
        environ["DEV_DB_PORT"] = BAD_PORT
    else:
        environ = workspace(tmp_path, f"defaults:\n  db-port: 5432\nenvironments:\n  dev:\n    db-port: {BAD_PORT}\n")
        environ["DEV_DB_PORT"] = ""  # an unset secret expands to '': the file's value stands
    problem = only_problem(error(raw, environ, flags))
    assert problem.message.startswith("db-port: expected a port number 1-65535, got ")
    assert problem.message.endswith(named)
    assert problem.hint == fix
    from_secret = source in {"prefixed", "plain", "environ"}
    # A value read from a secret is masked everywhere: it is described, not shown as '***'.
    assert (BAD_PORT in problem.message) is not from_secret
    if from_secret:
        assert "got a value of 4 characters (not shown: it is read from a secret)" in problem.message
    if source == "file":
        assert (problem.file, problem.line) == (".github/bastion-migrate.yml", 5)


def test_a_default_that_does_not_fit_names_the_default() -> None:
    caught = error({**BASE_INPUTS, "db-sslrootcert": "-----BEGIN CERTIFICATE-----"}, {})
    problem = only_problem(caught)
    assert problem.message.endswith("(from the default of db-sslmode, the step's input db-sslrootcert)")
    assert problem.hint.endswith("Set the 'db-sslmode' input: its default does not fit here.")


def test_every_problem_is_found_in_one_run(tmp_path: Path) -> None:
    missing = {key: value for key, value in BASE_INPUTS.items() if key not in {"ssh-host", "db-host", "db-password"}}
    caught = error({**missing, "ssh-port": "99999", "command": "migrat"}, workspace(tmp_path))
    messages = [problem.message for problem in caught.problems]
    assert [message.partition(":")[0] for message in messages] == [
        "command",
        "ssh-host",
        "ssh-port",
        "db-host",
        "db-password",
    ]
    assert caught.message.startswith("5 problems with the inputs: command: expected one of")


def test_three_missing_secrets_give_three_annotations_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    team = {"UAT_HOST": "bastion.example.com", "UAT_USER": "deploy", "UAT_DB_USER": "migrator", "UAT_DB_NAME": "app"}
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(tmp_path / "out"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "sum"),
        "GITHUB_WORKSPACE": str(tmp_path),
        "INPUT_ENVIRONMENT": "uat",
        "INPUT_MODE": "lightweight",
        "INPUT_SECRETS": json.dumps(team),
        "INPUT_SSH_HOST_FINGERPRINT": BASE_INPUTS["ssh-host-fingerprint"],
    }
    assert cli.main([], env) == 1
    lines = capsys.readouterr().out.splitlines()
    errors = [line for line in lines if line.startswith("::error")]
    assert [error.split("::")[2].partition(":")[0] for error in errors] == [
        "ssh-password or ssh-private-key",
        "db-host",
        "db-password",
    ]
    assert "secret UAT_DB_HOST or DB_HOST" in errors[1]
    assert parse_output_file((tmp_path / "out").read_text())["result"] == "failure"
    summary = (tmp_path / "sum").read_text()
    assert "**Failed in the `settings` stage:** 3 problems" in summary
    assert summary.count("\n- ") == 3


def test_a_file_problem_is_annotated_on_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(tmp_path), "INPUT_ENVIRONMENT": "dev"}
    env |= workspace(tmp_path, "defaults:\n  mode: lightweight\n  db_user: app\n  colour: blue\n")
    assert cli.main([], env) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("::error")]
    assert len(errors) == 2  # both bad keys at once
    assert errors[0].startswith(
        "::error title=bastion-migrate%3A settings failed,file=.github/bastion-migrate.yml,line=3::"
        ".github/bastion-migrate.yml line 3: defaults.db_user: unknown key (did you mean 'db-user'?)"
    )
    assert ",line=4::.github/bastion-migrate.yml line 4: defaults.colour: unknown key;" in errors[1]


@pytest.mark.parametrize(
    ("secrets", "raw", "expected"),
    [
        pytest.param(
            {"DEV_SSH_PASWORD": "pw"},
            {"environment": "dev"},
            "the secrets input has DEV_SSH_PASWORD: a misspelling of DEV_SSH_PASSWORD?",
            id="misspelt-secret",
        ),
        pytest.param(
            {"DEVV_SSH_PASSWORD": "pw"},
            {"environment": "dev"},
            "the secrets input has DEVV_SSH_PASSWORD: a misspelling of DEV_SSH_PASSWORD?",
            id="misspelt-prefix",
        ),
        pytest.param(
            {"PROD_SSH_PASSWORD": "pw", "PROD_HOST": "b"},
            {"environment": "production"},
            "the secrets input has no PRODUCTION_* secret but has PROD_*: set secret-prefix: PROD or environment: prod",
            id="environment-under-another-name",
        ),
    ],
)
def test_an_unset_secret_points_to_the_near_name_in_the_json(
    tmp_path: Path, secrets: dict[str, str], raw: dict[str, str], expected: str
) -> None:
    inputs = {"mode": "lightweight", "secrets": json.dumps(secrets), **raw}
    caught = error(inputs, workspace(tmp_path))
    either = next(problem for problem in caught.problems if problem.message.startswith("ssh-password or"))
    assert expected in either.message
    assert "pw" not in either.message.replace("PASSWORD", "").replace("PASWORD", "")


@pytest.mark.parametrize(
    "secrets",
    [
        pytest.param({"DEV_HOST": "b"}, id="absent"),
        pytest.param({"QA_HOST": "b", "UAT_DB_HOST": "h", "UAT_SSH_PASSWORD": "pw"}, id="another-environment's"),
    ],
)
def test_no_suggestion_for_a_secret_that_is_merely_absent(tmp_path: Path, secrets: dict[str, str]) -> None:
    raw = {
        "mode": "lightweight",
        "environment": "qa" if "QA_HOST" in secrets else "dev",
        "secrets": json.dumps(secrets),
    }
    caught = error(raw, workspace(tmp_path))
    assert all("misspelling" not in problem.message for problem in caught.problems)
    assert all("secret-prefix" not in problem.message for problem in caught.problems)


def test_resolved_inputs_name_every_source_and_no_secret(tmp_path: Path) -> None:
    environ = workspace(tmp_path, "environments:\n  dev:\n    db-name: app\n")
    secrets = {"DEV_HOST": "bastion.example.com", "DB_PASSWORD": "plain-Secret-1", "DEV_SSH_PASSWORD": "ssh-Secret-2"}
    raw = {
        "environment": "dev",
        "mode": "lightweight",
        "secrets": json.dumps(secrets),
        "ssh-user": "deploy",
        "ssh-host-fingerprint": BASE_INPUTS["ssh-host-fingerprint"],
        "db-host": "10.0.0.5",
        "db-user": "migrator",
    }
    parsed = settings.parse(raw, environ, flags=frozenset({"db-host"}))
    lines = parsed.resolved
    assert "ssh-host: from secret DEV_HOST (secrets input)" in lines
    assert "db-password: from environment secret DB_PASSWORD (secrets input)" in lines
    assert "ssh-password: from secret DEV_SSH_PASSWORD (secrets input)" in lines
    assert "db-name: 'app' from .github/bastion-migrate.yml line 3 (environments.dev.db-name)" in lines
    assert "ssh-user: 'deploy' from the step's input ssh-user" in lines
    assert "db-host: '10.0.0.5' from the flag --db-host" in lines
    assert any(line.startswith("defaults: ") and "db-port" in line for line in lines)
    text = "\n".join(lines)
    assert all(value not in text for value in secrets.values() if "Secret" in value)


def test_the_resolved_inputs_group_is_printed_on_failure_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"GITHUB_WORKSPACE": str(tmp_path), "INPUT_DB_PASSWORD": "db-Secret-3", "INPUT_DB_PORT": BAD_PORT}
    assert cli.main([], env) == 1
    out = capsys.readouterr().out
    assert "== resolved inputs\n" in out
    assert f"db-port: '{BAD_PORT}' from the step's input db-port\n" in out
    assert "db-password: from the step's input db-password\n" in out
    assert "db-Secret-3" not in out
