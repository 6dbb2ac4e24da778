"""The deploy report against the lab: the summary a reviewer reads and the JSON report, with the GitHub
context a runner sets (tests/support.py GITHUB_CONTEXT), for lightweight, docker and fan-out runs.

Failures in each stage are checked where each stage's failure is made (test_faults.py, test_bad_input.py,
through support.assert_report): the summary leads with the stage, the cause and the fix, links the
action's own troubleshooting doc at its ref, and the JSON report follows its schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from markdown_check import assert_gantt_parses, gantt_blocks
from support import GITHUB_CONTEXT, SAMPLE_MIGRATIONS, assert_report, owned_databases, unique, with_docker

SHA = GITHUB_CONTEXT["GITHUB_SHA"]
CONTEXT_ROWS = (
    f"| commit | [`{SHA[:12]}`](https://github.com/team/shop/commit/{SHA}) on `main` |",
    "| run | [deploy #987654321](https://github.com/team/shop/actions/runs/987654321/attempts/1) by `release-bot` |",
    "| action | bastion-migrate ",
)


def stages(chart: list[str]) -> dict[str, set[str]]:
    """Section -> the stages drawn in it."""
    found: dict[str, set[str]] = {}
    for section, stage, _, _ in assert_gantt_parses(chart):
        found.setdefault(section, set()).add(stage)
    return found


def assert_context(run: Any) -> None:
    for row in CONTEXT_ROWS:
        assert row in run.summary, run.summary
    report = run.report
    assert report["context"]["run_url"] == "https://github.com/team/shop/actions/runs/987654321/attempts/1"
    assert report["context"]["actor"] == "release-bot"
    assert report["action"] == {
        "name": "bastion-migrate",
        "version": report["action"]["version"],
        "repository": "org/bastion-migrate",
        "ref": "v1",
    }
    assert run.stdout.splitlines()[0].endswith(report["action"]["version"]) or report["action"]["version"] in run.stdout


def test_lightweight_migrate_report(action, base_inputs) -> None:
    run = action({**base_inputs, "command": "migrate"})
    assert run.returncode == 0, run.explain()
    report = assert_report(run)
    assert_context(run)
    assert "TLS on, not verified" in run.summary
    # Every migration this run applied has Django's own timing, in the table and in the report.
    seconds = report["migrations"]["seconds"]
    assert sorted(seconds) == sorted(SAMPLE_MIGRATIONS), seconds
    assert report["migrations"]["applied"] == json.loads(run.outputs["applied"])
    assert "**Slowest:** " in run.summary
    assert "| catalog | `0001_initial` | ✅ applied by this run | " in run.summary
    (chart,) = gantt_blocks(run.summary)
    assert stages(chart) == {"run": {"settings", "tunnel", "probe", "lock", "command"}}
    timeline = {span["stage"] for span in report["timeline"]}
    assert timeline == {"settings", "tunnel", "probe", "lock", "command"}
    assert report["server"]["database"] == base_inputs["db-name"]
    assert report["server"]["tls"] is True


def test_docker_migrate_report_shows_the_image_and_the_pull_beside_the_tunnel(action, base_inputs, lab) -> None:
    run = action({**with_docker(base_inputs, lab), "command": "migrate"})
    assert run.returncode == 0, run.explain()
    report = assert_report(run)
    assert_context(run)
    digest = run.outputs["image-digest"]
    assert f"| image digest | `{digest}` |" in run.summary
    assert report["image"] == {"reference": report["image"]["reference"], "digest": digest}
    assert lab["image"] in report["image"]["reference"]
    spans = {span["stage"]: span for span in report["timeline"]}
    assert {"pull", "tunnel", "command"} <= set(spans)
    # The pull starts before the tunnel is up: the overlap is the point, and the chart shows it.
    assert spans["pull"]["start"] < spans["tunnel"]["end"]
    (chart,) = gantt_blocks(run.summary)
    assert "pull" in stages(chart)["run"]
    assert sorted(report["migrations"]["seconds"]) == sorted(SAMPLE_MIGRATIONS)


@pytest.fixture
def two_databases(lab, fresh_db) -> Iterator[list[str]]:
    with owned_databases(lab, [unique("report")]) as (other,):
        yield [fresh_db, other]


def test_fan_out_report_has_a_row_per_database_failures_first(action, base_inputs, two_databases) -> None:
    missing = unique("absent")
    targets = [*two_databases, missing]
    run = action({**base_inputs, "command": "migrate", "db-name": "", "databases": ",".join(targets)})
    assert run.returncode == 1, run.explain()
    report = assert_report(run, "command")
    assert [entry["database"] for entry in report["databases"]] == targets
    by_name = {entry["database"]: entry for entry in report["databases"]}
    assert by_name[missing]["error"]["stage"] == "probe"
    for name in two_databases:
        assert by_name[name]["result"] == "success"
        assert sorted(by_name[name]["migrations"]["seconds"]) == sorted(SAMPLE_MIGRATIONS)
        assert by_name[name]["lock_wait_seconds"] is not None
    table = run.summary[run.summary.index("| database | result |") :]
    assert table.index(f"| `{missing}` | ❌ failure") < table.index(f"| `{two_databases[0]}` | ✅ success")
    (chart,) = gantt_blocks(run.summary)
    drawn = stages(chart)
    assert {f"db_{name}" for name in targets} <= set(drawn)
    assert "command" in drawn[f"db_{two_databases[0]}"]


def test_a_django_configuration_error_reaches_the_annotation(action, base_inputs) -> None:
    run = action({**base_inputs, "command": "migrate", "database-url-env": "OTHER_URL"})
    assert run.returncode == 1, run.explain()
    (error,) = run.annotations
    assert (
        ": django.core.exceptions.ImproperlyConfigured: The DATABASE_URL environment variable is required.%0AHint:"
    ) in error
    report = assert_report(run, "command")
    assert report["output_tail"][-1].startswith("django.core.exceptions.ImproperlyConfigured")


def test_plan_report_shows_each_pending_migration_s_operations_and_sql(action, base_inputs) -> None:
    run = action({**base_inputs, "command": "plan", "show-sql": "true"})
    assert run.returncode == 0, run.explain()
    report = assert_report(run)
    planned = report["migrations"]["planned"]
    assert sorted(planned) == sorted(SAMPLE_MIGRATIONS)
    assert planned["orders.0001_initial"] == ["Create model Status", "Create model Order"]
    assert "**Planned operations** of the 6 pending migration(s), in apply order:" in run.summary
    assert "- `orders.0001_initial`\n  - Create model Status\n  - Create model Order\n" in run.summary
    sql = report["migrations"]["sql"]
    assert sorted(sql) == sorted(SAMPLE_MIGRATIONS)
    assert 'CREATE TABLE "catalog_product"' in sql["catalog.0001_initial"]
    shown = run.summary[run.summary.index("<details><summary>catalog.0001_initial</summary>") :]
    assert 'CREATE TABLE "catalog_product"' in shown[: shown.index("</details>")]
