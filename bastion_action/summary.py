"""Pure: a run's results -> the Markdown step summary a reviewer reads.

Failure first (stage, cause, fix, the command's last lines), then the run's context (commit, run,
actor, image, server), the databases (fan-out), the migrations with Django's own timings, the plan
and SQL on request, and where the time went as a Mermaid ``gantt`` chart with a table beside it.
Every text the action did not write is escaped: it renders as itself, never as Markdown or HTML.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

from bastion_action import lint
from bastion_action.errors import ActionError
from bastion_action.migrations import State
from bastion_action.report import TAIL_LINE_CHARS, Result, RunContext, RunResult, Span, known_lists
from bastion_action.rollback import dumps

TROUBLESHOOTING = "docs/troubleshooting.md"
SLOWEST_SHOWN = 3
SQL_SHOWN_CHARACTERS = 20_000  # per migration in the summary; the JSON report keeps what was collected
OPERATIONS_SHOWN = 50  # per migration
WAY_BACK_SHOWN = 50  # migrations of a rollback's plan

_ICONS = {Result.SUCCESS: "✅", Result.PENDING: "⏳", Result.FAILURE: "❌"}
_LISTS_SHOWN = ("applied", "pending", "faked", "unapplied")  # fan-out table columns

# Markdown that untrusted text could use to end a table cell, open a code span or a link, strike or set math
# (GitHub's ~~ and $), or escape our own.
_INLINE_SPECIALS = re.compile(r"([\\`|\[\]*_~$])")
# Characters that do not show as themselves: controls (an ESC starts a terminal sequence), zero-width ones and
# bidirectional overrides (``evil\u202egnp.exe`` reads as ``evilexe.png``). Shown by their code point instead.
_UNSEEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_NOT_IN_CODE = re.compile(rf"[<>&|]|{_UNSEEN.pattern}")
# What GitHub links in text even when escaped: a URL (scheme://, www.), a mention (@name), a reference (#12).
# A word joiner (or an entity for the URL's punctuation) after the trigger keeps the characters, not the link.
_AUTOLINKED = re.compile(r"(?i)(?<=[a-z])(:)(?=//)|(?<=\bwww)(\.)|(@|#)(?=\w)")
_UNLINKED = {":": "&#58;", ".": "&#46;", "@": "@\u2060", "#": "#\u2060"}
# A link target we build from the runner's variables; anything else (spaces, parentheses, quotes) is not linked.
_SAFE_URL = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]+)?(?:/[A-Za-z0-9._~%!$&'*+,;=:@/#-]*)?")


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())  # every line break Python knows, not just \n


def text(value: str) -> str:
    """Untrusted text as inline Markdown that renders as itself: no HTML, no cell break, no code span, no link
    (nor an automatic one), no character that does not show as itself."""
    shown = _UNSEEN.sub(lambda found: f"(U+{ord(found[0]):04X})", _one_line(value))
    escaped = _INLINE_SPECIALS.sub(r"\\\1", html.escape(shown, quote=False))
    return _AUTOLINKED.sub(lambda found: _UNLINKED[found[0]], escaped)


def code(value: str) -> str:
    """Untrusted text as a code span, fenced longer than any backtick run in it; as escaped text if it cannot be one.

    Inside a code span nothing can be escaped, so text with HTML or table syntax is not put there.
    """
    if not value or _NOT_IN_CODE.search(value) or _one_line(value) != value:
        return text(value)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", value)), default=0) + 1)
    pad = " " if value[0] in "` " or value[-1] in "` " else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def link(label: str, url: str) -> str:
    """``[label](url)`` when the URL is one we can trust to stay a URL; else the label alone."""
    return f"[{label}]({url})" if url and _SAFE_URL.fullmatch(url) and ")" not in url else label


def _clipped(line: str) -> str:
    if len(line) <= TAIL_LINE_CHARS:
        return line
    return f"{line[:TAIL_LINE_CHARS]}… [{len(line) - TAIL_LINE_CHARS:,} more characters]"


def _pre(lines: Iterable[str]) -> list[str]:
    # An HTML <pre> block ends only at </pre>, which escaped text cannot contain: blank lines, fences
    # and </details> in the output stay inside it.
    return ["<pre>", *(html.escape(_one_line(_clipped(line)), quote=False) for line in lines), "</pre>"]


def _docs(context: RunContext, anchor: str) -> str:
    path = f"{TROUBLESHOOTING}#{anchor}"
    url = context.docs_url(path)
    return link("troubleshooting", url) if url else f"bastion-migrate's `{path}`"


# -- what went wrong ------------------------------------------------------------------------------


def _problem(error: ActionError, context: RunContext) -> list[str]:
    lines = [f"**Failed in the `{error.stage.value}` stage:** {text(error.message)}"]
    if error.hint:
        lines += ["", f"**Fix:** {text(error.hint)}"]
    return [*lines, "", f"More: {_docs(context, error.anchor)}."]


def _lead(run: RunResult) -> list[str]:
    """How the run ended, first: the stage, the cause, the fix, then the command's last lines."""
    error, lines = run.error, []
    if error and run.result is Result.PENDING:
        lines += [f"**Pending:** {text(error.message)}", "", f"**Fix:** {text(error.hint)}", ""]
    elif error and len(error.problems) > 1:
        lines += [f"**Failed in the `{error.stage.value}` stage:** {len(error.problems)} problems", ""]
        lines += [f"- {text(problem.message)}. **Fix:** {text(problem.hint)}" for problem in error.problems]
        lines += ["", f"More: {_docs(run.context, error.anchor)}.", ""]
    elif error:
        lines += [*_problem(error, run.context), ""]
    elif run.cancelled:
        lines += ["**Cancelled** before the run ended; every resource was released.", ""]
    if run.output_tail and run.result is Result.FAILURE:
        lines += [f"<details open><summary>Last {len(run.output_tail)} lines of output</summary>", ""]
        lines += [*_pre(run.output_tail), "", "</details>", ""]
    return lines


