"""Pure: a run's results -> the step outputs and the markdown step summary."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping

from bastion_action import lint
from bastion_action.errors import ActionError
from bastion_action.migrations import Migration, as_json
from bastion_action.rollback import Irreversible, dumps
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
    "pending": "JSON list of the migrations not applied after the run, in apply order "
    "(showmigrations: app by app, as Django lists them).",
    "migrations": 'JSON of the whole state: {"app": [{"name": ..., "applied": true|false, "state": ...}]}.',
    "rollback-targets": 'migrate: JSON of each app this run changed -> the migration it was at before, or "zero" '
    "({} when it changed nothing); with databases, one such object per database name. "
    "The rollback-targets input of command: rollback takes it as it is.",
    "lock-wait-seconds": "Seconds spent waiting for the migration lock.",
    "databases": "Fan-out: JSON of each database's outputs, by database name.",
    "duration-seconds": "Wall time of the run in decimal seconds.",
    "risk": "lint: none | low | medium | high, the riskiest finding not acknowledged (fan-out: of every "
    "database); empty when no lint ran.",
    "risk-report": 'lint: JSON {"risk", "thresholds", "findings": [{"database", "migration", "operation", "rule", '
    '"risk", "acknowledged", "table", "rows", "bytes", "file", "line", "safer", "docs", ...}], "unread"}.',
    "report-path": "Path of the run's JSON report (schema: docs/report.schema.json), for later steps; "
    "in $RUNNER_TEMP, so a later job needs actions/upload-artifact.",
}

REPORT_SCHEMA_VERSION = 1  # docs/report.schema.json; a version only grows (new keys), a change of meaning is a new one


_DJANGO_COMMANDS = frozenset(command.value for command in Command if command.django)
# Every list output with its count; a list that is None (not known) gives neither.
_LISTS = ("applied", "faked", "unapplied", "pending")


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
    # migrate: each app whose rows changed -> its migration before the run, or "zero" (None: not known)
    rollback_targets: dict[str, str] | None = None
    rollback_asked: dict[str, str] | None = None  # rollback: the targets it was given
    rollback_plan: list[str] | None = None  # rollback: Django's backwards plan, in order (None: not read)
    irreversible: list[Irreversible] = dataclasses.field(default_factory=list)  # rollback: what stopped it
    lint: lint.Report | None = None  # the pending migrations' hazards, weighed; None: no lint ran

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


def known_lists(run: RunResult) -> list[tuple[str, list[str]]]:
    """The known lists of migrations, by output name; an unknown one is left out, so its count reads empty."""
    return [(name, items) for name in _LISTS if (items := getattr(run, name)) is not None]


def _target_outputs(run: RunResult) -> dict[str, object]:
    values: dict[str, object] = {"result": run.result.value, "exit-code": run.process_exit_code}
    values["duration-seconds"] = round(run.duration, 3)
    if run.server is not None:
        values["server-version"] = run.server.version
    for name, items in known_lists(run):
        values |= {f"{name}-count": len(items), name: items}
    if run.lock_wait is not None:
        values["lock-wait-seconds"] = round(run.lock_wait, 3)
    if run.rollback_targets is not None:
        values["rollback-targets"] = run.rollback_targets
    if run.error is not None:
        values["error"] = f"{run.error.stage.value}: {run.error.message}"
    if run.lint is not None:
        values["risk"] = run.lint.risk.value
    return values


def lint_document(run: RunResult) -> dict[str, object] | None:
    """The risk-report output: one database's lint, or every database's findings together (fan-out)."""
    if run.targets is None:
        return None if run.lint is None else lint.document(run.lint, run.database)
    linted = [target for target in run.targets if target.lint is not None]
    if not linted:
        return None
    documents = [lint.document(target.lint, target.database) for target in linted if target.lint is not None]
    first = documents[0]
    return {
        "risk": lint.highest(target.lint.risk for target in linted if target.lint is not None).value,
        "thresholds": first["thresholds"],
        "findings": [finding for document in documents for finding in document["findings"]],  # type: ignore[attr-defined]
        "unread": [item for document in documents for item in document["unread"]],  # type: ignore[attr-defined]
    }


def _lint_outputs(run: RunResult) -> dict[str, str]:
    document = lint_document(run)
    if document is None:
        return {}
    return {"risk": str(document["risk"]), "risk-report": json.dumps(document, separators=(",", ":"))}


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
    rollback_targets = {
        target.database or "": target.rollback_targets for target in targets if target.rollback_targets is not None
    }
    if rollback_targets:
        values["rollback-targets"] = dumps(rollback_targets)
    return values | _lint_outputs(run)


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
    for name, items in known_lists(run):
        values[f"{name}-count"] = str(len(items))
        values[name] = json.dumps(items)
    if run.migrations is not None:
        values["migrations"] = json.dumps(as_json(run.migrations), separators=(",", ":"))
    if run.lock_wait is not None:
        values["lock-wait-seconds"] = f"{run.lock_wait:.3f}"
    if run.rollback_targets is not None:
        values["rollback-targets"] = dumps(run.rollback_targets)
    return values | _lint_outputs(run)


def _error_document(error: ActionError | None) -> dict[str, object] | None:
    if error is None:
        return None
    return {
        "stage": error.stage.value,
        "message": error.message,
        "hint": error.hint,
        "docs": error.docs,
        "problems": [{"message": problem.message, "hint": problem.hint} for problem in error.problems]
        if len(error.problems) > 1
        else [],
    }


def _database_document(run: RunResult) -> dict[str, object]:
    """What one database's run got to: the report's body, and each fan-out entry's."""
    server = run.server
    lists = dict(known_lists(run))
    return {
        "result": run.result.value,
        "exit_code": run.process_exit_code,
        "duration_seconds": round(run.duration, 3),
        "error": _error_document(run.error),
        "server": None
        if server is None
        else {
            "version": server.version,
            "database": server.database,
            "user": server.user,
            "tls": server.ssl,
            "tls_verified": server.ca_verified,
            "verified_as": server.verified_as,
            "round_trip_ms": round(server.rtt_ms, 2),
            "recorded_migrations_at_probe": server.applied_migrations,
        },
        "lock_wait_seconds": None if run.lock_wait is None else round(run.lock_wait, 3),
        "command_exit_code": run.exit_code,
        "failed_migration": run.failed_migration,
        "migrations": {
            "applied": lists.get("applied"),
            "faked": lists.get("faked"),
            "unapplied": lists.get("unapplied"),
            "pending": lists.get("pending"),
            "state": None if run.migrations is None else as_json(run.migrations),
            "seconds": {key: round(seconds, 4) for key, seconds in run.migration_seconds.items()},
            "planned": run.planned,
            "sql": run.sql,
        },
        "rollback_targets": run.rollback_targets,
        "rollback": None
        if run.rollback_asked is None
        else {
            "targets": run.rollback_asked,
            "plan": run.rollback_plan,
            "irreversible": [
                {"migration": item.migration, "operation": item.operation, "description": item.description}
                for item in run.irreversible
            ],
        },
        "stages": {stage: round(seconds, 4) for stage, seconds in run.timings.items()},
        "timeline": [
            {"stage": span.stage, "start": round(span.start, 4), "end": round(span.end, 4)} for span in run.spans
        ],
        "output_tail": run.output_tail,
        "lint": None if run.lint is None else lint.document(run.lint, run.database),
    }


def document(run: RunResult) -> dict[str, object]:
    """The JSON report (docs/report.schema.json): the summary's facts for downstream jobs."""
    context = run.context
    body: dict[str, object] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "action": {
            "name": "bastion-migrate",
            "version": context.version,
            "repository": context.action_repository or None,
            "ref": context.action_ref or None,
        },
        "context": {
            "repository": context.repository or None,
            "sha": context.sha or None,
            "ref": context.ref or None,
            "actor": context.actor or None,
            "workflow": context.workflow or None,
            "run_id": context.run_id or None,
            "run_attempt": context.run_attempt or None,
            "run_url": context.run_url or None,
            "commit_url": context.commit_url or None,
        },
        "environment": run.environment,
        "mode": run.mode,
        "command": run.command,
        "image": None if not run.image else {"reference": run.image, "digest": run.image_digest},
        "tunnel_port": run.tunnel_port,
        "cancelled": run.cancelled,
        "drift": run.drift,
        **_database_document(run),
        "databases": None
        if run.targets is None
        else [{"database": target.database, **_database_document(target)} for target in run.targets],
    }
    return body
