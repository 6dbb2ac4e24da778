"""The step summary a reviewer reads and the JSON report: structure that renders, context, escaping, schema."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import jsonschema
import pytest
from markdown_check import SCHEMA, assert_gantt_parses, assert_tables_render, gantt_blocks, outside_html_blocks

from bastion_action import report, summary
from bastion_action.errors import CommandError, LockError, SettingsError, SettingsProblems
from bastion_action.migrations import Migration, State
from bastion_action.report import Result, RunContext, RunResult, ServerInfo, Span

SERVER = ServerInfo("15.14", "app", "migrator", ssl=True, rtt_ms=1.25, applied_migrations=3, ca_verified=True)
CONTEXT = RunContext.from_environ(
    {
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "team/shop",
        "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
        "GITHUB_REF_NAME": "main",
        "GITHUB_ACTOR": "alice",
        "GITHUB_RUN_ID": "4242",
        "GITHUB_RUN_ATTEMPT": "2",
        "GITHUB_WORKFLOW": "deploy",
        "BASTION_MIGRATE_ACTION_REPOSITORY": "org/bastion-migrate",
        "BASTION_MIGRATE_ACTION_REF": "v1",
    },
    "1.2.3",
)
HOSTILE = "x|y`z <b>*bold*_u_ [l](https://evil.example) ::error::forged\n| a | b |"


def migrate_run() -> RunResult:
    run = RunResult("prod", "docker", "migrate", result=Result.SUCCESS, server=SERVER, tunnel_port=40001)
    run.context, run.exit_code, run.duration = CONTEXT, 0, 2.5
    run.image, run.image_digest = "registry.example.com/team/app:v1", "sha256:" + "a" * 64
    run.migrations = {
        "catalog": [
            Migration("catalog", "0001_initial", State.APPLIED),
            Migration("catalog", "0002_sku", State.APPLIED),
        ],
        "orders": [Migration("orders", "0001_initial", State.APPLIED)],
    }
    run.applied, run.faked, run.unapplied, run.pending = ["catalog.0002_sku", "orders.0001_initial"], [], [], []
    run.migration_seconds = {"catalog.0002_sku": 0.012, "orders.0001_initial": 1.5}
    run.timings = {"settings": 0.2, "pull": 0.9, "tunnel": 0.3, "probe": 0.1, "lock": 0.01, "command": 1.2}
    run.spans = [
        Span("settings", 0.0, 0.2),
        Span("pull", 0.2, 1.1),
        Span("tunnel", 0.2, 0.5),
        Span("probe", 0.5, 0.6),
        Span("lock", 0.6, 0.61),
        Span("command", 1.1, 2.3),
    ]
    return run


# -- the tests ---------------------------------------------------------------------------------------


def test_a_success_shows_context_migrations_and_the_time_line() -> None:
    text = summary.markdown(migrate_run())
    assert_tables_render(text)
    commit = "[`0123456789ab`](https://github.com/team/shop/commit/0123456789abcdef0123456789abcdef01234567)"
    assert f"| commit | {commit} on `main` |" in text
    assert (
        "| run | [deploy #4242, attempt 2](https://github.com/team/shop/actions/runs/4242/attempts/2) by `alice` |"
        in text
    )
    assert "| action | bastion-migrate 1.2.3 (`org/bastion-migrate@v1`) |" in text
    assert "| image digest | `sha256:" in text
    assert "TLS on, CA verified (name not checked)" in text
    assert "| catalog | `0002_sku` | ✅ applied by this run | 0.012 |" in text
    assert "| catalog | `0001_initial` | ✓ applied | |" in text
    assert "**Slowest:** `orders.0001_initial` (1.500 s), `catalog.0002_sku` (0.012 s)" in text
    (chart,) = gantt_blocks(text)
    tasks = assert_gantt_parses(chart)
    assert ("run", "pull", 200, 1100) in tasks
    assert ("run", "tunnel", 200, 500) in tasks  # the pull and the tunnel overlap, as they ran
    assert text.index("```mermaid") < text.index("| stage | seconds |")


def test_a_failure_leads_with_stage_cause_and_fix_then_output_then_context() -> None:
    run = migrate_run()
    run.result, run.exit_code, run.failed_migration = Result.FAILURE, 1, "orders.0001_initial"
    run.error = CommandError(
        "`manage.py migrate` exited with code 1 while applying orders.0001_initial: "
        "django.core.exceptions.ImproperlyConfigured: no FOO",
        hint="Fix the settings module.",
    )
    run.output_tail = ["Traceback (most recent call last):", "django.core.exceptions.ImproperlyConfigured: no FOO"]
    text = summary.markdown(run)
    assert_tables_render(text)
    failed, fix = text.index("**Failed in the `command` stage:**"), text.index("**Fix:** Fix the settings module.")
    output, context = text.index("Last 2 lines of output"), text.index("| commit |")
    assert failed < fix < output < context
    assert (
        "More: [troubleshooting](https://github.com/org/bastion-migrate/blob/v1/docs/troubleshooting.md#command)."
        in text
    )
    assert "| orders | `0001_initial` | ❌ failed" in text


def test_without_the_action_s_repository_the_docs_are_named_not_linked() -> None:
    run = RunResult("dev", "lightweight", "migrate", error=LockError("held by another run", hint="Wait."))
    text = summary.markdown(run)
    assert "More: bastion-migrate's `docs/troubleshooting.md#lock`." in text


def test_settings_problems_are_listed_each_with_its_fix() -> None:
    problems = [SettingsError("db-port: bad", hint="Fix db-port."), SettingsError("db-host: missing", hint="Set it.")]
    text = summary.markdown(RunResult("dev", "lightweight", "migrate", error=SettingsProblems(problems)))
    assert "**Failed in the `settings` stage:** 2 problems" in text
    assert "- db-port: bad. **Fix:** Fix db-port." in text
    assert "- db-host: missing. **Fix:** Set it." in text


def test_fan_out_lists_failures_first_and_draws_a_row_per_database() -> None:
    run = migrate_run()
    run.targets = []
    for name, result in (("shop_a", Result.SUCCESS), ("shop_b", Result.FAILURE), ("shop-c", Result.PENDING)):
        target = RunResult("prod", "docker", "migrate", result=result, database=name, duration=1.0)
        target.spans = [Span("probe", 0.5, 0.6), Span("command", 0.7, 1.4)]
        target.applied, target.pending, target.faked, target.unapplied = [], [], [], []
        if result is Result.FAILURE:
            target.error = LockError("held | by `x`")
        run.targets.append(target)
    text = summary.markdown(run)
    assert_tables_render(text)
    assert text.index("| `shop_b` | ❌ failure") < text.index("| `shop-c` | ⏳ pending") < text.index("| `shop_a` |")
    sections = {section for section, *_ in assert_gantt_parses(gantt_blocks(text)[0])}
    assert sections == {"run", "db_shop_a", "db_shop_b", "db_shop-c"}


def test_untrusted_text_renders_as_itself_everywhere() -> None:
    run = migrate_run()
    run.context = RunContext.from_environ(
        {
            "GITHUB_REPOSITORY": "team/shop",
            "GITHUB_SHA": "abc",
            "GITHUB_REF_NAME": "x](javascript:alert(1))",
            "GITHUB_ACTOR": HOSTILE,
            "GITHUB_RUN_ID": "1) [click](https://evil.example",
            "BASTION_MIGRATE_ACTION_REPOSITORY": "org/x",
            "BASTION_MIGRATE_ACTION_REF": "v1) [x](https://evil.example",
        },
        "1.2.3",
    )
    run.migrations = {HOSTILE: [Migration(HOSTILE, HOSTILE, State.PENDING)]}
    run.planned = {f"{HOSTILE}.0001": [HOSTILE]}
    run.sql = {"a.0001": "</pre></details><script>x</script>\n" + HOSTILE}
    run.targets = [RunResult("prod", "docker", "migrate", database=HOSTILE, error=LockError(HOSTILE))]
    run.targets[0].spans = [Span("probe", 0, 1)]
    run.error, run.result = CommandError(HOSTILE, hint=HOSTILE), Result.FAILURE
    run.output_tail = [HOSTILE, "</pre>"]
    text = summary.markdown(run)
    assert_tables_render(text)
    for block in gantt_blocks(text):
        assert_gantt_parses(block)
    assert "<b>" not in text
    assert "<script>" not in text
    assert text.count("</pre>") == text.count("<pre>")  # escaped text cannot end a <pre> block early
    markdown = re.sub(r"(?<!\\)(`+)(?!`).*?(?<!`)\1(?!`)", "<code/>", outside_html_blocks(text))  # spans: literal
    assert "](https://evil.example" not in markdown.replace("\\](https://evil.example", "")
    assert "](javascript:" not in markdown.replace("\\](javascript:", "")
    assert "\n::error::" not in text
    assert "*bold*" not in markdown


@pytest.mark.parametrize("shape", ["success", "fan-out", "settings problems", "cancelled"])
def test_the_json_report_follows_its_schema(shape: str) -> None:
    run = migrate_run()
    run.planned, run.sql = {"orders.0002_x": ["Add field y to order"]}, {"orders.0002_x": "ALTER TABLE ..."}
    if shape == "fan-out":
        target = RunResult("prod", "docker", "migrate", database="shop_b", error=LockError("held"))
        target.spans = [Span("lock", 0.5, 0.6)]
        run.targets = [target]
    elif shape == "settings problems":
        run = RunResult("prod", "docker", "migrate", error=SettingsProblems([SettingsError("a"), SettingsError("b")]))
    elif shape == "cancelled":
        run.cancelled, run.result = True, Result.FAILURE
    document: Any = report.document(run)
    jsonschema.validate(document, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert json.loads(json.dumps(document)) == document  # plain JSON, nothing Python-only
    if shape == "success":
        assert document["migrations"]["seconds"] == {"catalog.0002_sku": 0.012, "orders.0001_initial": 1.5}
        assert document["context"]["run_url"] == "https://github.com/team/shop/actions/runs/4242/attempts/2"
        assert document["image"]["digest"] == "sha256:" + "a" * 64
    if shape == "settings problems":
        assert [problem["message"] for problem in document["error"]["problems"]] == ["a", "b"]


def test_the_schema_is_itself_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_spans_of_a_stage_that_touch_are_drawn_as_one_bar() -> None:
    spans = [Span("settings", 0, 0.001), Span("settings", 0.0005, 0.002), Span("pull", 0.1, 0.2)]
    spans += [Span("settings", 0.105, 0.3), Span("tunnel", 0.3, 0.4), Span("tunnel", 0.405, 0.41)]
    assert summary.coalesced(spans) == [
        Span("settings", 0, 0.002),
        Span("pull", 0.1, 0.2),
        Span("settings", 0.105, 0.3),
        Span("tunnel", 0.3, 0.41),
    ]


def test_untrusted_text_gets_no_automatic_link_mention_strike_math_or_hidden_character() -> None:
    # GitHub links a URL, a www. address, an e-mail, a mention or an issue reference in any text, escaped or not.
    raised = "see https://evil.example/login or www.evil.example, me@evil.example, @octocat #1 ~~gone~~ $x^2$"
    hidden = "invoice\u202egnp.exe\x1b[31m\u200bx"
    shown = summary.text(raised + " " + hidden)
    for linked in ("https://", "www.evil", "me@evil", "@octocat", "#1"):
        assert linked not in shown, linked
    assert not re.search(r"(?<!\\)[~$]", shown), "a strike or math delimiter left unescaped"
    assert "\u202e" not in shown
    assert "\x1b" not in shown
    assert "\u200b" not in shown
    assert "invoice(U+202E)gnp.exe(U+001B)\\[31m(U+200B)x" in shown
    # What a reader sees is the same characters (an entity, or a word joiner after the trigger).
    seen = html.unescape(shown).replace("\u2060", "").replace("\\", "")
    assert seen.startswith(raised)
    assert summary.code(hidden) == summary.text(hidden), "a code span would show the hidden characters raw"
    assert summary.code("https://x.example") == "`https://x.example`"  # a code span links nothing
