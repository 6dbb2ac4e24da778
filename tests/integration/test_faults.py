"""Every fault ends cleanly (issue 6): one test per fault scenario, injected in the real lab.

Each failing run must exit non-zero with ``result`` = ``failure``, ONE ``::error`` annotation
naming the stage that failed with a useful ``Hint:``, and leave NOTHING behind: no container
with the action's label, no process of the run, no listener on its ``tunnel-port``, no
advisory lock of the action on the database, no SSH session of the run on the bastion.

The lab (tests/lab/up.sh) provides the faults: a closed bastion port, a blackholed bastion
address (``blackhole_host``), a client key nobody authorized (``ssh_unauthorized_key_path``),
a wrong host key, a database port nothing listens on (``db_closed_port``) and one that
drops packets (``db_silent_port``), and a second sshd on the bastion that refuses every
forward (``noforward_port``) or drops a silent client (``keepalive_port``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (
    ActionRun,
    action_locks,
    admin_sql,
    assert_report,
    finish_action,
    listening,
    processes_mentioning,
    sshd_sessions,
    start_action,
    start_lock_holder,
    wait_for,
    with_docker,
)

LABEL = "io.github.bastion-migrate.command"
LOCK_CLASSID = 1651733614  # bastion_action.lock.LOCK_NAMESPACE (also in action_locks' SQL)
DRAIN_SECONDS = 5.0  # how long a bastion-side session may take to notice its client went away
GRACE_SECONDS = 10.0  # SIGTERM -> SIGKILL (the contract: a cancelled run ends within 10 s)
SAMPLE = 6  # migrations in the sample project

Lab = dict[str, Any]


# ---------------------------------------------------------------- observers --


def containers() -> set[str]:
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL}"], capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


def bastion_sessions(lab: Lab) -> set[int]:
    """Live per-connection sshd processes in the bastion namespace (the lab's main and fault sshd)."""
    return set(sshd_sessions(lab["bastion_ns"]))


def eventually(probe: Callable[[], Any], timeout: float = DRAIN_SECONDS) -> Any:
    """``probe()``'s first falsy value within ``timeout`` s, else its last value."""
    deadline = time.monotonic() + timeout
    value = probe()
    while value and time.monotonic() < deadline:
        time.sleep(0.1)
        value = probe()
    return value


def recorded(lab: Lab, database: str) -> list[str]:
    with contextlib.suppress(RuntimeError):  # until Django has created the table
        rows = admin_sql(lab, "SELECT app || '.' || name FROM django_migrations ORDER BY id", database)
        return rows.splitlines()
    return []


@dataclasses.dataclass(frozen=True)
class Before:
    """What existed before the run: only what the run added counts as left behind."""

    containers: set[str]
    sessions: set[int]


@pytest.fixture
def before(lab: Lab) -> Before:
    # A previous test's bastion session may still be draining: start from a quiet bastion.
    eventually(lambda: bastion_sessions(lab))
    return Before(containers=containers(), sessions=bastion_sessions(lab))


def assert_nothing_left(run: ActionRun, lab: Lab, database: str, before: Before) -> None:
    left = containers() - before.containers
    assert not left, f"containers left behind: {left}\n{run.explain()}"
    assert processes_mentioning(database) == [], f"a process of the run outlived it\n{run.explain()}"
    if run.outputs.get("tunnel-port"):
        assert not listening(int(run.outputs["tunnel-port"])), "the tunnel's listener outlived the run"
    locks = eventually(lambda: action_locks(lab, database))
    assert locks == 0, f"{locks} advisory lock(s) of the action still held on {database}"
    sessions = eventually(lambda: bastion_sessions(lab) - before.sessions)
    assert not sessions, f"SSH sessions of the run still on the bastion {DRAIN_SECONDS} s later: {sessions}"


def assert_clean_failure(
    run: ActionRun, stage: str, *, hint_contains: str, message_contains: str, lab: Lab, database: str, before: Before
) -> str:
    """The common contract of a failed run; returns the error annotation's text (message, then hint)."""
    assert run.returncode == int(run.outputs["exit-code"]) != 0, run.explain()
    assert run.outputs.get("result") == "failure", run.explain()
    errors = [line for line in run.annotations if line.startswith("::error")]
    assert len(errors) == 1, run.explain()
    prefix = f"::error title=bastion-migrate%3A {stage} failed::"
    assert errors[0].startswith(prefix), run.explain()
    text = errors[0].removeprefix(prefix).replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")
    message, _, hint = text.partition("\nHint: ")
    assert message_contains in message, run.explain()
    assert hint_contains in hint, f"hint {hint!r} lacks {hint_contains!r}"
    assert f"Failed in the `{stage}` stage" in run.summary
    assert_report(run, stage)
    print(f"[{stage}] {text} ({run.seconds:.2f} s)")  # noqa: T201 - shown with -rP: what the user reads
    assert "Traceback" not in run.stderr, run.stderr
    assert_nothing_left(run, lab, database, before)
    return text


# ------------------------------------------------------------------- inputs --


@pytest.fixture
def secrets(secrets: list[str], lab: Lab) -> list[str]:
    """The unauthorized key and the registry password are scanned for too."""
    return [*secrets, lab["registry_password"], Path(lab["ssh_unauthorized_key_path"]).read_text()]


@pytest.fixture
def inputs(base_inputs: dict[str, str]) -> dict[str, str]:
    return {**base_inputs, "connect-timeout": "3"}


def with_lock_holder(lab: Lab, database: str) -> subprocess.Popen[bytes]:
    """Another deploy holding the migration lock of ``database`` (as lock.lock_keys computes it)."""
    holder = start_lock_holder(lab, database, seconds=60)
    wait_for(lambda: action_locks(lab, database), "the other deploy's lock", timeout=10)
    return holder


@contextlib.contextmanager
def lock_held_by_another(lab: Lab, database: str) -> Iterator[None]:
    holder = with_lock_holder(lab, database)
    try:
        yield
    finally:
        # psql runs under runuser: end its backend, and psql with it.
        admin_sql(
            lab,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'other-deploy' AND datname = current_database()",
            database,
        )
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        eventually(lambda: action_locks(lab, database))


@contextlib.contextmanager
def silenced_port(lab: Lab, port: int) -> Iterator[None]:
    """The bastion's link for ``port`` goes silent both ways (nothing refused, nothing answered)."""
    rules = [["INPUT", "-p", "tcp", "--dport", str(port)], ["OUTPUT", "-p", "tcp", "--sport", str(port)]]
    ns = ["ip", "netns", "exec", lab["bastion_ns"], "iptables", "-w"]
    for rule in rules:
        subprocess.run([*ns, "-I", *rule, "-j", "DROP"], check=True)
    try:
        yield
    finally:
        for rule in rules:
            subprocess.run([*ns, "-D", *rule, "-j", "DROP"], check=True)


# ------------------------------------------------------ scenarios 1 to 9 --

# id -> (stage, input changes, message, hint); "{...}" is filled from the lab.
SIMPLE = {
    "01-bastion-refuses": (
        "tunnel",
        {"ssh-port": "2"},
        "{bastion_host}:2 refused the connection",
        "sshd is running on the bastion",
    ),
    "02-bastion-blackholed": (
        "tunnel",
        {"ssh-host": "{blackhole_host}", "connect-timeout": "2"},
        "no SSH answer from {blackhole_host}:22 within 2 s",
        "firewall admits this runner",
    ),
    "03-wrong-ssh-password": (
        "tunnel",
        {"ssh-password": "definitely-not-the-password"},
        "authentication to {ssh_password_user}@{bastion_host}:22 was refused",
        "Check ssh-user and ssh-password",
    ),
    "04-key-not-authorized": (
        "tunnel",
        {"ssh-user": "{ssh_key_user}", "ssh-password": "", "ssh-private-key": "@{ssh_unauthorized_key_path}"},
        "authentication to {ssh_key_user}@{bastion_host}:22 was refused",
        "authorized_keys",
    ),
    "05-host-key-mismatch": (
        "tunnel",
        {"ssh-known-hosts": "{ssh_wrong_known_hosts}"},
        "not trusted (possible man-in-the-middle); the bastion presented {ssh_host_fingerprint}",
        "ssh-keyscan -p 22 {bastion_host}",
    ),
    "06-database-down": (
        "probe",
        {"db-port": "{db_closed_port}"},
        "the bastion cannot reach the database at {db_host}:{db_closed_port}: Connection refused",
        "Check db-host and db-port as the bastion sees them",
    ),
    "07-forward-refused": (
        "tunnel",
        {"ssh-port": "{noforward_port}", "ssh-known-hosts": "{noforward_known_hosts}"},
        "the bastion refused to forward to {db_host}:{db_port} (administratively prohibited",
        "AllowTcpForwarding",
    ),
    "08-wrong-db-password": (
        "probe",
        {"db-password": "not-the-db-password"},
        "the database refused user '{db_user}'",
        "Check db-user and db-password",
    ),
    "09-database-missing": (
        "probe",
        {"db-name": "{db_name}_absent"},
        "database '{db_name}_absent' does not exist",
        "Check db-name",
    ),
}


def fill(text: str, lab: Lab, database: str) -> str:
    value = text.format(**{**lab, "db_name": database})
    return Path(value[1:]).read_text() if value.startswith("@/") else value


@pytest.mark.parametrize("scenario", list(SIMPLE))
def test_fault(scenario: str, action, inputs, lab, fresh_db, before) -> None:
    stage, changes, message, hint = SIMPLE[scenario]
    run = action({**inputs, **{name: fill(value, lab, fresh_db) for name, value in changes.items()}})
    assert_clean_failure(
        run,
        stage,
        message_contains=fill(message, lab, fresh_db),
        hint_contains=fill(hint, lab, fresh_db),
        lab=lab,
        database=fresh_db,
        before=before,
    )
    if scenario == "02-bastion-blackholed":  # within connect-timeout (+1 s), not a hang
        assert float(run.outputs["duration-seconds"]) < 2 + 1, run.outputs
    if stage == "tunnel":
        assert "tunnel-port" not in run.outputs or scenario == "07-forward-refused"


# ------------------------------------------------ 10: tunnel dies mid-command --


@pytest.mark.parametrize("how", ["10-tunnel-killed", "10-tunnel-silent"])
def test_10_tunnel_dies_mid_command(how: str, inputs, lab, fresh_db, before, tmp_path, secrets) -> None:
    """Killed: the bastion's session process dies (the link closes). Silent: every packet is dropped."""
    interval = 1.0
    run_inputs = {
        **inputs,
        "command": "migrate",
        "extra-env": "SAMPLE_MIGRATION_SLEEP=60",
        "ssh-keepalive-interval": f"{interval:g}",
    }
    if how == "10-tunnel-silent":
        run_inputs |= {"ssh-port": str(lab["keepalive_port"]), "ssh-known-hosts": lab["keepalive_known_hosts"]}
    started = time.monotonic()
    process = start_action(run_inputs, tmp_path)
    try:
        wait_for(lambda: "audit.0001_initial" in recorded(lab, fresh_db), "the slow migration step")
        sessions = bastion_sessions(lab) - before.sessions
        assert sessions, "no bastion session while the run holds the tunnel"
        broken_at = time.monotonic()
        if how == "10-tunnel-killed":
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            run = finish_action(process, tmp_path, started, timeout=30)
        else:
            with silenced_port(lab, lab["keepalive_port"]):
                run = finish_action(process, tmp_path, started, timeout=30)
                # Until the link is back, the bastion's side must have given up by itself too (ClientAlive*).
                eventually(lambda: bastion_sessions(lab) - before.sessions)
    finally:
        if process.poll() is None:
            process.kill()
    noticed = time.monotonic() - broken_at
    # asyncssh declares the link dead after KEEPALIVE_COUNT_MAX (3) unanswered keepalives.
    limit = 1.0 if how == "10-tunnel-killed" else 4 * interval + 1.5
    assert noticed < limit + 1.0, f"noticed after {noticed:.1f} s\n{run.explain()}"
    assert not run.leaks(secrets)
    assert_clean_failure(
        run,
        "tunnel",
        message_contains="the SSH connection to the bastion ended while the run used it",
        hint_contains="keepalives went unanswered",
        lab=lab,
        database=fresh_db,
        before=before,
    )
    assert run.outputs["result"] != "success"


# ------------------------------------------------- 11-14: command and docker --


def test_11_command_exits_non_zero(action, inputs, lab, fresh_db, before) -> None:
    run = action({**inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_FAIL=1"})
    assert_clean_failure(
        run,
        "command",
        message_contains="exited with code 1 while applying audit.0002_test_hooks",
        hint_contains="last lines of output are in the step summary",
        lab=lab,
        database=fresh_db,
        before=before,
    )
    assert run.outputs["exit-code"] == "1"
    assert "| failed on | `audit.0002_test_hooks` |" in run.summary
    assert "failing on purpose (SAMPLE_MIGRATION_FAIL)" in run.summary.split("Last ")[1], "the last log lines"


def test_12_image_missing(action, inputs, lab, fresh_db, before) -> None:
    tag = "absent-" + uuid.uuid4().hex[:8]
    run = action({**with_docker(inputs, lab), "command": "migrate", "image-tag": tag})
    assert_clean_failure(
        run,
        "pull",
        message_contains=f"{lab['image']}:{tag} was not found in {lab['registry']}",
        hint_contains="was this tag pushed",
        lab=lab,
        database=fresh_db,
        before=before,
    )
    assert recorded(lab, fresh_db) == []


def test_13_registry_refuses_the_credentials(action, inputs, lab, fresh_db, before) -> None:
    run = action({**with_docker(inputs, lab), "command": "migrate", "pull": "always", "registry-password": "wrong-pw"})
    assert_clean_failure(
        run,
        "pull",
        message_contains=f"the registry {lab['registry']} refused the credentials",
        hint_contains="registry-password",
        lab=lab,
        database=fresh_db,
        before=before,
    )


def test_14_docker_daemon_unreachable(action, inputs, lab, fresh_db, before, tmp_path) -> None:
    socket_path = tmp_path / "docker.sock"  # no daemon there: as when dockerd is not running
    run = action({**with_docker(inputs, lab), "command": "migrate"}, extra_env={"DOCKER_HOST": f"unix://{socket_path}"})
    assert_clean_failure(
        run,
        "pull",
        message_contains="cannot reach the Docker daemon",
        hint_contains="point DOCKER_HOST at it",
        lab=lab,
        database=fresh_db,
        before=before,
    )


# ----------------------------------------------------------- 15: cancelled --


def _sigterm_then_sigkill(process: subprocess.Popen[str]) -> float:
    """SIGTERM as GitHub sends on cancel; SIGKILL after the grace period. Returns the seconds it took."""
    os.kill(process.pid, signal.SIGTERM)
    sent = time.monotonic()
    while process.poll() is None and time.monotonic() - sent < GRACE_SECONDS:
        time.sleep(0.05)
    took = time.monotonic() - sent
    if process.poll() is None:
        process.kill()
        pytest.fail(f"still running {GRACE_SECONDS:g} s after SIGTERM: SIGKILLed, cleanup did not complete")
    return took


@pytest.mark.parametrize("phase", ["15-sigterm-in-probe", "15-sigterm-in-lock-wait", "15-sigterm-in-command"])
def test_15_cancelled(phase: str, inputs, lab, fresh_db, before, tmp_path, secrets) -> None:
    run_inputs = {**inputs, "command": "migrate", "connect-timeout": "20"}
    holder: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if phase == "15-sigterm-in-probe":  # the database never answers: the probe waits
        run_inputs["db-port"] = str(lab["db_silent_port"])
        syn_sent = ["ip", "netns", "exec", lab["bastion_ns"], "ss", "-Htn", "state", "syn-sent"]
        target = f"{lab['db_host']}:{lab['db_silent_port']}"

        def reached() -> bool:
            return target in subprocess.run(syn_sent, capture_output=True, text=True, check=True).stdout
    elif phase == "15-sigterm-in-lock-wait":
        run_inputs["lock-timeout"] = "60"
        holder = lock_held_by_another(lab, fresh_db)
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = '%s'"

        def reached() -> bool:
            return admin_sql(lab, query % "bastion-migrate", fresh_db) != "0"
    else:  # docker mode: the container is running a slow migration
        run_inputs = {**with_docker(run_inputs, lab), "extra-env": "SAMPLE_MIGRATION_SLEEP=60"}

        def reached() -> bool:
            return "audit.0001_initial" in recorded(lab, fresh_db)

    with holder:
        started = time.monotonic()
        process = start_action(run_inputs, tmp_path)
        try:
            wait_for(reached, phase.removeprefix("15-sigterm-"))
            time.sleep(0.5)  # well inside the phase
            took = _sigterm_then_sigkill(process)
        finally:
            if process.poll() is None:
                process.kill()
        run = finish_action(process, tmp_path, started, timeout=10)
    assert took < GRACE_SECONDS, run.explain()
    assert run.returncode == 128 + signal.SIGTERM, run.explain()
    assert run.outputs["result"] == "failure", run.explain()
    assert not [line for line in run.annotations if line.startswith("::error")], "a cancel is not an error"
    assert "cancelled: the run was stopped and its resources released" in run.stdout
    assert "**Cancelled**" in run.summary
    assert "Traceback" not in run.stderr, run.stderr
    assert not run.leaks(secrets)
    assert_nothing_left(run, lab, fresh_db, before)
    if phase != "15-sigterm-in-command":
        assert recorded(lab, fresh_db) == [], "nothing ran without the lock"


# ------------------------------------------------ 16: two concurrent migrate --


def test_16_two_concurrent_migrations(inputs, lab, fresh_db, before, tmp_path, secrets) -> None:
    """A docker run and a lightweight run (as two matrix jobs would) migrate one database at once."""
    slow = {**inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_SLEEP=1"}
    variants = [slow, with_docker(slow, lab)]
    started = time.monotonic()
    processes = [start_action(variant, tmp_path / f"run{n}") for n, variant in enumerate(variants)]
    runs = [finish_action(process, tmp_path / f"run{n}", started, timeout=60) for n, process in enumerate(processes)]
    for run in runs:
        assert run.returncode == 0, run.explain()
        assert run.outputs["result"] == "success"
        assert not run.annotations, run.explain()
        assert not run.leaks(secrets)
    rows = recorded(lab, fresh_db)
    assert len(rows) == SAMPLE
    assert len(set(rows)) == SAMPLE, "a migration was recorded twice"
    applied = sorted((json.loads(run.outputs["applied"]) for run in runs), key=len)
    assert applied == [[], rows], "one run applied everything, the other nothing"
    waits = sorted(float(run.outputs["lock-wait-seconds"]) for run in runs)
    assert waits[0] < 0.5, f"the first run took the lock at once: {waits}"
    assert waits[1] > 0.5, f"the second run waited for the first: {waits}"
    for run in runs:
        assert_nothing_left(run, lab, fresh_db, before)


# ------------------------------------------------- timeouts, run and stages --

# id -> (stage, input changes, message); the run's `timeout` hits while the stage is running,
# or the stage's own limit (connect-timeout, lock-timeout) ends it.
TIMEOUTS = {
    "timeout-run-in-tunnel": ("tunnel", {"ssh-host": "{blackhole_host}", "connect-timeout": "20", "timeout": "1.5"}),
    "timeout-run-in-probe": ("probe", {"db-port": "{db_silent_port}", "connect-timeout": "20", "timeout": "2"}),
    "timeout-run-in-lock": ("lock", {"command": "migrate", "lock-timeout": "60", "timeout": "2.5"}),
    "timeout-run-in-pull": (
        "pull",
        {"mode": "docker", "command": "showmigrations", "image": "{blackhole_host}:5443/absent/image", "timeout": "3"},
    ),
    "timeout-run-in-command": (
        "command",
        {"command": "migrate", "extra-env": "SAMPLE_MIGRATION_SLEEP=30", "timeout": "4"},
    ),
    "timeout-own-connect-timeout-in-probe": ("probe", {"db-port": "{db_silent_port}", "connect-timeout": "0.5"}),
    "timeout-own-lock-timeout": ("lock", {"command": "migrate", "lock-timeout": "1"}),
}


@pytest.mark.parametrize("scenario", TIMEOUTS)
def test_timeout(scenario: str, action, inputs, lab, fresh_db, before) -> None:
    stage, changes = TIMEOUTS[scenario]
    run_inputs = {**inputs, **{name: fill(value, lab, fresh_db) for name, value in changes.items()}}
    if run_inputs["mode"] == "docker":
        run_inputs = {**with_docker(run_inputs, lab), "image": run_inputs["image"]}
    held = lock_held_by_another(lab, fresh_db) if stage == "lock" else contextlib.nullcontext()
    with held:
        run = action(run_inputs)
    if "timeout" in changes:
        limit = float(changes["timeout"])
        message = f"timed out: the whole run is limited to {limit:g} s (timeout) and the {stage} stage was still"
        hint = "Raise the 'timeout' input"
    elif stage == "lock":
        limit = float(changes["lock-timeout"])
        message = f"the migration lock on database '{fresh_db}' is held by other-deploy"
        hint = "raise lock-timeout"
    else:
        limit = 4 * float(changes["connect-timeout"]) + 1.75  # 4 attempts, backoff between them
        message = f"no database answered at {lab['db_host']}:{lab['db_silent_port']} through the tunnel"
        hint = "Check db-host and db-port"
    assert_clean_failure(
        run, stage, message_contains=message, hint_contains=hint, lab=lab, database=fresh_db, before=before
    )
    assert float(run.outputs["duration-seconds"]) < limit + 1.5, run.outputs
