"""Jump hosts: runner -> jump -> bastion -> database, every hop verified, authenticated and closed.

The lab's jump namespace (tests/lab/up.sh) runs its own sshd at ``jump_host``; the
bastion's second address ``bastion_inner_host`` is reachable only from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    SAMPLE_MIGRATIONS,
    admin_sql,
    applied_rows,
    assert_failed_in,
    finish_action,
    listening,
    processes_mentioning,
    sshd_sessions,
    start_action,
)

from bastion_action import settings, tunnel
from bastion_action.errors import TunnelError
from bastion_action.settings import SSHSettings

SESSION_DRAIN_SECONDS = 5


def jump_sessions(lab: dict[str, Any]) -> list[tuple[int, str]]:
    """The jump sshd's live per-connection processes (``sshd: user [priv]``, ``sshd: user``, preauth)."""
    return sorted(sshd_sessions(lab["jump_ns"]).items())


def wait_for_sessions(lab: dict[str, Any], predicate, timeout: float = SESSION_DRAIN_SECONDS):
    deadline = time.monotonic() + timeout
    sessions = jump_sessions(lab)
    while not predicate(sessions) and time.monotonic() < deadline:
        time.sleep(0.1)
        sessions = jump_sessions(lab)
    return sessions


def assert_chain_closed(lab: dict[str, Any], run=None) -> None:
    """No listener and no SSH session on the jump host outlives a run."""
    if run is not None and run.outputs.get("tunnel-port"):
        assert not listening(int(run.outputs["tunnel-port"])), "the tunnel's listener outlived the run"
    left = wait_for_sessions(lab, lambda sessions: not sessions)
    assert left == [], f"jump sshd still serves a session {SESSION_DRAIN_SECONDS} s after the run: {left}"


@pytest.fixture
def jump_inputs(base_inputs, lab) -> dict[str, str]:
    """Password auth through the jump host; known_hosts lines for both hops."""
    return {
        **base_inputs,
        "ssh-jump-hosts": f"{lab['ssh_password_user']}@{lab['jump_host']}:{lab['jump_port']}",
        "ssh-host": lab["bastion_inner_host"],
        "ssh-known-hosts": lab["jump_known_hosts"] + "\n" + lab["bastion_inner_known_hosts"],
    }


@pytest.fixture
def run_jump(action, lab):
    """Run the action, then prove the hop connections were all closed."""

    def run(inputs: dict[str, str]):
        result = action(inputs)
        assert_chain_closed(lab, result)
        return result

    return run


def test_runner_cannot_reach_the_bastions_inner_address(lab) -> None:
    started = time.monotonic()
    with socket.socket() as sock:
        sock.settimeout(3)
        try:
            sock.connect((lab["bastion_inner_host"], 22))
        except OSError:
            connected = False  # timed out (the jump does not forward) or unreachable
        else:
            connected = True
    assert not connected, "the runner reaches the bastion's inner address directly (transparent proxy?)"
    assert time.monotonic() - started < 4


def test_jump_sshd_is_up_and_is_not_the_bastion(lab) -> None:
    with socket.create_connection((lab["jump_host"], lab["jump_port"]), timeout=3) as sock:
        assert sock.recv(8) == b"SSH-2.0-"
    assert lab["jump_host_fingerprint"] != lab["ssh_host_fingerprint"]
    assert lab["bastion_inner_known_hosts"].split()[1:] == lab["ssh_known_hosts"].split()[1:], "same key"
    assert lab["bastion_inner_known_hosts"].split()[0] == lab["bastion_inner_host"]


def test_probe_through_the_jump_host_with_password_and_known_hosts(run_jump, jump_inputs) -> None:
    run = run_jump(jump_inputs)
    assert run.returncode == 0, run.explain()
    assert run.outputs["result"] == "success"
    assert run.outputs["server-version"].startswith("15")


def test_probe_through_the_jump_host_with_key_and_fingerprints_only(run_jump, jump_inputs, lab) -> None:
    inputs = {
        **jump_inputs,
        "ssh-jump-hosts": f"{lab['ssh_key_user']}@{lab['jump_host']}:{lab['jump_port']}",
        "ssh-user": lab["ssh_key_user"],
        "ssh-password": "",
        "ssh-private-key": Path(lab["ssh_private_key_path"]).read_text(),
        "ssh-known-hosts": "",
        "ssh-host-fingerprint": f"{lab['jump_host_fingerprint']},{lab['ssh_host_fingerprint']}",
    }
    run = run_jump(inputs)
    assert run.returncode == 0, run.explain()
    assert run.outputs["result"] == "success"


