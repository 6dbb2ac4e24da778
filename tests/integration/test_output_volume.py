"""Output of any size against the lab: a 50 MB line, a 2 MB line inside a migration, a migration shown as it starts."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    SAMPLE_MIGRATIONS,
    ActionRun,
    admin_sql,
    applied_rows,
    finish_action,
    start_action,
    with_docker,
)

MIB = 1 << 20
BIG_LINE = 50_000_000
CUT = "more characters of this line not shown]"
MODES = [pytest.param("lightweight", id="lightweight"), pytest.param("docker", id="docker")]


def in_mode(inputs: dict[str, str], mode: str, lab: dict[str, Any]) -> dict[str, str]:
    return with_docker(inputs, lab) if mode == "docker" else inputs


def peak_rss(pid: int, peak: list[int]) -> None:
    """Follow the process's own high-water mark (VmHWM) until it exits; its children do not count."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        except OSError:
            return
        if "VmHWM" not in fields:  # a zombie: memory released
            return
        peak[0] = max(peak[0], int(fields["VmHWM"].split()[0]) * 1024)
        time.sleep(0.02)


def measured(inputs: dict[str, str], workdir: Path) -> tuple[ActionRun, int]:
    """Run the action; its result and its peak resident memory in bytes."""
    started = time.monotonic()
    process = start_action(inputs, workdir)
    peak = [0]
    sampler = threading.Thread(target=peak_rss, args=(process.pid, peak))
    sampler.start()
    try:
        run = finish_action(process, workdir, started)
    finally:
        sampler.join()
    return run, peak[0]


@pytest.mark.parametrize("mode", MODES)
def test_a_50_mb_line_runs_to_its_exit_code_in_bounded_memory(base_inputs, lab, secrets, tmp_path, mode) -> None:
    script = f"import sys; print('before'); print('x' * {BIG_LINE}); print('after'); sys.exit(3)"
    inputs = in_mode({**base_inputs, "command": "custom", "args": f'python3 -c "{script}"'}, mode, lab)
    run, peak = measured(inputs, tmp_path)
    print(f"{mode}: peak RSS of the action {peak / MIB:.1f} MiB, {run.seconds:.1f} s")  # noqa: T201 - the figure
    assert run.returncode == 3, run.explain()[:5000]
    assert run.outputs["exit-code"] == "3"
    assert run.outputs["result"] == "failure"
    assert "exited with code 3" in run.summary
    assert f"{BIG_LINE - 64 * 1024:,} {CUT}" in run.stdout
    assert "after" in run.stdout.splitlines()
    assert not run.leaks(secrets)
    assert peak < 200 * MIB, f"{peak / MIB:.1f} MiB"


@pytest.mark.parametrize("mode", MODES)
def test_a_2_mb_line_between_two_ddl_statements_does_not_stop_the_migration(action, base_inputs, lab, mode) -> None:
    inputs = {**base_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_LINE_BYTES=2000000"}
    run = action(in_mode(inputs, mode, lab))
    assert run.returncode == 0, run.explain()[:5000]
    assert run.outputs["result"] == "success"
    assert "audit.0002_test_hooks" in run.outputs["applied"]
    assert applied_rows(lab, base_inputs["db-name"]) == len(SAMPLE_MIGRATIONS)
    for table in ("audit_hook_before_line", "audit_hook_after_line"):
        assert admin_sql(lab, f"SELECT to_regclass('{table}') IS NOT NULL", base_inputs["db-name"]) == "t"
    assert CUT in run.stdout


@pytest.mark.parametrize("mode", MODES)
def test_a_migration_is_shown_as_it_starts_not_when_it_ends(base_inputs, lab, secrets, tmp_path, mode) -> None:
    inputs = in_mode({**base_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_SLEEP=8"}, mode, lab)
    started = time.monotonic()
    process = start_action(inputs, tmp_path)
    assert process.stdout is not None
    lines: list[tuple[float, str]] = []
    sleeping_when_shown = None
    for raw in process.stdout:
        lines.append((time.monotonic(), raw.rstrip("\n")))
        if sleeping_when_shown is None and "Applying audit.0002_test_hooks..." in raw:
            sleeping_when_shown = admin_sql(
                lab,
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'SELECT pg_sleep%'",
                base_inputs["db-name"],
            )
    run = finish_action(process, tmp_path, started)
    ended = time.monotonic()
    text = "\n".join(line for _, line in lines)
    assert run.returncode == 0, text + run.stderr
    assert not ActionRun(0, text, run.stderr, run.outputs, run.summary, 0).leaks(secrets)
    [at] = [index for index, (_, line) in enumerate(lines) if "Applying audit.0002_test_hooks..." in line]
    shown = lines[at][0]
    before, previous = lines[at - 1]  # audit.0001_initial's OK, whole or as a continuation
    assert re.search(r" OK \([0-9.]+s\)$", previous), text  # verbosity 2: Django's own timing after OK
    waited, left = shown - before, ended - shown
    print(f"{mode}: shown {waited:.2f} s after the previous migration ended, {left:.1f} s before the end")  # noqa: T201
    assert waited < 1.0, text
    assert left > 5.0, text  # shown while the 8 s migration ran
    assert sleeping_when_shown == "1", text
    assert any(re.fullmatch(r"… OK \([0-9.]+s\)", line) for _, line in lines), text  # the rest, once it came
