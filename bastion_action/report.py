"""Pure: a run's results -> the step outputs and the markdown step summary."""

from __future__ import annotations

import dataclasses
import enum
import html
import json
import re
from collections.abc import Mapping

from bastion_action.errors import ActionError
from bastion_action.migrations import Migration, State, as_json
from bastion_action.settings import Command

TAIL_LINES = 30
TAIL_LINE_CHARS = 2000  # a summary line of output (redacted before it gets here); the log has the whole line

OUTPUTS: dict[str, str] = {
    "result": "success | failure | pending",
    "exit-code": "Exit status of the run: 0 on success, the command's own status when it failed, else 1.",
    "tunnel-port": "Local port of the tunnel on 127.0.0.1.",
    "server-version": "PostgreSQL server version, e.g. 15.14.",
    "image-digest": "Docker mode: registry manifest digest (sha256:...) of the image that ran.",
    "applied-count": "Number of migrations this run recorded and ran; empty when the state could not be read.",
    "applied": 'JSON list of the migrations this run recorded and ran (not faked), in order: ["app.name", ...].',
    "faked-count": "Number of migrations this run recorded without running; empty when the state could not be read.",
    "faked": "JSON list of the migrations this run recorded without running (Django's FAKED, e.g. --fake-initial).",
    "unapplied-count": "Number of migrations this run unapplied; empty when the state could not be read.",
    "unapplied": "JSON list of the migrations this run unapplied (rows it removed from django_migrations).",
    "pending-count": "Number of migrations not applied after the run; empty when the state could not be read.",
    "pending": "JSON list of the migrations not applied after the run, in apply order.",
    "migrations": 'JSON of the whole state: {"app": [{"name": ..., "applied": true|false, "state": ...}]}.',
    "lock-wait-seconds": "Seconds spent waiting for the migration lock.",
    "databases": "Fan-out: JSON of each database's outputs, by database name.",
    "duration-seconds": "Wall time of the run in decimal seconds.",
}


_DJANGO_COMMANDS = frozenset(command.value for command in Command if command.django)
# Every list output with its count; a list that is None (not known) gives neither.
_LISTS = ("applied", "faked", "unapplied", "pending")
_LISTS_SHOWN = ("applied", "pending", "faked", "unapplied")  # fan-out table columns


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
    ca_verified: bool = False  # the certificate was checked against db-sslrootcert (verify-ca, verify-full)
    verified_as: str | None = None  # and the name it was checked for (verify-full)

    @property
    def ssl_state(self) -> str:
        """How the summary and the log describe the connection's TLS: what, if anything, was verified."""
        if not self.ssl:
            return "off"
        if self.verified_as:
            return f"on, verified as {self.verified_as}"
        return "on, CA verified (name not checked)" if self.ca_verified else "on, not verified"


@dataclasses.dataclass(frozen=True)
class Span:
    """One stage as it ran: seconds from the run's start (stages overlap: the pull runs beside the tunnel)."""

    stage: str
    start: float
    end: float


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Who ran what where, from the runner's ``GITHUB_*`` variables; empty off GitHub."""

    version: str = ""  # the action's
    server_url: str = ""
    repository: str = ""
    sha: str = ""
    ref: str = ""
    actor: str = ""
    run_id: str = ""
    run_attempt: str = ""
    workflow: str = ""
    action_repository: str = ""  # the action's own repository and ref: links to its docs at the version that ran
    action_ref: str = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], version: str) -> RunContext:
        def get(name: str) -> str:
            return environ.get(name, "").strip()

        return cls(
            version=version,
            server_url=get("GITHUB_SERVER_URL").rstrip("/")
            or ("https://github.com" if get("GITHUB_REPOSITORY") else ""),
            repository=get("GITHUB_REPOSITORY"),
            sha=get("GITHUB_SHA"),
            ref=get("GITHUB_REF_NAME") or get("GITHUB_REF"),
            actor=get("GITHUB_TRIGGERING_ACTOR") or get("GITHUB_ACTOR"),
            run_id=get("GITHUB_RUN_ID"),
            run_attempt=get("GITHUB_RUN_ATTEMPT"),
            workflow=get("GITHUB_WORKFLOW"),
            action_repository=get("BASTION_MIGRATE_ACTION_REPOSITORY") or get("GITHUB_ACTION_REPOSITORY"),
            action_ref=get("BASTION_MIGRATE_ACTION_REF") or get("GITHUB_ACTION_REF"),
        )

    @property
    def commit_url(self) -> str:
        return f"{self.server_url}/{self.repository}/commit/{self.sha}" if self.repository and self.sha else ""

    @property
    def run_url(self) -> str:
        if not (self.repository and self.run_id):
            return ""
        attempt = f"/attempts/{self.run_attempt}" if self.run_attempt else ""
        return f"{self.server_url}/{self.repository}/actions/runs/{self.run_id}{attempt}"

    def docs_url(self, path: str) -> str:
        """``docs/troubleshooting.md#lock`` in the action's own repository at the ref that ran; '' when unknown."""
        if not (self.action_repository and self.action_ref and self.server_url):
            return ""
        return f"{self.server_url}/{self.action_repository}/blob/{self.action_ref}/{path}"


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
    # None: not known (the run did not get there, or the command's output held no state)
    applied: list[str] | None = None  # recorded in django_migrations by this run and run, in order
    faked: list[str] | None = None  # recorded by this run without running
    unapplied: list[str] | None = None  # removed from django_migrations by this run
    pending: list[str] | None = None
    migrations: dict[str, list[Migration]] | None = None
    failed_migration: str | None = None
    drift: list[str] | None = None  # compare mode: how the runner's and the image's views differ
    database: str | None = None  # fan-out: the database this result is for
    targets: list[RunResult] | None = None  # fan-out: one result per database
    context: RunContext = dataclasses.field(default_factory=RunContext)
    spans: list[Span] = dataclasses.field(default_factory=list)  # the stages on the run's time line
    # Per migration (``app.name``): seconds Django took to apply or unapply it (its own timing, verbosity 2)
    migration_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    planned: dict[str, list[str]] | None = None  # plan/check: each pending migration's operations, in order
    sql: dict[str, str] | None = None  # show-sql: each pending or applied migration's SQL (sqlmigrate)

    @property
    def state_unknown(self) -> bool:
        """A Django command ran (or was started) and its migration state could not be read."""
        return self.command in _DJANGO_COMMANDS and self.exit_code is not None and self.pending is None

    @property
    def process_exit_code(self) -> int:
        """The action's exit status: 0, the command's own status, or 1."""
        if self.result is Result.SUCCESS:
            return 0
        if self.exit_code:
            return self.exit_code
        return 1


