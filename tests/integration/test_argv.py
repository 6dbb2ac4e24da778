"""No secret on any process's command line while a run is in progress (anyone on the runner can read argv)."""

from __future__ import annotations

import time
from pathlib import Path

from support import finish_action, secret_forms, start_action


def command_lines() -> str:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:
                continue
    return "\n".join(lines)


def test_no_secret_in_any_argv_during_a_migration(base_inputs, secrets, lab, tmp_path) -> None:
    inputs = {**base_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_SLEEP=3"}
    started = time.monotonic()
    process = start_action(inputs, tmp_path)
    seen = ""
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        seen += command_lines()
        time.sleep(0.2)
    run = finish_action(process, tmp_path, started)
    assert run.returncode == 0, run.explain()
    assert "manage.py migrate" in seen, "the scan saw the command running"
    leaked = sorted(
        {form for secret in [*secrets, lab["registry_password"]] for form in secret_forms(secret) if form in seen}
    )
    assert not leaked, f"{len(leaked)} secret forms on a command line"
