"""A silently dead link mid-migrate: the server, not the bastion, frees what the dead run held.

The action's SSH connection to the bastion's main sshd (which has no ClientAlive*, like many
real bastions) is silenced in the bastion's namespace, that one connection only. sshd then keeps
the PostgreSQL connections it forwards open for hours; the lock's lease and the command's
``idle_in_transaction_session_timeout`` (through PGOPTIONS) must end them within seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from support import (
    SAMPLE_MIGRATIONS,
    action_locks,
    admin_sql,
    assert_failed_in,
    finish_action,
    owned_databases,
    recorded_migrations,
    sleepers,
    start_action,
    table_locked,
    unique,
    wait_for,
)

Lab = dict[str, Any]

# s: the lock's heartbeat (every third of the lease) may go unanswered before 3 keepalives have; the
# command is stopped at once either way, and the verdict waits for the keepalives: the link is named
KEEPALIVE = 1.0
LEASE = 5  # s: lock-lease-seconds
IDLE_IN_TRANSACTION = 10  # s: db-idle-in-transaction-timeout
SLEEP = 6  # s: the migration's pg_sleep, which ends after the link is cut and the runner is gone


def ss(*argv: str, namespace: str | None = None) -> str:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    return subprocess.run([*prefix, "ss", "-Htnp", *argv], capture_output=True, text=True, check=True).stdout


def ssh_connection_of(pid: int, lab: Lab) -> tuple[str, int]:
    """The runner-side address and port of process ``pid``'s SSH connection to the bastion."""
    for line in ss("state", "established", "dst", f"{lab['bastion_host']}:{lab['ssh_port']}").splitlines():
        if f"pid={pid}," in line:
            local = line.split()[2]
            address, _, port = local.rpartition(":")
            return address, int(port)
    pytest.fail(f"no SSH connection of pid {pid} to the bastion")


def bastion_side(lab: Lab, address: str, port: int) -> str:
    """The bastion's end of that one connection, as ``ss`` shows it (empty once it is gone)."""
    return ss("state", "established", "dst", f"{address}:{port}", namespace=lab["bastion_ns"])


@contextlib.contextmanager
def silenced_connection(lab: Lab, address: str, port: int) -> Iterator[None]:
    """Every packet of that one connection is dropped both ways at the bastion; no other connection is touched."""
    rules = [
        ["INPUT", "-s", address, "-p", "tcp", "--sport", str(port)],
        ["OUTPUT", "-d", address, "-p", "tcp", "--dport", str(port)],
    ]
    iptables = ["ip", "netns", "exec", lab["bastion_ns"], "iptables", "-w"]
    for rule in rules:
        subprocess.run([*iptables, "-I", *rule, "-j", "DROP"], check=True)
    try:
        yield
    finally:
        for rule in rules:
            subprocess.run([*iptables, "-D", *rule, "-j", "DROP"], check=True)


def end_bastion_side(lab: Lab, address: str, port: int) -> None:
    """Left to itself the bastion's sshd would hold the connection for hours: end its session process."""
    for pid in {int(found) for found in re.findall(r"pid=(\d+),", bastion_side(lab, address, port))}:
        subprocess.run(["kill", "-KILL", str(pid)], check=False)


@dataclasses.dataclass
class Cut:
    """The running action's SSH connection, silenced at the bastion: its runner-side address and port."""

    lab: Lab
    address: str = ""
    port: int = 0
    at: float = 0.0  # time.monotonic() of the cut

    def since(self) -> float:
        return time.monotonic() - self.at

    def bastion_holds_on(self) -> None:
        """The bastion still holds the connection: what freed the server's state was not the bastion."""
        assert bastion_side(self.lab, self.address, self.port), "the bastion let go of the connection: nothing proven"


@contextlib.contextmanager
def link_silenced(lab: Lab, process: subprocess.Popen[str], ready: Callable[[], bool], what: str) -> Iterator[Cut]:
    """Once ``ready``, silence the action's connection; on the way out the action is ended if it still
    runs and the bastion's side of the connection (which sshd would keep for hours) is freed."""
    cut = Cut(lab)
    try:
        wait_for(ready, what)
        cut.address, cut.port = ssh_connection_of(process.pid, lab)
        with silenced_connection(lab, cut.address, cut.port):
            cut.at = time.monotonic()
            yield cut
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if cut.port:
            end_bastion_side(lab, cut.address, cut.port)


def command_sessions(lab: Lab, database: str) -> list[str]:
    """The states of the command's own sessions (Django's, not the action's) on ``database``."""
    states = admin_sql(
        lab,
        "SELECT coalesce(state, '?') FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name <> 'bastion-migrate' AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        database,
    )
    return states.splitlines()


