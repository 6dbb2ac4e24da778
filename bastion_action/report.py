"""Pure: a run's results -> the step outputs and the markdown step summary."""

from __future__ import annotations

import dataclasses
import enum

from bastion_action.errors import ActionError

TAIL_LINES = 30

OUTPUTS: dict[str, str] = {
    "result": "success | failure | pending",
    "exit-code": "Exit status of the run: 0 on success, the command's own status when it failed, else 1.",
    "tunnel-port": "Local port of the tunnel on 127.0.0.1.",
    "server-version": "PostgreSQL server version, e.g. 15.14.",
    "image-digest": "Docker mode: registry manifest digest (sha256:...) of the image that ran.",
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

    @property
    def process_exit_code(self) -> int:
        """The action's exit status: 0, the command's own status, or 1."""
        if self.result is Result.SUCCESS:
            return 0
        if self.exit_code:
            return self.exit_code
        return 1


def outputs(run: RunResult) -> dict[str, str]:
    """The step outputs, as strings; only the ones the run got to."""
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
    return values


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary(run: RunResult) -> str:
    """The step summary: what ran where, how it ended, how long each stage took."""
    icon = {Result.SUCCESS: "✅", Result.PENDING: "⏳", Result.FAILURE: "❌"}[run.result]
    env = run.environment or "(no environment)"
    lines = [
        f"### {icon} bastion-migrate: `{run.command}` on {_escape_cell(env)} — {run.result.value}",
        "",
        "| | |",
        "|---|---|",
        f"| environment | {_escape_cell(env)} |",
        f"| mode | {run.mode} |",
        f"| command | `{run.command}` |",
    ]
    if run.server:
        server = run.server
        applied = "no django_migrations table" if server.applied_migrations is None else str(server.applied_migrations)
        described = (
            f"PostgreSQL {server.version}, database `{_escape_cell(server.database)}` as "
            f"`{_escape_cell(server.user)}`, SSL {'on' if server.ssl else 'off'}, {server.rtt_ms:.1f} ms round trip"
        )
        lines += [f"| server | {described} |", f"| recorded migrations before | {applied} |"]
    if run.tunnel_port is not None:
        lines.append(f"| tunnel | 127.0.0.1:{run.tunnel_port} |")
    if run.image:
        lines.append(f"| image | `{run.image}` |")
        lines.append(f"| image digest | `{run.image_digest or 'unknown'}` |")
    if run.exit_code is not None:
        lines.append(f"| command exit code | {run.exit_code} |")
    lines.append(f"| duration | {run.duration:.2f} s |")
    if run.timings:
        lines += ["", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {stage} | {seconds:.3f} |" for stage, seconds in run.timings.items()]
    if run.error:
        lines += ["", f"**Failed in the `{run.error.stage.value}` stage:** {_escape_cell(run.error.message)}"]
        if run.error.hint:
            lines += ["", f"Hint: {run.error.hint}"]
    elif run.cancelled:
        lines += ["", "**Cancelled** before the run ended; every resource was released."]
    if run.output_tail and run.result is not Result.SUCCESS:
        lines += ["", f"<details><summary>Last {len(run.output_tail)} lines of output</summary>", "", "```"]
        lines += [line.replace("```", "'''") for line in run.output_tail]
        lines += ["```", "</details>"]
    return "\n".join(lines) + "\n"