def test_hop_user_defaults_to_ssh_user(run_jump, jump_inputs, lab) -> None:
    run = run_jump({**jump_inputs, "ssh-jump-hosts": lab["jump_host"]})
    assert run.returncode == 0, run.explain()


def test_migrate_through_the_jump_host(run_jump, jump_inputs, lab, fresh_db) -> None:
    run = run_jump({**jump_inputs, "command": "migrate"})
    assert run.returncode == 0, run.explain()
    assert run.outputs["result"] == "success"
    assert run.stdout.count("Applying ") == len(SAMPLE_MIGRATIONS)
    assert applied_rows(lab, fresh_db) == len(SAMPLE_MIGRATIONS)


def wrong_line_for(lab: dict[str, Any], address: str) -> str:
    _, keytype, key = lab["ssh_wrong_known_hosts"].split()[:3]
    return f"{address} {keytype} {key}"


def test_wrong_host_key_on_the_middle_hop_names_the_hop(run_jump, jump_inputs, lab) -> None:
    known_hosts = wrong_line_for(lab, lab["jump_host"]) + "\n" + lab["bastion_inner_known_hosts"]
    run = run_jump({**jump_inputs, "ssh-known-hosts": known_hosts})
    assert_failed_in(run, "tunnel")
    error = run.annotations[0]
    assert f"jump host {lab['ssh_password_user']}@{lab['jump_host']}:{lab['jump_port']}" in error, error
    assert "not trusted" in error
    assert lab["jump_host_fingerprint"] in error, "the fingerprint the jump host presented"
    assert "tunnel-port" not in run.outputs


def test_wrong_host_key_on_the_bastion_behind_the_jump_names_the_bastion(run_jump, jump_inputs, lab) -> None:
    known_hosts = lab["jump_known_hosts"] + "\n" + wrong_line_for(lab, lab["bastion_inner_host"])
    run = run_jump({**jump_inputs, "ssh-known-hosts": known_hosts})
    assert_failed_in(run, "tunnel")
    error = run.annotations[0]
    assert f"the bastion {lab['ssh_password_user']}@{lab['bastion_inner_host']}:22" in error, error
    assert lab["ssh_host_fingerprint"] in error


def test_known_hosts_line_for_the_bastions_outer_address_does_not_cover_the_inner_one(run_jump, jump_inputs, lab):
    # The same key, but listed for 10.231.1.2: host keys are matched by the address each hop is reached at.
    run = run_jump({**jump_inputs, "ssh-known-hosts": lab["jump_known_hosts"] + "\n" + lab["ssh_known_hosts"]})
    assert_failed_in(run, "tunnel")
    error = run.annotations[0]
    assert f"the bastion {lab['ssh_password_user']}@{lab['bastion_inner_host']}:22" in error, error


def test_wrong_password_names_the_hop_that_refused(run_jump, jump_inputs, lab) -> None:
    run = run_jump({**jump_inputs, "ssh-password": "definitely-wrong-password"})
    assert_failed_in(run, "tunnel")
    error = run.annotations[0]
    assert "authentication to jump host" in error, error
    assert f"{lab['ssh_password_user']}@{lab['jump_host']}:{lab['jump_port']}" in error


def test_unreachable_next_hop_is_reported_by_the_previous_hop(run_jump, jump_inputs, lab) -> None:
    # From the jump host, nothing listens on the bastion's inner address at port 2222.
    run = run_jump({**jump_inputs, "ssh-port": "2222"})
    assert_failed_in(run, "tunnel")
    error = run.annotations[0]
    assert f"jump host {lab['ssh_password_user']}@{lab['jump_host']}" in error, error
    assert f"could not connect to {lab['bastion_inner_host']}:2222" in error


@pytest.mark.parametrize("value", ["jump:port", "a@b@c", "host:70000", "bad host"])
def test_malformed_jump_hosts_is_a_settings_error(action, jump_inputs, value) -> None:
    run = action({**jump_inputs, "ssh-jump-hosts": value, "connect-timeout": "30"})
    assert_failed_in(run, "settings")
    assert "ssh-jump-hosts" in run.annotations[0]
    assert run.seconds < 5