# -- the run's context ----------------------------------------------------------------------------


def _context_rows(context: RunContext) -> list[tuple[str, str]]:
    rows = []
    if context.sha:
        commit = link(code(context.sha[:12]), context.commit_url)
        rows.append(("commit", commit + (f" on {code(context.ref)}" if context.ref else "")))
    elif context.ref:
        rows.append(("ref", code(context.ref)))
    if context.run_id:
        attempt = f", attempt {text(context.run_attempt)}" if context.run_attempt not in {"", "1"} else ""
        name = text(context.workflow) if context.workflow else "workflow run"
        label = f"{name} #{text(context.run_id)}{attempt}"
        rows.append(("run", link(label, context.run_url) + (f" by {code(context.actor)}" if context.actor else "")))
    elif context.actor:
        rows.append(("actor", code(context.actor)))
    if context.version:
        action = f"bastion-migrate {text(context.version)}"
        if context.action_repository and context.action_ref:
            action += f" ({code(context.action_repository + '@' + context.action_ref)})"
        rows.append(("action", action))
    return rows


def _facts(run: RunResult) -> list[str]:
    rows = [("environment", text(run.environment or "(no environment)"))]
    rows += _context_rows(run.context)
    rows += [("mode", text(run.mode)), ("command", code(run.command))]
    if run.server:
        server = run.server
        before = "no django_migrations table" if server.applied_migrations is None else str(server.applied_migrations)
        described = (
            f"PostgreSQL {text(server.version)}, database {code(server.database)} as "
            f"{code(server.user)}, TLS {text(server.ssl_state)}, {server.rtt_ms:.1f} ms round trip"
        )
        rows += [("server", described), ("recorded migrations at probe", before)]
    if run.tunnel_port is not None:
        rows.append(("tunnel", f"127.0.0.1:{run.tunnel_port}"))
    if run.image:
        rows += [("image", code(run.image)), ("image digest", code(run.image_digest or "unknown"))]
    if run.lock_wait is not None:
        rows.append(("migration lock", f"held after {run.lock_wait:.2f} s"))
    if run.exit_code is not None:
        rows.append(("command exit code", str(run.exit_code)))
    if run.failed_migration:
        rows.append(("failed on", code(run.failed_migration)))
    rows.append(("duration", f"{run.duration:.2f} s"))
    return ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]