def _lists(run: RunResult) -> list[tuple[str, list[str]]]:
    """The known lists of migrations, by output name; an unknown one is left out, so its count reads empty."""
    return [(name, items) for name in _LISTS if (items := getattr(run, name)) is not None]


def _target_outputs(run: RunResult) -> dict[str, object]:
    values: dict[str, object] = {"result": run.result.value, "exit-code": run.process_exit_code}
    values["duration-seconds"] = round(run.duration, 3)
    if run.server is not None:
        values["server-version"] = run.server.version
    for name, items in _lists(run):
        values |= {f"{name}-count": len(items), name: items}
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
    for name in _LISTS:
        known = [getattr(target, name) for target in targets]
        if all(items is not None for items in known):
            values[f"{name}-count"] = str(sum(len(items) for items in known))
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
    for name, items in _lists(run):
        values[f"{name}-count"] = str(len(items))
        values[name] = json.dumps(items)
    if run.migrations is not None:
        values["migrations"] = json.dumps(as_json(run.migrations), separators=(",", ":"))
    if run.lock_wait is not None:
        values["lock-wait-seconds"] = f"{run.lock_wait:.3f}"
    return values


# Markdown that untrusted text could use to end a table cell, open a code span or a link, or escape our own.
_INLINE_SPECIALS = re.compile(r"([\\`|\[\]])")
_NOT_IN_CODE = re.compile(r"[<>&|]")


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())  # every line break Python knows, not just \n


def _text(text: str) -> str:
    """Untrusted text as inline Markdown that renders as itself: no HTML, no cell break, no code span, no link."""
    return _INLINE_SPECIALS.sub(r"\\\1", html.escape(_one_line(text), quote=False))


