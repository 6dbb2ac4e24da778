"""Outputs that tell the truth against the lab: faked, unapplied, an unreadable state, squashes; a hostile summary."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from support import SAMPLE_MIGRATIONS, admin_sql, recorded_migrations

SQUASH = """from django.db import migrations, models


class Migration(migrations.Migration):

    replaces = [("catalog", "0001_initial"), ("catalog", "0002_product_sku")]

    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Product",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=200)),
                ("price", models.DecimalField(decimal_places=2, max_digits=10)),
                ("sku", models.CharField(blank=True, default="", max_length=32)),
            ],
        ),
    ]
"""


def test_migrations_recorded_without_running_are_faked_not_applied(action, base_inputs, lab, fresh_db) -> None:
    first = action({**base_inputs, "command": "migrate", "args": "catalog 0001"})
    assert first.returncode == 0, first.explain()
    admin_sql(lab, "DELETE FROM django_migrations WHERE app = 'catalog' AND name = '0001_initial'", fresh_db)

    run = action({**base_inputs, "command": "migrate"})  # fake-initial finds catalog's table
    assert run.returncode == 0, run.explain()
    assert "Applying catalog.0001_initial... FAKED" in run.stdout
    assert json.loads(run.outputs["faked"]) == ["catalog.0001_initial"]
    assert run.outputs["faked-count"] == "1"
    applied = json.loads(run.outputs["applied"])
    assert "catalog.0001_initial" not in applied
    assert sorted(applied) == sorted(SAMPLE_MIGRATIONS[1:])
    assert run.outputs["applied-count"] == "5"
    assert run.outputs["unapplied"] == "[]"
    assert run.outputs["pending-count"] == "0"
    assert "| catalog | `0001_initial` | ◌ faked by this run (recorded, not run) |" in run.summary
    assert "5 applied by this run, 1 faked by this run, 0 pending" in run.summary


def test_unapplying_reports_the_removed_rows_as_unapplied(action, base_inputs, lab, fresh_db) -> None:
    full = action({**base_inputs, "command": "migrate"})
    assert full.returncode == 0, full.explain()
    before = recorded_migrations(lab, fresh_db)

    run = action({**base_inputs, "command": "migrate", "args": "catalog 0001"})
    assert run.returncode == 0, run.explain()
    assert "Unapplying catalog.0002_product_sku... OK" in run.stdout
    after = recorded_migrations(lab, fresh_db)
    unapplied = json.loads(run.outputs["unapplied"])
    assert unapplied == [key for key in before if key not in after]
    assert "catalog.0002_product_sku" in unapplied
    assert run.outputs["unapplied-count"] == str(len(unapplied))
    assert run.outputs["applied"] == "[]"
    assert run.outputs["faked"] == "[]"
    assert set(unapplied) <= set(json.loads(run.outputs["pending"])), "what was unapplied is pending now"
    assert "| catalog | `0002_product_sku` | ↩ unapplied by this run |" in run.summary
    assert "✅ applied by this run" not in run.summary
    assert "**Migrations:** 0 applied by this run, 2 unapplied by this run" in run.summary


@pytest.mark.parametrize(
    ("command", "change"),
    [
        pytest.param("showmigrations", {"python": "/bin/false"}, id="showmigrations-python-false"),
        pytest.param("migrate", {"python": "/bin/false"}, id="migrate-python-false"),
        pytest.param("plan", {"manage-py": "no_such_manage.py"}, id="plan-no-manage-py"),
    ],
)
def test_a_command_that_never_started_leaves_the_counts_empty(action, base_inputs, command, change) -> None:
    run = action({**base_inputs, "command": command, **change})
    assert run.returncode != 0, run.explain()
    assert run.outputs["result"] == "failure"
    for name in ("applied", "faked", "unapplied", "pending"):
        assert run.outputs.get(f"{name}-count", "") == "", f"{name}-count must be empty, not 0\n{run.explain()}"
        assert run.outputs.get(name, "") == ""
    assert "migrations" not in run.outputs
    assert "**Migration state: unknown.**" in run.summary
    assert "0 pending" not in run.summary


def test_a_squash_left_to_finish_recording_reads_the_same_in_every_command(action, base_inputs, lab, tmp_path) -> None:
    full = action({**base_inputs, "command": "migrate"})  # the replaced migrations, un-squashed
    assert full.returncode == 0, full.explain()
    project = tmp_path / "project"
    shutil.copytree(lab["sample_project"], project, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "catalog" / "migrations" / "0001_squashed_0002_product_sku.py").write_text(SQUASH)
    squashed = {**base_inputs, "working-directory": str(project)}

    show = action({**squashed, "command": "showmigrations"})
    assert show.returncode == 0, show.explain()
    state = json.loads(show.outputs["migrations"])
    squash = {"name": "0001_squashed_0002_product_sku", "applied": False, "state": "partial"}
    assert state["catalog"] in ([squash], [{**squash, "applied": True, "state": "applied"}]), "4.2+ [-], 3.2 [X]"
    assert show.outputs["pending-count"] == "0"
    for command in ("plan", "check"):
        run = action({**squashed, "command": command})
        assert run.returncode == 0, run.explain()
        assert run.outputs["result"] == "success"
        assert run.outputs["pending-count"] == "0"


def test_hostile_output_cannot_reshape_the_summary(action, base_inputs, tmp_path) -> None:
    hostile = tmp_path / "hostile.txt"
    hostile.write_text("</pre></details>\n```\n\n| x | y |\n<img src=x onerror=alert(1)>\n::error::forged\n")
    run = action({**base_inputs, "command": "custom", "args": f"sh -c 'cat {hostile}; exit 1'"})
    assert run.returncode == 1, run.explain()
    summary = run.summary
    assert "<img" not in summary
    assert "&lt;img src=x onerror=alert(1)&gt;" in summary
    assert "&lt;/pre&gt;&lt;/details&gt;" in summary
    assert summary.count("</details>") == 1
    assert summary.count("</pre>") == 1
    assert re.search(r"^<pre>$", summary, re.MULTILINE)