def test_dropped_jump_hop_fails_the_run_at_once(jump_inputs, lab, fresh_db, tmp_path) -> None:
    inputs = {**jump_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_SLEEP=60"}
    started = time.monotonic()
    process = start_action(inputs, tmp_path)
    deadline = time.monotonic() + 60
    applied = ""
    while "audit.0001_initial" not in applied and time.monotonic() < deadline:
        time.sleep(0.2)
        with contextlib.suppress(RuntimeError):  # until Django has created the table
            applied = admin_sql(lab, "SELECT string_agg(app || '.' || name, ',') FROM django_migrations", fresh_db)
    assert "audit.0001_initial" in applied, "the migration never reached its slow step"
    sessions = jump_sessions(lab)
    assert sessions, "no session on the jump host while the run holds the tunnel"
    dropped_at = time.monotonic()
    for pid, _ in sessions:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    run = finish_action(process, tmp_path, started, timeout=60)
    assert time.monotonic() - dropped_at < 15, run.explain()
    assert_failed_in(run, "tunnel")
    assert processes_mentioning(fresh_db) == [], "the command outlived the dropped tunnel"
    assert_chain_closed(lab, run)


# ---- open_tunnel directly: what the chain holds, and that every exit closes it ----


def ssh_settings(jump_inputs: dict[str, str], **overrides: Any) -> SSHSettings:
    """The SSH settings the action would parse from ``jump_inputs``, with ``overrides``."""
    parsed = settings.parse(jump_inputs, environ={}).ssh
    return dataclasses.replace(parsed, **overrides)


async def wait_sessions_async(lab, predicate, timeout: float = SESSION_DRAIN_SECONDS):
    deadline = time.monotonic() + timeout
    sessions = jump_sessions(lab)
    while not predicate(sessions) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        sessions = jump_sessions(lab)
    return sessions


async def test_open_tunnel_holds_one_connection_per_hop_and_closes_them(lab, jump_inputs) -> None:
    ssh = ssh_settings(jump_inputs)
    credentials = tunnel.load_credentials(ssh)
    async with tunnel.open_tunnel(ssh, credentials, lab["db_host"], lab["db_port"]) as opened:
        assert len(opened.hops) == 1
        assert opened.hops[0].get_extra_info("peername")[0] == lab["jump_host"]
        reader, writer = await asyncio.open_connection("127.0.0.1", opened.port)
        writer.write(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # PostgreSQL SSLRequest
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"S"
        writer.close()
        assert await wait_sessions_async(lab, bool)
        port = opened.port
    assert not listening(port)
    assert await wait_sessions_async(lab, lambda sessions: not sessions) == []


async def test_wait_closed_returns_when_the_jump_hop_drops(lab, jump_inputs) -> None:
    ssh = ssh_settings(jump_inputs)
    async with tunnel.open_tunnel(ssh, tunnel.load_credentials(ssh), lab["db_host"], lab["db_port"]) as opened:
        sessions = jump_sessions(lab)
        assert sessions
        for pid, _ in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(opened.wait_closed(), 10)
    assert await wait_sessions_async(lab, lambda sessions: not sessions) == []


@pytest.mark.parametrize("delay", [0.01, 0.1, 0.25, 0.5])
async def test_cancelling_while_the_chain_connects_leaves_no_session(lab, jump_inputs, delay) -> None:
    ssh = ssh_settings(jump_inputs)
    credentials = tunnel.load_credentials(ssh)

    async def hold() -> None:
        async with tunnel.open_tunnel(ssh, credentials, lab["db_host"], lab["db_port"]):
            await asyncio.sleep(60)

    task = asyncio.ensure_future(hold())
    await asyncio.sleep(delay)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await wait_sessions_async(lab, lambda sessions: not sessions) == []


async def test_connect_timeout_bounds_the_whole_chain(lab, jump_inputs) -> None:
    # The jump host answers at once; the next hop (an unused address on the jump's inner link) never
    # does: the jump's connect waits for ARP. connect-timeout covers the chain, not each hop.
    silent = lab["bastion_inner_host"].rsplit(".", 1)[0] + ".99"
    ssh = ssh_settings(jump_inputs, host=silent, connect_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(TunnelError) as failed:
        async with tunnel.open_tunnel(ssh, tunnel.load_credentials(ssh), lab["db_host"], lab["db_port"]):
            pass
    assert time.monotonic() - started < 3
    assert f"the bastion {lab['ssh_password_user']}@{silent}:22" in failed.value.message
    assert "within 1.5 s" in failed.value.message
    assert await wait_sessions_async(lab, lambda sessions: not sessions) == []