def test_a_dead_link_frees_the_lock_and_the_migrations_transaction_on_the_server(
    base_inputs, lab, fresh_db, tmp_path
) -> None:
    inputs = {
        **base_inputs,
        "command": "migrate",
        "ssh-keepalive-interval": f"{KEEPALIVE:g}",
        "lock-lease-seconds": str(LEASE),
        "db-idle-in-transaction-timeout": str(IDLE_IN_TRANSACTION),
        "extra-env": f"SAMPLE_MIGRATION_SLEEP={SLEEP}",
    }
    states: set[str] = set()

    def seen(now: list[str]) -> list[str]:
        states.update(now)
        return now

    def lock_freed() -> bool:
        seen(command_sessions(lab, fresh_db))
        return action_locks(lab, fresh_db) == 0

    started = time.monotonic()
    process = start_action(inputs, tmp_path / "dead")

    def sleeping() -> bool:
        return "active" in command_sessions(lab, fresh_db) and _sleeping(lab, fresh_db)

    with link_silenced(lab, process, sleeping, "pg_sleep") as cut:
        run = finish_action(process, tmp_path / "dead", started, timeout=30)
        noticed = cut.since()
        wait_for(lock_freed, "the lock freed by its lease", LEASE + 30)
        lock_gone = cut.since()
        cut.bastion_holds_on()
        wait_for(lambda: not seen(command_sessions(lab, fresh_db)), "the migration's session ended", 40)
        transaction_gone = cut.since()
        cut.bastion_holds_on()
    assert_failed_in(run, "tunnel")
    assert noticed < 4 * KEEPALIVE + 2, f"noticed after {noticed:.1f} s\n{run.explain()}"
    assert lock_gone < LEASE + 5, f"the lock outlived the link by {lock_gone:.1f} s"
    # The sleep ended with nobody left to send the next statement: idle in its transaction, then ended.
    assert "idle in transaction" in states, states
    timings = f"noticed {noticed:.1f} s, lock gone {lock_gone:.1f} s, transaction gone {transaction_gone:.1f} s"
    # Ended by the server's bound once the sleep was over, not by anything on the bastion's side.
    assert IDLE_IN_TRANSACTION < transaction_gone < SLEEP + IDLE_IN_TRANSACTION + 5, timings
    assert "audit.0002_test_hooks" not in recorded_migrations(lab, fresh_db)  # rolled back with the session

    again = finish_action(
        start_action({**inputs, "extra-env": ""}, tmp_path / "again"), tmp_path / "again", time.monotonic()
    )
    assert again.returncode == 0, again.explain()
    assert again.outputs["result"] == "success"
    assert json.loads(again.outputs["applied"]) == ["audit.0002_test_hooks"]
    assert sorted(recorded_migrations(lab, fresh_db)) == sorted(SAMPLE_MIGRATIONS)


def _sleeping(lab: Lab, database: str) -> bool:
    return len(sleepers(lab, database)) == 1


def test_with_the_default_inputs_the_link_is_named_and_the_lock_freed_within_its_lease(
    base_inputs, lab, fresh_db, tmp_path
) -> None:
    """ssh-keepalive-interval 15 s and lock-lease-seconds 60 s: the heartbeat goes unanswered first, the
    command is stopped, and the verdict waits for the keepalives to name the link."""
    inputs = {**base_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_SLEEP=300"}
    started = time.monotonic()
    process = start_action(inputs, tmp_path / "dead")
    with link_silenced(lab, process, lambda: _sleeping(lab, fresh_db), "pg_sleep") as cut:
        wait_for(lambda: action_locks(lab, fresh_db) == 0, "the lock freed by its lease", 60 + 30)
        lock_gone = cut.since()
        cut.bastion_holds_on()
        run = finish_action(process, tmp_path / "dead", started, timeout=150)
        noticed = cut.since()
    assert_failed_in(run, "tunnel")
    assert lock_gone < 60 + 30, f"lock gone after {lock_gone:.1f} s"
    # The heartbeat (every 20 s) goes unanswered within 40 s; the keepalives declare the link dead within 4 x 15 s.
    assert noticed < 40 + 60 + 5, f"noticed after {noticed:.1f} s\n{run.explain()}"


def test_a_dead_link_mid_rollback_frees_the_lock_and_unapplies_nothing(base_inputs, lab, fresh_db, tmp_path) -> None:
    """A rollback's process is stopped like a migrate's: the link named, the lock freed by its lease,
    the backwards migration's transaction ended by the server and rolled back with it."""
    workdir = tmp_path / "migrate"
    migrated = finish_action(start_action({**base_inputs, "command": "migrate"}, workdir), workdir, time.monotonic())
    assert migrated.returncode == 0, migrated.explain()
    inputs = {
        **base_inputs,
        "command": "rollback",
        "rollback-targets": json.dumps({"audit": "0001_initial"}),
        "ssh-keepalive-interval": f"{KEEPALIVE:g}",
        "lock-lease-seconds": str(LEASE),
        "db-idle-in-transaction-timeout": str(IDLE_IN_TRANSACTION),
        "extra-env": f"SAMPLE_ROLLBACK_SLEEP={SLEEP}",
    }
    started = time.monotonic()
    process = start_action(inputs, tmp_path / "dead")
    with link_silenced(lab, process, lambda: _sleeping(lab, fresh_db), "pg_sleep in the backwards migration") as cut:
        run = finish_action(process, tmp_path / "dead", started, timeout=30)
        noticed = cut.since()
        wait_for(lambda: action_locks(lab, fresh_db) == 0, "the lock freed by its lease", LEASE + 30)
        lock_gone = cut.since()
        wait_for(lambda: not command_sessions(lab, fresh_db), "the rollback's session ended", 40)
        cut.bastion_holds_on()
    assert_failed_in(run, "tunnel")
    assert noticed < 4 * KEEPALIVE + 2, f"noticed after {noticed:.1f} s\n{run.explain()}"
    assert lock_gone < LEASE + 5, f"the lock outlived the link by {lock_gone:.1f} s"
    assert sorted(recorded_migrations(lab, fresh_db)) == sorted(SAMPLE_MIGRATIONS), "the backwards step rolled back"
    assert json.loads(run.outputs.get("unapplied") or "[]") == []

    again = finish_action(
        start_action({**inputs, "extra-env": ""}, tmp_path / "again"), tmp_path / "again", time.monotonic()
    )
    assert again.returncode == 0, again.explain()
    assert json.loads(again.outputs["unapplied"]) == ["audit.0002_test_hooks"]
    assert "audit.0002_test_hooks" not in recorded_migrations(lab, fresh_db)


def _waiting_readers(lab: Lab, database: str) -> int:
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
        "AND application_name <> 'bastion-migrate'"
    )
    return int(admin_sql(lab, query, database))