def _code(text: str) -> str:
    """Untrusted text as a code span, fenced longer than any backtick run in it; as escaped text if it cannot be one.

    Inside a code span nothing can be escaped, so text with HTML or table syntax is not put there.
    """
    if not text or _NOT_IN_CODE.search(text) or _one_line(text) != text:
        return _text(text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _clipped(line: str) -> str:
    if len(line) <= TAIL_LINE_CHARS:
        return line
    return f"{line[:TAIL_LINE_CHARS]}… [{len(line) - TAIL_LINE_CHARS:,} more characters]"


def _pre(lines: list[str]) -> list[str]:
    # An HTML <pre> block ends only at </pre>, which escaped text cannot contain: blank lines, fences
    # and </details> in the output stay inside it.
    return ["<pre>", *(html.escape(_one_line(_clipped(line)), quote=False) for line in lines), "</pre>"]


def _targets_table(run: RunResult) -> list[str]:
    if run.targets is None:
        return []
    icons = {Result.SUCCESS: "✅", Result.PENDING: "⏳", Result.FAILURE: "❌"}
    lines = [
        "",
        f"**{len(run.targets)} databases** over one SSH connection:",
        "",
        "| database | result | applied | pending | faked | unapplied | lock wait | seconds | failure |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for target in run.targets:
        known = dict(_lists(target))
        counts = " | ".join(str(len(known[name])) if name in known else "unknown" for name in _LISTS_SHOWN)
        wait = "" if target.lock_wait is None else f"{target.lock_wait:.2f}"
        failure = ""
        if target.error is not None:
            failure = f"{target.error.stage.value}: {_text(target.error.message)}"
        lines.append(
            f"| {_code(target.database or '')} | {icons[target.result]} {target.result.value} | {counts} "
            f"| {wait} | {target.duration:.2f} | {failure} |"
        )
    return lines


def _changes(run: RunResult) -> str:
    """One line: what this run changed and what is left, each count only where it is known."""
    if run.applied is None:
        return (
            "**Migration state: unknown.** No migration state could be read (the command may not have "
            "started, or printed none), so no counts are reported."
        )
    changed = [("applied", run.applied), ("faked", run.faked), ("unapplied", run.unapplied)]
    told = [
        f"{len(items)} {word} by this run"
        for word, items in changed
        if items or (word == "applied" and items is not None)
    ]
    pending = "pending unknown (the state after the run could not be read)"
    if run.pending is not None:
        pending = f"{len(run.pending)} pending"
    return f"**Migrations:** {', '.join(told)}, {pending}."


def _migrations_table(run: RunResult) -> list[str]:
    if run.migrations is None:
        return ["", _changes(run)] if run.state_unknown else []
    lines = ["", _changes(run), "", "| app | migration | state |"]
    lines.append("|---|---|---|")
    marks = {
        State.APPLIED: "✓ applied",
        State.PENDING: "… pending",
        State.PARTIAL: "◐ replaced migrations applied, squash not recorded yet",
    }
    by_this_run = dict.fromkeys(run.applied or [], "✅ applied by this run")
    by_this_run |= dict.fromkeys(run.faked or [], "◌ faked by this run (recorded, not run)")
    by_this_run |= dict.fromkeys(run.unapplied or [], "↩ unapplied by this run")
    for app, migrations in run.migrations.items():
        if not migrations:
            lines.append(f"| {_text(app)} | (no migrations) | |")
        for migration in migrations:
            state = by_this_run.get(migration.key, marks[migration.state])
            lines.append(f"| {_text(app)} | {_code(migration.name)} | {state} |")
    return lines


def _facts(run: RunResult) -> list[str]:
    env = run.environment or "(no environment)"
    rows = [("environment", _text(env)), ("mode", _text(run.mode)), ("command", _code(run.command))]
    if run.server:
        server = run.server
        before = "no django_migrations table" if server.applied_migrations is None else str(server.applied_migrations)
        described = (
            f"PostgreSQL {_text(server.version)}, database {_code(server.database)} as "
            f"{_code(server.user)}, SSL {_text(server.ssl_state)}, {server.rtt_ms:.1f} ms round trip"
        )
        rows += [("server", described), ("recorded migrations at probe", before)]
    if run.tunnel_port is not None:
        rows.append(("tunnel", f"127.0.0.1:{run.tunnel_port}"))
    if run.image:
        rows += [("image", _code(run.image)), ("image digest", _code(run.image_digest or "unknown"))]
    if run.lock_wait is not None:
        rows.append(("migration lock", f"held after {run.lock_wait:.2f} s"))
    if run.exit_code is not None:
        rows.append(("command exit code", str(run.exit_code)))
    if run.failed_migration:
        rows.append(("failed on", _code(run.failed_migration)))
    rows.append(("duration", f"{run.duration:.2f} s"))
    return ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]


def _outcome(run: RunResult) -> list[str]:
    lines = []
    if run.error and run.result is Result.PENDING:
        lines += ["", f"**Pending:** {_text(run.error.message)}", "", f"Hint: {_text(run.error.hint)}"]
    elif run.error and len(run.error.problems) > 1:
        lines += ["", f"**Failed in the `{run.error.stage.value}` stage:** {len(run.error.problems)} problems", ""]
        lines += [f"- {_text(problem.message)}. {_text(problem.hint)}" for problem in run.error.problems]
        lines += ["", f"More: bastion-migrate's `{run.error.docs}`."]
    elif run.error:
        lines += ["", f"**Failed in the `{run.error.stage.value}` stage:** {_text(run.error.message)}"]
        if run.error.hint:
            lines += ["", f"Hint: {_text(run.error.hint)}"]
        lines += ["", f"More: bastion-migrate's `{run.error.docs}`."]
    elif run.cancelled:
        lines += ["", "**Cancelled** before the run ended; every resource was released."]
    if run.output_tail and run.result is Result.FAILURE:
        lines += ["", f"<details><summary>Last {len(run.output_tail)} lines of output</summary>", ""]
        lines += [*_pre(run.output_tail), "", "</details>"]
    return lines


def summary(run: RunResult) -> str:
    """The step summary: what ran where, how it ended, the migrations, how long each stage took."""
    icon = {Result.SUCCESS: "✅", Result.PENDING: "⏳", Result.FAILURE: "❌"}[run.result]
    env = run.environment or "(no environment)"
    lines = [f"### {icon} bastion-migrate: {_code(run.command)} on {_text(env)} — {run.result.value}", ""]
    lines += _facts(run)
    lines += _targets_table(run)
    lines += _migrations_table(run)
    if run.drift:
        lines += ["", "**The runner and the image differ:**", ""]
        lines += [f"- {_code(line)}" for line in run.drift]
    elif run.drift is not None:
        lines += ["", "Runner and image agree on every migration."]
    if run.timings:
        lines += ["", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {stage} | {seconds:.3f} |" for stage, seconds in run.timings.items()]
    lines += _outcome(run)
    return "\n".join(lines) + "\n"
