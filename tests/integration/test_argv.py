"""No secret on any process's command line while a run is in progress (anyone on the runner can read argv)."""

from __future__ import annotations

import time

from support import command_line, finish_action, live_processes, secret_forms, start_action


def command_lines(pid: int) -> str:
    # The action and its whole tree (it is a subreaper: even daemonised children stay in it);
    # other processes on the machine are not the run's and may carry the lab's secrets themselves.
    return "\n".join(command_line(process) for process in live_processes(under=pid))


def test_no_secret_in_any_argv_during_a_migration(base_inputs, secrets, lab, tmp_path) -> None:
    inputs = {**base_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_SLEEP=3"}
    started = time.monotonic()
    process = start_action(inputs, tmp_path)
    seen = ""
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        seen += command_lines(process.pid)
        time.sleep(0.2)
    run = finish_action(process, tmp_path, started)
    assert run.returncode == 0, run.explain()
    assert "manage.py migrate" in seen, "the scan saw the command running"
    leaked = sorted(
        {form for secret in [*secrets, lab["registry_password"]] for form in secret_forms(secret) if form in seen}
    )
    assert not leaked, f"{len(leaked)} secret forms on a command line"
