"""Pure: a run's results -> the step outputs and the markdown step summary."""

from __future__ import annotations

import dataclasses
import enum
import json

from bastion_action.errors import ActionError
from bastion_action.migrations import Migration, State, as_json

TAIL_LINES = 30

OUTPUTS: dict[str, str] = {
    "result": "success | failure | pending",
    "exit-code": "Exit status of the run: 0 on success, the command's own status when it failed, else 1.",
    "tunnel-port": "Local port of the tunnel on 127.0.0.1.",
    "server-version": "PostgreSQL server version, e.g. 15.14.",
    "image-digest": "Docker mode: registry manifest digest (sha256:...) of the image that ran.",
    "applied-count": "Number of migrations this run applied.",
    "applied": 'JSON list of the migrations this run applied, in order: ["app.name", ...].',
    "pending-count": "Number of migrations not applied after the run.",
    "pending": "JSON list of the migrations not applied after the run, in apply order.",
    "migrations": 'JSON of the whole state: {"app": [{"name": ..., "applied": true|false, "state": ...}]}.',
    "lock-wait-seconds": "Seconds spent waiting for the migration lock.",
    "databases": "Fan-out: JSON of each database's outputs, by database name.",
    "duration-seconds": "Wall time of the run in decimal seconds.",
}


class Result(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    PENDING = "pending"


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    version: str
    database: str
    user: str
    ssl: bool
    rtt_ms: float
    applied_migrations: int | None  # rows in django_migrations; None when the table is absent


@dataclasses.dataclass
class RunResult:
    """What the run got to; filled in stage by stage, reported even on failure."""

    environment: str
    mode: str
    command: str
    result: Result = Result.FAILURE
    tunnel_port: int | None = None
    image: str | None = None
    image_digest: str | None = None
    server: ServerInfo | None = None
    exit_code: int | None = None
    duration: float = 0.0
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    error: ActionError | None = None
    cancelled: bool = False
    output_tail: list[str] = dataclasses.field(default_factory=list)
    lock_wait: float | None = None
    applied: list[str] | None = None  # recorded in django_migrations by this run, in order
    pending: list[str] | None = None
    migrations: dict[str, list[Migration]] | None = None
    failed_migration: str | None = None
    drift: list[str] | None = None  # compare mode: how the runner's and the image's views differ
    database: str | None = None  # fan-out: the database this result is for
    targets: list[RunResult] | None = None  # fan-out: one result per database

    @property
    def process_exit_code(self) -> int:
        """The action's exit status: 0, the command's own status, or 1."""
        if self.result is Result.SUCCESS:
            return 0
        if self.exit_code:
            return self.exit_code
        return 1


def _target_outputs(run: RunResult) -> dict[str, object]:
    values: dict[str, object] = {"result": run.result.value, "exit-code": run.process_exit_code}
    values["duration-seconds"] = round(run.duration, 3)
    if run.server is not None:
        values["server-version"] = run.server.version
    if run.applied is not None:
        values |= {"applied-count": len(run.applied), "applied": run.applied}
    if run.pending is not None:
        values |= {"pending-count": len(run.pending), "pending": run.pending}
    if run.lock_wait is not None:
        values["lock-wait-seconds"] = round(run.lock_wait, 3)
    if run.error is not None:
        values["error"] = f"{run.error.stage.value}: {run.error.message}"
    return values


def _fan_out_outputs(run: RunResult) -> dict[str, str]:
    targets = run.targets or []
    values = {
        "result": run.result.value,
        "exit-code": str(run.process_exit_code),
        "duration-seconds": f"{run.duration:.3f}",
        "databases": json.dumps({target.database: _target_outputs(target) for target in targets}),
    }
    if all(target.applied is not None for target in targets):
        values["applied-count"] = str(sum(len(target.applied or []) for target in targets))
    if all(target.pending is not None for target in targets):
        values["pending-count"] = str(sum(len(target.pending or []) for target in targets))
    if run.image_digest:
        values["image-digest"] = run.image_digest
    return values


def outputs(run: RunResult) -> dict[str, str]:
    """The step outputs, as strings; only the ones the run got to."""
    if run.targets is not None:
        return _fan_out_outputs(run)
    values = {
        "result": run.result.value,
        "exit-code": str(run.process_exit_code),
        "duration-seconds": f"{run.duration:.3f}",
    }
    if run.tunnel_port is not None:
        values["tunnel-port"] = str(run.tunnel_port)
    if run.server is not None:
        values["server-version"] = run.server.version
    if run.image_digest:
        values["image-digest"] = run.image_digest
    if run.applied is not None:
        values["applied-count"] = str(len(run.applied))
        values["applied"] = json.dumps(run.applied)
    if run.pending is not None:
        values["pending-count"] = str(len(run.pending))
        values["pending"] = json.dumps(run.pending)
    if run.migrations is not None:
        values["migrations"] = json.dumps(as_json(run.migrations), separators=(",", ":"))
    if run.lock_wait is not None:
        values["lock-wait-seconds"] = f"{run.lock_wait:.3f}"
    return values


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _targets_table(run: RunResult) -> list[str]:
    if run.targets is None:
        return []
    icons = {Result.SUCCESS: "✅", Result.PENDING: "⏳", Result.FAILURE: "❌"}
    lines = [
        "",
        f"**{len(run.targets)} databases** over one SSH connection:",
        "",
        "| database | result | applied | pending | lock wait | seconds | failure |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for target in run.targets:
        applied = "" if target.applied is None else str(len(target.applied))
        pending = "" if target.pending is None else str(len(target.pending))
        wait = "" if target.lock_wait is None else f"{target.lock_wait:.2f}"
        failure = ""
        if target.error is not None:
            failure = f"{target.error.stage.value}: {_escape_cell(target.error.message)}"
        lines.append(
            f"| `{_escape_cell(target.database or '')}` | {icons[target.result]} {target.result.value} | {applied} "
            f"| {pending} | {wait} | {target.duration:.2f} | {failure} |"
        )
    return lines


def _migrations_table(run: RunResult) -> list[str]:
    if run.migrations is None:
        return []
    applied_now = set(run.applied or [])
    pending = len(run.pending or [])
    lines = [
        "",
        f"**Migrations:** {len(applied_now)} applied by this run, {pending} pending.",
        "",
        "| app | migration | state |",
        "|---|---|---|",
    ]
    marks = {State.APPLIED: "✓ applied", State.PENDING: "… pending", State.PARTIAL: "◐ partly applied (squashed)"}
    for app, migrations in run.migrations.items():
        if not migrations:
            lines.append(f"| {_escape_cell(app)} | (no migrations) | |")
        for migration in migrations:
            state = marks[migration.state]
            if migration.key in applied_now:
                state = "✅ applied by this run"
            lines.append(f"| {_escape_cell(app)} | `{_escape_cell(migration.name)}` | {state} |")
    return lines


def _facts(run: RunResult) -> list[str]:
    env = run.environment or "(no environment)"
    rows = [("environment", _escape_cell(env)), ("mode", run.mode), ("command", f"`{run.command}`")]
    if run.server:
        server = run.server
        before = "no django_migrations table" if server.applied_migrations is None else str(server.applied_migrations)
        described = (
            f"PostgreSQL {server.version}, database `{_escape_cell(server.database)}` as "
            f"`{_escape_cell(server.user)}`, SSL {'on' if server.ssl else 'off'}, {server.rtt_ms:.1f} ms round trip"
        )
        rows += [("server", described), ("recorded migrations at probe", before)]
    if run.tunnel_port is not None:
        rows.append(("tunnel", f"127.0.0.1:{run.tunnel_port}"))
    if run.image:
        rows += [("image", f"`{run.image}`"), ("image digest", f"`{run.image_digest or 'unknown'}`")]
    if run.lock_wait is not None:
        rows.append(("migration lock", f"held after {run.lock_wait:.2f} s"))
    if run.exit_code is not None:
        rows.append(("command exit code", str(run.exit_code)))
    if run.failed_migration:
        rows.append(("failed on", f"`{run.failed_migration}`"))
    rows.append(("duration", f"{run.duration:.2f} s"))
    return ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]


def _outcome(run: RunResult) -> list[str]:
    lines = []
    if run.error and run.result is Result.PENDING:
        lines += ["", f"**Pending:** {_escape_cell(run.error.message)}", "", f"Hint: {run.error.hint}"]
    elif run.error:
        lines += ["", f"**Failed in the `{run.error.stage.value}` stage:** {_escape_cell(run.error.message)}"]
        if run.error.hint:
            lines += ["", f"Hint: {run.error.hint}"]
        lines += ["", f"More: bastion-migrate's `{run.error.docs}`."]
    elif run.cancelled:
        lines += ["", "**Cancelled** before the run ended; every resource was released."]
    if run.output_tail and run.result is Result.FAILURE:
        fence = "```"
        lines += ["", f"<details><summary>Last {len(run.output_tail)} lines of output</summary>", "", fence]
        lines += [line.replace(fence, "'''") for line in run.output_tail]
        lines += [fence, "</details>"]
    return lines


def summary(run: RunResult) -> str:
    """The step summary: what ran where, how it ended, the migrations, how long each stage took."""
    icon = {Result.SUCCESS: "✅", Result.PENDING: "⏳", Result.FAILURE: "❌"}[run.result]
    env = run.environment or "(no environment)"
    lines = [f"### {icon} bastion-migrate: `{run.command}` on {_escape_cell(env)} — {run.result.value}", ""]
    lines += _facts(run)
    lines += _targets_table(run)
    lines += _migrations_table(run)
    if run.drift:
        lines += ["", "**The runner and the image differ:**", ""]
        lines += [f"- `{_escape_cell(line)}`" for line in run.drift]
    elif run.drift is not None:
        lines += ["", "Runner and image agree on every migration."]
    if run.timings:
        lines += ["", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {stage} | {seconds:.3f} |" for stage, seconds in run.timings.items()]
    lines += _outcome(run)
    return "\n".join(lines) + "\n"
