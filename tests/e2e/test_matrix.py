"""End-to-end: .github/workflows/e2e-matrix.yml under act, dev / uat / prod in parallel.

Each matrix job reads its own <ENV>_* secrets from `secrets: ${{ toJSON(secrets) }}`
and migrates its own fresh database through the lab's one bastion, at the same
time as the others, all sharing one RUNNER_TOOL_CACHE (a cold one: the jobs
race to build the action's venv, which must come out built once and usable by
all). A fourth leg, `qa`, lacks QA_DB_HOST and must fail naming that secret.
The act machinery (log parsing, the leak scan, running act) is test_act.py's.
"""

from __future__ import annotations

import itertools
import json
import re
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

WORKFLOW = ".github/workflows/e2e-matrix.yml"
ENVIRONMENTS = ("dev", "uat", "prod")
NEGATIVE = "qa"  # every QA_* secret but QA_DB_HOST
SAMPLE = sorted(SAMPLE_MIGRATIONS)


def recorded(lab: dict[str, Any], database: str) -> list[str]:
    """django_migrations of database in apply order, read as the superuser (not through the tunnel)."""
    if admin_sql(lab, "SELECT to_regclass('django_migrations') IS NOT NULL", database) != "t":
        return []
    return admin_sql(lab, "SELECT app || '.' || name FROM django_migrations ORDER BY id", database).splitlines()


@pytest.fixture
def env_dbs(lab: dict[str, Any]) -> Iterator[dict[str, str]]:
    """A fresh database per environment, owned by the lab's migration user; dropped afterwards."""
    dbs = {env: f"e2e_{env}_{secrets.token_hex(5)}" for env in ENVIRONMENTS}
    with owned_databases(lab, list(dbs.values())):
        yield dbs


def matrix_secrets(lab: dict[str, Any], dbs: dict[str, str]) -> dict[str, str]:
    """The repository's secrets as a team names them: <ENV>_HOST, <ENV>_DB_PASSWORD, ..."""
    values: dict[str, str] = {}
    for env in (*ENVIRONMENTS, NEGATIVE):
        prefix = env.upper()
        values |= {
            f"{prefix}_HOST": str(lab["bastion_host"]),
            f"{prefix}_USER": str(lab["ssh_password_user"]),
            f"{prefix}_SSH_PASSWORD": str(lab["ssh_password"]),
            f"{prefix}_DB_HOST": str(lab["db_host"]),
            f"{prefix}_DB_USER": str(lab["db_user"]),
            f"{prefix}_DB_PASSWORD": str(lab["db_password"]),
            f"{prefix}_DB_NAME": dbs.get(env, f"e2e_{env}_never_created"),
            f"{prefix}_DJANGO_SETTINGS_MODULE": str(lab["django_settings_module"]),
            f"{prefix}_SECRET_KEY": f"e2e-{env}-" + secrets.token_urlsafe(32),
        }
        # No <ENV>_SSH_PORT / <ENV>_DB_PORT: the defaults (22, 5432) are the lab's,
        # and a short secret would be masked in every unrelated place of the log.
    del values[f"{NEGATIVE.upper()}_DB_HOST"]
    return values


def values_to_check(secret_env: dict[str, str]) -> dict[str, str]:
    """Every secret value, and the encoded forms of the credentials, that must not be printed."""
    checks = dict(secret_env)
    for name, value in secret_env.items():
        if name.endswith(("_PASSWORD", "_SECRET_KEY")):
            checks[f"{name} (percent-encoded)"] = urllib.parse.quote(value, safe="")
            checks[f"{name} (form-encoded)"] = urllib.parse.quote_plus(value, safe="")
    return checks


def logs_by_env(raw: str) -> dict[str, ActLog]:
    """act's --json log split per matrix job (each event carries its job's `matrix`)."""
    lines: dict[str, list[str]] = {}
    for line in raw.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        env = event.get("matrix", {}).get("env") if isinstance(event, dict) else None
        if env:
            lines.setdefault(env, []).append(line)
    return {env: ActLog.parse("\n".join(text)) for env, text in lines.items()}


def migrate_span(log: ActLog) -> tuple[str, str] | None:
    """(start, end) times of the job's `migrate` step, as act stamps them."""
    start = end = None
    for ev in log.events:
        if ev.get("stepID") == ["migrate"] and ev.get("stage") == "Main":
            if start is None and str(ev.get("msg", "")).startswith("⭐"):
                start = ev.get("time")
            if "stepResult" in ev:
                end = ev.get("time")
    return (start, end) if start and end else None


@dataclass(repr=False)  # holds secrets: never let pytest print them
class MatrixRun:
    args: list[str]
    rc: int
    seconds: float
    raw: str
    jobs: dict[str, ActLog]
    tool_cache: Path
    log_path: Path
    checked: dict[str, str]

    def __repr__(self) -> str:
        return f"MatrixRun(rc={self.rc}, log={self.log_path})"

    def expect(self, condition: object, what: str) -> None:
        expect_of(self, condition, what)