def _project_processes(lab: Lab) -> list[psutil.Process]:
    """The sample project's Django processes (resident or not) still alive on the runner."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd", "status"]):
        with contextlib.suppress(psutil.Error):
            cmdline = process.info["cmdline"] or []
            ours = "manage.py" in cmdline and process.info["cwd"] == lab["sample_project"]
            if ours and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def test_a_dead_link_mid_fan_out_ends_the_resident_processes_and_names_the_link(base_inputs, lab, tmp_path) -> None:
    """Read-only fan-out: resident Django processes serve the databases in turn. One of them waits on a
    database whose django_migrations is locked when the link goes silent: the run ends on the link,
    within the keepalives, and leaves no Django process behind."""
    with owned_databases(lab, [unique("dl") for _ in range(4)]) as names:
        inputs = {**base_inputs, "db-name": "", "databases": "\n".join(names), "concurrency": "2"}
        workdir = tmp_path / "migrate"
        migrated = finish_action(start_action({**inputs, "command": "migrate"}, workdir), workdir, time.monotonic())
        assert migrated.returncode == 0, migrated.explain()
        before = {process.pid for process in _project_processes(lab)}
        inputs = {**inputs, "command": "showmigrations", "ssh-keepalive-interval": f"{KEEPALIVE:g}"}
        with table_locked(lab, names[1], "django_migrations"):
            started = time.monotonic()
            process = start_action(inputs, tmp_path / "dead")

            def waiting() -> bool:
                return _waiting_readers(lab, names[1]) > 0

            with link_silenced(lab, process, waiting, "the command waiting on the locked table") as cut:
                assert [p for p in _project_processes(lab) if p.pid not in before], "resident processes are seen"
                run = finish_action(process, tmp_path / "dead", started, timeout=30)
                noticed = cut.since()
                left = [p for p in _project_processes(lab) if p.pid not in before]
    assert_failed_in(run, "command")  # fan-out: the run's failure names the databases; each names the link
    assert noticed < 4 * KEEPALIVE + 2, f"noticed after {noticed:.1f} s\n{run.explain()}"
    per_database = json.loads(run.outputs["databases"])
    assert per_database[names[1]]["result"] == "failure"
    assert per_database[names[1]]["error"].startswith("tunnel: the SSH connection to the bastion ended"), per_database
    assert left == [], f"Django processes left behind: {[p.cmdline() for p in left]}"


def test_a_cancel_on_a_silent_link_ends_within_10_s_and_as_a_cancel(base_inputs, lab, fresh_db, tmp_path) -> None:
    """The cleanup's waits on the database (its leftovers, the unlock, the session's close) are bounded by
    seconds, not by connect-timeout: a link gone silent cannot hold a cancelled run past GitHub's grace."""
    inputs = {**base_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_SLEEP=60", "connect-timeout": "20"}
    started = time.monotonic()
    process = start_action(inputs, tmp_path)
    with link_silenced(lab, process, lambda: _sleeping(lab, fresh_db), "pg_sleep"):
        time.sleep(0.5)
        os.kill(process.pid, signal.SIGTERM)
        sent = time.monotonic()
        run = finish_action(process, tmp_path, started, timeout=40)
        took = time.monotonic() - sent
    assert run.returncode == 128 + signal.SIGTERM, run.explain()
    assert took < 10, f"ended {took:.1f} s after SIGTERM\n{run.explain()}"
    assert not [line for line in run.annotations if line.startswith("::error")], run.explain()
    assert "cancelled: the run was stopped and its resources released" in run.stdout
