"""End-to-end: .github/workflows/e2e-environment.yml under act, a job with `environment: staging`.

A GitHub deployment environment's secrets usually have plain names (HOST,
DB_PASSWORD, ...): the secret file holds only those, no STAGING_* one, so the
action's inputs can be filled only by the plain names it finds in
`secrets: ${{ toJSON(secrets) }}`. The job migrates a fresh database through
the lab's bastion; the database itself is then read as the superuser.
The act machinery (log parsing, the leak scan, running act) is test_act.py's.
"""

from __future__ import annotations

import json
import secrets
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import SAMPLE_MIGRATIONS, admin_sql, owned_databases
from test_act import ACT_TIMEOUT_S, ActLog, dispatch, expect_of, find_leaks, workflow_vars

WORKFLOW = ".github/workflows/e2e-environment.yml"
ENVIRONMENT = "staging"
SAMPLE = sorted(SAMPLE_MIGRATIONS)


def recorded(lab: dict[str, Any], database: str) -> list[str]:
    """django_migrations of database in apply order, read as the superuser (not through the tunnel)."""
    if admin_sql(lab, "SELECT to_regclass('django_migrations') IS NOT NULL", database) != "t":
        return []
    return admin_sql(lab, "SELECT app || '.' || name FROM django_migrations ORDER BY id", database).splitlines()


@pytest.fixture
def staging_db(lab: dict[str, Any]) -> Iterator[str]:
    """A fresh database owned by the lab's migration user; dropped afterwards."""
    with owned_databases(lab, [f"e2e_{ENVIRONMENT}_{secrets.token_hex(5)}"]) as (db,):
        yield db


def environment_secrets(lab: dict[str, Any], db: str) -> dict[str, str]:
    """The `staging` environment's secrets, with the plain names teams give them."""
    return {
        "HOST": str(lab["bastion_host"]),
        "USER": str(lab["ssh_password_user"]),
        "SSH_PASSWORD": str(lab["ssh_password"]),
        "DB_HOST": str(lab["db_host"]),
        "DB_USER": str(lab["db_user"]),
        "DB_PASSWORD": str(lab["db_password"]),
        "DB_NAME": db,
        "DJANGO_SETTINGS_MODULE": str(lab["django_settings_module"]),
        "SECRET_KEY": f"e2e-{ENVIRONMENT}-" + secrets.token_urlsafe(32),
        # No SSH_PORT / DB_PORT: the defaults (22, 5432) are the lab's, and a
        # short secret would be masked in every unrelated place of the log.
    }


def values_to_check(secret_env: dict[str, str]) -> dict[str, str]:
    """Every secret value, and the encoded forms of the credentials, that must not be printed."""
    checks = dict(secret_env)
    for name in ("SSH_PASSWORD", "DB_PASSWORD", "SECRET_KEY"):
        checks[f"{name} (percent-encoded)"] = urllib.parse.quote(secret_env[name], safe="")
        checks[f"{name} (form-encoded)"] = urllib.parse.quote_plus(secret_env[name], safe="")
    return checks


@dataclass(repr=False)  # holds secrets: never let pytest print them
class EnvironmentRun:
    args: list[str]
    rc: int
    seconds: float
    raw: str
    log: ActLog
    log_path: Path
    checked: dict[str, str]

    def __repr__(self) -> str:
        return f"EnvironmentRun(rc={self.rc}, log={self.log_path})"

    def expect(self, condition: object, what: str) -> None:
        expect_of(self, condition, what)


@pytest.fixture
def environment_run(
    lab: dict[str, Any],
    act_bin: str,
    act_cache_dir: Path,
    staging_db: str,
    private_dir: Path,
    tmp_path: Path,
) -> EnvironmentRun:
    # The lab's ports must be the action's defaults: the workflow passes none.
    assert int(lab["ssh_port"]) == 22, f"lab ssh_port {lab['ssh_port']}: the workflow relies on 22"
    assert int(lab["db_port"]) == 5432, f"lab db_port {lab['db_port']}: the workflow relies on 5432"
    secret_env = environment_secrets(lab, staging_db)
    log_path = tmp_path / "act.jsonl"
    done = dispatch(
        act_bin,
        WORKFLOW,
        cache=act_cache_dir,
        private_dir=private_dir,
        secret_env=secret_env,
        var_env=workflow_vars(lab),
        log_path=log_path,
        # act masks nothing: any secret the action prints itself shows up.
        extra=("--insecure-secrets",),
    )
    args, rc, seconds, raw = done.args, done.rc, done.seconds, done.raw
    sys.stdout.write(f"act took {seconds:.1f} s, rc={rc}; log: {log_path}\n")
    return EnvironmentRun(
        args=args,
        rc=rc,
        seconds=seconds,
        raw=raw,
        log=ActLog.parse(raw),
        log_path=log_path,
        checked=values_to_check(secret_env),
    )


def test_environment_job_with_plain_secret_names(
    environment_run: EnvironmentRun, lab: dict[str, Any], staging_db: str
) -> None:
    run = environment_run
    # Secrets first: a leak is the worst failure, whatever else happened.
    leaks = find_leaks(run.raw, run.checked)
    run.expect(not leaks, f"secret values appear in act's output: {', '.join(leaks)}")
    run.expect(run.rc != -1, f"act did not finish within {ACT_TIMEOUT_S} s")
    results, outputs = run.log.step_results(), run.log.outputs().get("migrate", {})
    run.expect(results.get("assert") is not None, f"the workflow's assertion step never ran: {results}")
    run.expect(run.rc == 0, f"act exited {run.rc}; step results: {results}; outputs: {outputs}")
    run.expect(run.log.job_result() == "success", f"job result {run.log.job_result()!r}")
    run.expect(results.get("migrate") == "success", f"step results: {results}")
    run.expect(results.get("assert") == "success", f"the workflow's assertion step: {results}")
    run.expect(outputs.get("result") == "success", f"migrate outputs: {outputs}")
    run.expect(outputs.get("applied-count") == str(len(SAMPLE)), f"migrate outputs: {outputs}")
    # The rollback took the migrate's rollback-targets output through the workflow and unapplied it all.
    back, again = run.log.outputs().get("rollback", {}), run.log.outputs().get("remigrate", {})
    run.expect(results.get("rollback") == "success", f"step results: {results}; rollback outputs: {back}")
    run.expect(
        json.loads(outputs.get("rollback-targets", "null")) == dict.fromkeys(("audit", "catalog", "orders"), "zero"),
        f"rollback-targets {outputs.get('rollback-targets')}",
    )
    run.expect(sorted(json.loads(back.get("unapplied", "[]"))) == SAMPLE, f"rollback outputs: {back}")
    run.expect(
        results.get("remigrate") == "success" and again.get("applied-count") == str(len(SAMPLE)),
        f"step results: {results}; remigrate outputs: {again}",
    )

    # The log's resolved inputs name the plain secrets that filled the inputs (names, never values).
    for name, secret in (("ssh-host", "HOST"), ("db-password", "DB_PASSWORD"), ("db-name", "DB_NAME")):
        line = f"{name}: from environment secret {secret} (secrets input)"
        run.expect(line in run.raw, f"the log does not say {line!r}")

    # The database named by the plain DB_NAME secret holds the sample's migrations (applied again).
    in_db = recorded(lab, staging_db)
    run.expect(sorted(in_db) == SAMPLE, f"{staging_db}.django_migrations holds {in_db}")
    run.expect(json.loads(again.get("applied", "null")) == in_db, f"re-applied {again.get('applied')}")