# -- the databases (fan-out) ----------------------------------------------------------------------


def _targets_table(run: RunResult) -> list[str]:
    if run.targets is None:
        return []
    order = {Result.FAILURE: 0, Result.PENDING: 1, Result.SUCCESS: 2}
    lines = [
        "",
        f"**{len(run.targets)} databases** over one SSH connection, failures first:",
        "",
        "| database | result | applied | pending | faked | unapplied | lock wait | seconds | failure |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for target in sorted(run.targets, key=lambda target: order[target.result]):
        known = dict(known_lists(target))
        counts = " | ".join(str(len(known[name])) if name in known else "unknown" for name in _LISTS_SHOWN)
        wait = "" if target.lock_wait is None else f"{target.lock_wait:.2f}"
        failure = ""
        if target.error is not None:
            failure = f"{target.error.stage.value}: {text(target.error.message)}"
        lines.append(
            f"| {code(target.database or '')} | {_ICONS[target.result]} {target.result.value} | {counts} "
            f"| {wait} | {target.duration:.2f} | {failure} |"
        )
    return lines


# -- the migrations -------------------------------------------------------------------------------


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


def _slowest(run: RunResult) -> list[str]:
    timed = sorted(run.migration_seconds.items(), key=lambda item: item[1], reverse=True)[:SLOWEST_SHOWN]
    if not timed:
        return []
    named = ", ".join(f"{code(key)} ({seconds:.3f} s)" for key, seconds in timed)
    total = sum(run.migration_seconds.values())
    return ["", f"**Slowest:** {named}; {total:.3f} s in migrations in all, by Django's own timing."]


def _migrations_table(run: RunResult) -> list[str]:
    if run.migrations is None:
        return ["", _changes(run)] if run.state_unknown else []
    timed = bool(run.migration_seconds)
    lines = ["", _changes(run), *_slowest(run), ""]
    if timed:
        lines += ["| app | migration | state | seconds |", "|---|---|---|---:|"]
    else:
        lines += ["| app | migration | state |", "|---|---|---|"]
    marks = {
        State.APPLIED: "✓ applied",
        State.PENDING: "… pending",
        State.PARTIAL: "◐ replaced migrations applied, squash not recorded yet",
    }
    by_this_run = dict.fromkeys(run.applied or [], "✅ applied by this run")
    by_this_run |= dict.fromkeys(run.faked or [], "◌ faked by this run (recorded, not run)")
    by_this_run |= dict.fromkeys(run.unapplied or [], "↩ unapplied by this run")
    if run.failed_migration:
        by_this_run[run.failed_migration] = "❌ failed (rolled back where the database could)"
    for app, migrations in run.migrations.items():
        if not migrations:
            lines.append(f"| {text(app)} | (no migrations) | |" + (" |" if timed else ""))
        for migration in migrations:
            state = by_this_run.get(migration.key, marks[migration.state])
            row = f"| {text(app)} | {code(migration.name)} | {state} |"
            if timed:
                seconds = run.migration_seconds.get(migration.key)
                row += f" {seconds:.3f} |" if seconds is not None else " |"
            lines.append(row)
    return lines


def _planned(run: RunResult) -> list[str]:
    if not run.planned:
        return []
    lines = ["", f"**Planned operations** of the {len(run.planned)} pending migration(s), in apply order:", ""]
    for key, operations in run.planned.items():
        shown = operations[:OPERATIONS_SHOWN]
        more = len(operations) - len(shown)
        lines.append(f"- {code(key)}" + ("" if operations else ": no operations"))
        lines += [f"  - {text(operation)}" for operation in shown]
        if more:
            lines.append(f"  - … and {more} more")
    return lines


def _sql(run: RunResult) -> list[str]:
    if not run.sql:
        return []
    lines = ["", f"**SQL** of {len(run.sql)} migration(s) (`sqlmigrate`):", ""]
    for key, sql in run.sql.items():
        shown = sql[:SQL_SHOWN_CHARACTERS]
        cut = len(sql) - len(shown)
        lines += [f"<details><summary>{html.escape(key)}</summary>", ""]
        lines += _pre(shown.splitlines() or ["(no SQL)"])
        if cut:
            lines += ["", f"Cut here: {cut:,} more characters (the JSON report has what was collected)."]
        lines += ["", "</details>"]
    return lines


# -- rolling back ---------------------------------------------------------------------------------


def fenced(lines: list[str], info: str = "") -> list[str]:
    """A fenced code block of untrusted lines: the fence is longer than any backtick run in them, so none ends it."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{info}", *(_one_line(line) for line in lines), fence]


def yaml_quoted(value: str) -> str:
    """A YAML single-quoted scalar: nothing is special inside but the quote, written twice."""
    return "'" + value.replace("'", "''") + "'"


def rollback_snippet(run: RunResult) -> list[str]:
    """After a migrate that changed something: the exact inputs that undo it (its rollback-targets output)."""
    if run.targets is not None:
        known = {
            target.database or "": target.rollback_targets
            for target in run.targets
            if target.rollback_targets is not None
        }
        if not any(known.values()):
            return []
        value, same = dumps(known), "the same databases and code"
    else:
        if not run.rollback_targets:
            return []
        value, same = dumps(run.rollback_targets), "the same code"
    lead = (
        f"**To roll back** what this run applied, run the action again with {same} and these inputs "
        "(its `rollback-targets` output); nothing is unapplied if a migration on the way back is irreversible:"
    )
    return [
        "",
        lead,
        "",
        *fenced(["command: rollback", f"rollback-targets: {yaml_quoted(value)}"], "yaml"),
    ]


def _way_back(run: RunResult) -> list[str]:
    """A rollback's targets and the way back Django planned, the irreversible steps on it marked."""
    if run.rollback_asked is None:
        return []
    asked = ", ".join(f"{text(app)} → {code(name)}" for app, name in run.rollback_asked.items())
    lines = ["", f"**Rollback targets:** {asked or 'none (nothing to roll back)'}."]
    plan = run.rollback_plan
    if not plan:
        return lines
    blocked = {item.migration: item for item in run.irreversible}
    if blocked:
        lines += ["", "**The way back** crosses an irreversible migration, so nothing was unapplied:", ""]
    else:
        lines += ["", f"**The way back**, as Django planned it: {len(plan)} migration(s) to unapply, in order:", ""]
    for key in plan[:WAY_BACK_SHOWN]:
        item = blocked.get(key)
        mark = f" — ⛔ irreversible: {text(item.operation)}, {text(item.description)}" if item else ""
        lines.append(f"- {code(key)}{mark}")
    if len(plan) > WAY_BACK_SHOWN:
        lines.append(f"- … and {len(plan) - WAY_BACK_SHOWN} more (the JSON report has them all)")
    return lines


_RISK_ICONS = {lint.Risk.NONE: "✅", lint.Risk.LOW: "🟢", lint.Risk.MEDIUM: "🟠", lint.Risk.HIGH: "🔴"}
FINDINGS_SHOWN = 200


def _rule_link(context: RunContext, rule: str) -> str:
    url = context.docs_url(f"{lint.DOCS}#{rule}")
    return link(code(rule), url) if url else code(rule)


def _lint_rows(report: lint.Report, context: RunContext, database: str | None) -> list[str]:
    rows = []
    for finding in report.findings[:FINDINGS_SHOWN]:
        risk = f"{_RISK_ICONS[finding.risk]} {finding.risk.value}"
        if finding.acknowledged:
            risk = f"acknowledged ({finding.risk.value})"
        place = f"{finding.file}:{finding.line}" if finding.file and finding.line else finding.migration
        cells = [
            *([code(database or "")] if database is not None else []),
            f"{code(finding.migration)}<br>{text(place)}",
            text(finding.operation),
            _rule_link(context, finding.rule),
            code(finding.table) if finding.table else "",
            text(lint.scale(finding.facts)),
            risk,
            text(finding.safer),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _lint(run: RunResult) -> list[str]:
    reports = [(target.database, target.lint) for target in run.targets or [] if target.lint is not None]
    fan_out = run.targets is not None
    if run.lint is not None and not fan_out:
        reports = [(None, run.lint)]
    if not reports:
        return []
    risk = lint.highest(report.risk for _, report in reports)
    findings = sum(len(report.findings) for _, report in reports)
    thresholds = reports[0][1].thresholds
    lines = [
        "",
        (
            f"**Lint:** risk {_RISK_ICONS[risk]} **{risk.value}**, {findings} finding(s) "
            f"(rows: medium from {thresholds.rows_medium:,}, high from {thresholds.rows_high:,})."
        ),
    ]
    for _, report in reports:
        lines += [f"- Not judged: {text(item)}" for item in report.unread]
    if not findings:
        return lines
    head = ["database"] if fan_out else []
    head += ["migration", "operation", "rule", "table", "rows / size", "risk", "safer pattern"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for database, report in reports:
        lines += _lint_rows(report, run.context, database if fan_out else None)
    if findings > FINDINGS_SHOWN * len(reports):
        lines += ["", "More findings are in the risk-report output and the JSON report."]
    return lines


# -- where the time went --------------------------------------------------------------------------

_MERMAID_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def mermaid_name(name: str) -> str:
    """A section or task name Mermaid reads as plain words: no ':', '#', ';', quotes or line breaks."""
    return _MERMAID_NAME.sub("_", name)[:60] or "_"


COALESCE_SECONDS = 0.01  # a stage entered again this soon after it ended is drawn as one bar


def coalesced(spans: list[Span]) -> list[Span]:
    """Spans of one stage that touch (the settings checked in steps, a tunnel's set-up and its gate) as one."""
    bars: list[Span] = []
    for span in sorted(spans, key=lambda span: span.start):
        same = next((at for at in range(len(bars) - 1, -1, -1) if bars[at].stage == span.stage), None)
        if same is not None and span.start - bars[same].end <= COALESCE_SECONDS:
            bars[same] = Span(span.stage, bars[same].start, max(bars[same].end, span.end))
        else:
            bars.append(span)
    return bars


def _rows(run: RunResult) -> list[tuple[str, list[Span]]]:
    rows = [("run", coalesced(run.spans))] if run.spans else []
    rows += [(f"db {target.database}", coalesced(target.spans)) for target in run.targets or [] if target.spans]
    return rows


def gantt(run: RunResult) -> list[str]:
    """The stages as they really overlapped, as Mermaid's ``gantt`` (milliseconds from the run's start)."""
    rows = _rows(run)
    if not rows:
        return []
    last = max(span.end for _, spans in rows for span in spans)
    lines = ["```mermaid", "gantt", "    dateFormat x", f"    axisFormat {'%M:%S' if last >= 60 else '%S.%L'}"]  # noqa: PLR2004
    number = 0
    for name, spans in rows:
        lines.append(f"    section {mermaid_name(name)}")
        for span in spans:
            start = round(span.start * 1000)
            end = max(round(span.end * 1000), start + 1)  # a zero-length bar would not be drawn
            lines.append(f"    {mermaid_name(span.stage)} :s{number}, {start}, {end}")
            number += 1
    return [*lines, "```"]


def _timeline(run: RunResult) -> list[str]:
    lines = []
    chart = gantt(run)
    if chart:
        lines += ["", "**Where the time went** (seconds from the start; the pull overlaps the tunnel and probe):", ""]
        lines += chart
    if run.timings:
        lines += ["", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {stage} | {seconds:.3f} |" for stage, seconds in run.timings.items()]
    return lines


def markdown(run: RunResult) -> str:
    """The step summary: how it ended, what ran where, the migrations, where the time went."""
    env = run.environment or "(no environment)"
    lines = [f"### {_ICONS[run.result]} bastion-migrate: {code(run.command)} on {text(env)} — {run.result.value}", ""]
    lines += _lead(run)
    lines += _facts(run)
    lines += _targets_table(run)
    lines += _way_back(run)
    lines += _migrations_table(run)
    lines += rollback_snippet(run)
    lines += _lint(run)
    lines += _planned(run)
    lines += _sql(run)
    if run.drift:
        lines += ["", "**The runner and the image differ:**", ""]
        lines += [f"- {code(line)}" for line in run.drift]
    elif run.drift is not None:
        lines += ["", "Runner and image agree on every migration."]
    lines += _timeline(run)
    return "\n".join(lines) + "\n"
