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
