"""The worst cases of ending a run: the action SIGKILLed, a command that ignores SIGTERM, a daemon holding its pipe."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from support import finish_action, processes_mentioning, start_action, unique, wait_for, with_docker

ENVIRONMENT_LABEL = "io.github.bastion-migrate.environment"
CANCEL_LIMIT_SECONDS = 10.0  # the contract: SIGTERM ends the run within 10 s


def containers(environment: str, *, running: bool = False) -> list[str]:
    """This run's containers: each test names its own environment, and the label carries it."""
    argv = ["docker", "ps", "-q", "--filter", f"label={ENVIRONMENT_LABEL}={environment}"]
    done = subprocess.run([*argv] if running else [*argv, "-a"], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_a_sigkilled_action_leaves_no_container_once_the_command_has_ended(base_inputs, lab, tmp_path) -> None:
    environment = unique("kill")
    inputs = {
        **with_docker(base_inputs, lab),
        "environment": environment,
        "command": "migrate",
        "extra-env": "SAMPLE_MIGRATION_SLEEP=8",
    }
    process = start_action(inputs, tmp_path)
    try:
        wait_for(lambda: containers(environment, running=True), "the container to start")
        time.sleep(2)
        process.kill()
        killed_at = time.monotonic()
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    # Nothing of the action is left to remove it: the engine does (AutoRemove), once the command has ended.
    wait_for(lambda: not containers(environment), "no container left", 15)
    gone_after = time.monotonic() - killed_at
    # The command's database went with the action's tunnel, so it ended at once rather than after its 6 s left.
    assert gone_after < 5, gone_after


def test_sigterm_ends_a_command_that_ignores_it_and_a_daemon_holding_its_pipe(base_inputs, tmp_path) -> None:
    marker = f"{int(time.time() * 1000) % 100000 + 300000}"
    script = f"trap '' TERM; echo started; setsid sleep {marker} & sleep {marker}"
    inputs = {**base_inputs, "command": "custom", "args": f'sh -c "{script}"'}
    started = time.monotonic()
    process = start_action(inputs, tmp_path)
    wait_for(lambda: len(processes_mentioning(f"sleep\x00{marker}")) >= 2, "the command to start", 30)
    time.sleep(1)
    os.kill(process.pid, signal.SIGTERM)
    cancelled_at = time.monotonic()
    run = finish_action(process, tmp_path, started, timeout=30)
    took = time.monotonic() - cancelled_at
    assert took < CANCEL_LIMIT_SECONDS - 3, f"{took:.2f} s\n{run.explain()}"  # measured: about 3.3 s (grace 3 s)
    assert run.returncode == 128 + signal.SIGTERM, run.explain()
    assert "started" in run.stdout
    assert processes_mentioning(f"sleep\x00{marker}") == [], "a process of the command outlived the run"


def test_sigterm_stops_a_container_whose_command_ignores_it(base_inputs, lab, tmp_path) -> None:
    environment = unique("term")
    inputs = {
        **with_docker(base_inputs, lab),
        "environment": environment,
        "command": "custom",
        "args": "sh -c \"trap '' TERM; echo started; sleep 60\"",
    }
    started = time.monotonic()
    process = start_action(inputs, tmp_path)
    wait_for(lambda: containers(environment, running=True), "the container to start")
    time.sleep(1)
    os.kill(process.pid, signal.SIGTERM)
    cancelled_at = time.monotonic()
    run = finish_action(process, tmp_path, started, timeout=30)
    took = time.monotonic() - cancelled_at
    assert took < CANCEL_LIMIT_SECONDS - 3, f"{took:.2f} s\n{run.explain()}"  # measured: about 3.3 s (grace 3 s)
    assert run.returncode == 128 + signal.SIGTERM, run.explain()
    assert "started" in run.stdout
    assert containers(environment) == [], "the container outlived the run"


def test_a_container_that_ends_at_once_still_gives_its_output_and_exit_code(action, base_inputs, lab) -> None:
    environment = unique("quick")
    inputs = {
        **with_docker(base_inputs, lab),
        "environment": environment,
        "command": "custom",
        "args": 'sh -c "echo quick-output; exit 3"',
    }
    run = action(inputs)
    assert run.outputs["exit-code"] == "3", run.explain()
    assert "quick-output" in run.stdout
    assert containers(environment) == [], "removed by the engine before the action returned"