@pytest.fixture
def matrix_run(
    lab: dict[str, Any],
    act_bin: str,
    env_dbs: dict[str, str],
    private_dir: Path,
    tmp_path: Path,
) -> MatrixRun:
    # The lab's ports must be the action's defaults: the workflow passes none.
    assert int(lab["ssh_port"]) == 22, f"lab ssh_port {lab['ssh_port']}: the matrix workflow relies on 22"
    assert int(lab["db_port"]) == 5432, f"lab db_port {lab['db_port']}: the matrix workflow relies on 5432"
    secret_env = matrix_secrets(lab, env_dbs)
    # A cache of this test's own: the jobs start cold and race to build the venv.
    cache = tmp_path / "act-cache"
    cache.mkdir()
    log_path = tmp_path / "act.jsonl"
    jobs = len(ENVIRONMENTS) + 1
    done = dispatch(
        act_bin,
        WORKFLOW,
        cache=cache,
        private_dir=private_dir,
        secret_env=secret_env,
        var_env=workflow_vars(lab),
        log_path=log_path,
        # act's default is the CPU count; act masks nothing: any secret the action prints itself shows up.
        extra=("--concurrent-jobs", str(jobs), "--insecure-secrets"),
    )
    args, rc, seconds, raw = done.args, done.rc, done.seconds, done.raw
    run = MatrixRun(
        args=args,
        rc=rc,
        seconds=seconds,
        raw=raw,
        jobs=logs_by_env(raw),
        tool_cache=cache / "tool_cache",
        log_path=log_path,
        checked=values_to_check(secret_env),
    )
    sys.stdout.write(f"act took {seconds:.1f} s, rc={rc}; log: {log_path}\n")
    return run


def test_matrix_under_act(matrix_run: MatrixRun, lab: dict[str, Any], env_dbs: dict[str, str]) -> None:
    run = matrix_run
    leaks = find_leaks(run.raw, run.checked)
    run.expect(not leaks, f"secret values appear in act's output: {', '.join(leaks)}")
    run.expect(run.rc != -1, f"act did not finish within {ACT_TIMEOUT_S} s")
    run.expect(sorted(run.jobs) == sorted((*ENVIRONMENTS, NEGATIVE)), f"matrix jobs seen: {sorted(run.jobs)}")
    run.expect(run.rc == 0, f"act exited {run.rc}; job results: { {e: j.job_result() for e, j in run.jobs.items()} }")

    ports: dict[str, str] = {}
    for env in ENVIRONMENTS:
        job = run.jobs[env]
        results, outputs = job.step_results(), job.outputs().get("migrate", {})
        run.expect(job.job_result() == "success", f"{env}: job result {job.job_result()!r}")
        run.expect(results.get("migrate") == "success", f"{env}: step results {results}")
        run.expect(results.get("assert") == "success", f"{env}: the workflow's assertion step: {results}")
        run.expect(outputs.get("result") == "success", f"{env}: outputs {outputs}")
        run.expect(outputs.get("applied-count") == str(len(SAMPLE)), f"{env}: outputs {outputs}")
        run.expect(re.fullmatch(r"[0-9]+", outputs.get("tunnel-port", "")), f"{env}: outputs {outputs}")
        ports[env] = outputs["tunnel-port"]
        in_db = recorded(lab, env_dbs[env])
        run.expect(sorted(in_db) == SAMPLE, f"{env}: {env_dbs[env]}.django_migrations holds {in_db}")
        run.expect(json.loads(outputs.get("applied", "null")) == in_db, f"{env}: applied {outputs.get('applied')}")
    run.expect(len(set(ports.values())) == len(ports), f"jobs shared a tunnel port: {ports}")

    # The jobs ran side by side (act stamps whole seconds: overlapping spans).
    spans = {env: migrate_span(run.jobs[env]) for env in ENVIRONMENTS}
    run.expect(all(spans.values()), f"migrate step spans: {spans}")
    for (a, sa), (b, sb) in itertools.combinations(spans.items(), 2):
        run.expect(sa and sb and sa[0] <= sb[1] and sb[0] <= sa[1], f"{a} {sa} and {b} {sb} did not overlap")

    # One venv, built by one job while the others waited for it.
    built = [line for log in run.jobs.values() for line in log.text_lines if "bastion-migrate: built " in line]
    run.expect(len(built) == 1, f"venv builds reported: {built}")
    venvs = sorted(p.name for p in (run.tool_cache / "bastion-migrate").glob("venv-*"))
    run.expect(len(venvs) == 1, f"venvs in the shared tool cache: {venvs}")
    run.expect((run.tool_cache / "bastion-migrate" / venvs[0] / ".complete").is_file(), "the venv is not complete")

    # The negative leg: its migrate step failed on settings, naming the secret; its job passed.
    qa = run.jobs[NEGATIVE]
    results, outputs = qa.step_results(), qa.outputs().get("migrate", {})
    run.expect(qa.job_result() == "success", f"{NEGATIVE}: job result {qa.job_result()!r}")
    run.expect(results.get("migrate") == "failure", f"{NEGATIVE}: step results {results}")
    run.expect(results.get("assert") == "success", f"{NEGATIVE}: the workflow's assertion step: {results}")
    run.expect(outputs.get("result") == "failure", f"{NEGATIVE}: outputs {outputs}")
    errors = [str(ev.get("arg", "")) for ev in qa.events if ev.get("command") == "error"]
    expected = f"(not set: input db-host, secret {NEGATIVE.upper()}_DB_HOST or DB_HOST)"
    run.expect(any(expected in error for error in errors), f"{NEGATIVE}: no annotation says {expected!r}: {errors}")
