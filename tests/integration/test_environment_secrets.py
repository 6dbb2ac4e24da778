"""GitHub environment secrets have plain names (HOST, DB_PASSWORD, ...): the action reads them from toJSON(secrets)."""

from __future__ import annotations

import json

from support import SAMPLE_MIGRATIONS, applied_rows


def test_plain_environment_secrets_migrate_the_lab_database(action, base_inputs, lab, fresh_db) -> None:
    secrets = {  # what toJSON(secrets) holds in a job with `environment: lab` whose secrets have plain names
        "HOST": lab["bastion_host"],
        "USER": lab["ssh_password_user"],
        "SSH_PASSWORD": lab["ssh_password"],
        "DB_HOST": lab["db_host"],
        "DB_PORT": str(lab["db_port"]),
        "DB_USER": lab["db_user"],
        "DB_PASSWORD": lab["db_password"],
        "DB_NAME": fresh_db,
        "SECRET_KEY": base_inputs["secret-key"],
        "github_token": "ghs_unrelated",
    }
    inputs = {
        name: value
        for name, value in base_inputs.items()
        if name in {"environment", "mode", "ssh-known-hosts", "python", "working-directory", "django-settings-module"}
    }
    run = action({**inputs, "command": "migrate", "db-sslmode": "require", "secrets": json.dumps(secrets)})
    assert run.returncode == 0, run.explain()
    assert sorted(json.loads(run.outputs["applied"])) == sorted(SAMPLE_MIGRATIONS)
    assert applied_rows(lab, fresh_db) == len(SAMPLE_MIGRATIONS)


def test_a_refused_ssh_password_names_the_user_and_the_secret_it_came_from(action, base_inputs, lab) -> None:
    inputs = {name: value for name, value in base_inputs.items() if name not in {"ssh-password", "ssh-user"}}
    secrets = {"LAB_USER": lab["ssh_password_user"], "LAB_SSH_PASSWORD": "not-the-Password-1"}
    run = action({**inputs, "secrets": json.dumps(secrets)})
    assert run.returncode == 1
    (error,) = run.annotations
    assert error.startswith(
        "::error title=bastion-migrate%3A tunnel failed::authentication to "
        f"***@{lab['bastion_host']}:{lab['ssh_port']} was refused "  # the user came from a secret: masked
        "(ssh-user from secret LAB_USER (secrets input); ssh-password from secret LAB_SSH_PASSWORD (secrets input))%0A"
    )
    assert "ssh-password: from secret LAB_SSH_PASSWORD (secrets input)" in run.stdout


def test_a_refused_database_password_names_the_variable_it_came_from(action, base_inputs, lab) -> None:
    inputs = {name: value for name, value in base_inputs.items() if name != "db-password"}
    run = action(inputs, extra_env={"LAB_DB_PASSWORD": "not-the-Password-2"})
    assert run.returncode == 1
    (error,) = run.annotations
    assert error.startswith(
        f"::error title=bastion-migrate%3A probe failed::the database refused user {lab['db_user']!r}: "
    )
    assert (
        "(db-user from the step's input db-user; db-password from environment variable LAB_DB_PASSWORD)%0AHint:"
    ) in error


def test_runner_debug_logs_every_stage_with_no_secret(action, base_inputs) -> None:
    run = action({**base_inputs, "command": "migrate"}, extra_env={"RUNNER_DEBUG": "1"})  # every form is scanned
    assert run.returncode == 0, run.explain()
    debug = [line for line in run.stdout.splitlines() if line.startswith("::debug::")]
    for stage in ("settings", "tunnel", "probe", "lock", "command"):
        assert f"::debug::stage {stage}: ended after " in "\n".join(debug), stage
    assert any(line.startswith("::debug::tunnel: ") for line in debug)
    assert any("command: exit code 0" in line for line in debug)
    assert "::debug::event loop: uvloop" in debug, "the run is on uvloop unless told otherwise"
