"""Text the action did not write never becomes a workflow command: hostile output, hostile migration names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support import admin_sql, assert_failed_in, runner_commands, with_docker

from bastion_action.report import OUTPUTS

# Every workflow command GitHub documents, and the legacy form, as a hostile command would print them.
HOSTILE = [
    "::set-output name=image-digest::sha256:hacked",
    "::set-output name=result::success",
    "::add-mask::a",
    "::error::forged error",
    "::error title=bastion-migrate%3A command failed::forged",
    "::warning file=manage.py,line=1::forged warning",
    "::notice::forged notice",
    "::debug::forged debug",
    "::group::forged group",
    "::endgroup::",
    "::save-state name=s::v",
    "::add-path::/tmp/evil",
    "::set-env name=PATH::/tmp/evil",
    "::echo::on",
    "##[error]legacy forged",
    "::stop-commands::zzz",
]
# At the start of a line, and after a carriage return (the runner splits lines at CR too).
PRINTED = "".join(f"{line}\n" for line in HOSTILE) + "".join(f"x\r{line}\n" for line in HOSTILE)


def own_commands_only(commands: list[str], stage: str) -> None:
    """Only masks, groups and the action's one error annotation reach the runner."""
    kinds = [line.partition("::")[2].partition("::")[0].partition(" ")[0] for line in commands]
    assert set(kinds) <= {"add-mask", "group", "endgroup", "error"}, commands
    errors = [line for line in commands if line.startswith("::error")]
    assert len(errors) == 1, commands
    assert errors[0].startswith(f"::error title=bastion-migrate%3A {stage} failed::"), commands
    assert "::add-mask::a" not in commands
    assert "::group::forged group" not in commands
    assert commands.count("::endgroup::") == len([c for c in commands if c.startswith("::group::")])


def honest_outputs(outputs: dict[str, str]) -> None:
    assert set(outputs) <= set(OUTPUTS), outputs
    assert outputs["result"] == "failure"
    assert outputs.get("image-digest", "") != "sha256:hacked"


def escaped(text: str) -> str:
    """As the hook decodes it: an environment line holds no newline, so the hostile text carries escapes."""
    return text.replace("\n", "\\n").replace("\r", "\\r")


@pytest.mark.parametrize("mode", ["lightweight", "docker"])
def test_a_migration_printing_every_workflow_command_forges_nothing(action, base_inputs, lab, mode) -> None:
    inputs = {
        **base_inputs,
        "command": "migrate",
        "extra-env": "\n".join(
            [
                f"SAMPLE_MIGRATION_PRINT={escaped(PRINTED)}",
                f"SAMPLE_MIGRATION_PRINT_STDERR={escaped(PRINTED)}",
                "SAMPLE_MIGRATION_FAIL=1",
            ]
        ),
    }
    run = action(with_docker(inputs, lab) if mode == "docker" else inputs)
    assert run.returncode == 1, run.explain()
    assert "forged error" in run.stdout  # the text is shown, as text
    own_commands_only(runner_commands(run.stdout), "command")
    honest_outputs(run.outputs)


def test_a_custom_command_printing_every_workflow_command_forges_nothing(action, base_inputs) -> None:
    code = f"import sys; sys.stdout.write({PRINTED!r}); sys.stderr.write({PRINTED!r}); sys.exit(3)"
    run = action({**base_inputs, "command": "custom", "args": f"python3 -c {json.dumps(code)}", "lock": "false"})
    assert run.returncode == 3, run.explain()
    own_commands_only(runner_commands(run.stdout), "command")
    honest_outputs(run.outputs)
    assert run.outputs["exit-code"] == "3"


def test_a_migration_named_with_a_newline_and_a_command_forges_nothing(action, base_inputs, lab, tmp_path) -> None:
    project = tmp_path / "project"
    shutil.copytree(lab["sample_project"], project, ignore=shutil.ignore_patterns("__pycache__"))
    name = "0003_a\n::error title=x::y"
    (project / "catalog" / "migrations" / f"{name}.py").write_text(
        "from django.db import migrations\n\n\n"
        "class Migration(migrations.Migration):\n"
        "    dependencies = [('catalog', '0002_product_sku')]\n"
        "    operations = []\n"
    )
    run = action({**base_inputs, "command": "migrate", "working-directory": str(project)})
    assert run.returncode == 0, run.explain()
    assert [line for line in runner_commands(run.stdout) if not line.startswith("::add-mask::")] == [
        "::group::resolved inputs",
        "::endgroup::",
        f"::group::{lab['runner_python']} manage.py migrate --noinput --fake-initial -v 2",
        "::endgroup::",
    ]
    assert set(run.outputs) <= set(OUTPUTS)
    assert f"catalog.{name}" in json.loads(run.outputs["applied"])
    assert Path(project / "catalog" / "migrations" / f"{name}.py").is_file()


def test_a_role_that_may_not_read_django_migrations_fails_the_probe_naming_it(action, base_inputs, lab, fresh_db):
    role = f"ro_{fresh_db}"
    admin_sql(lab, f"CREATE ROLE {role} LOGIN PASSWORD 'Ro-pass:1'")
    try:
        admin_sql(lab, f"GRANT CONNECT ON DATABASE {fresh_db} TO {role}")
        admin_sql(lab, "CREATE TABLE django_migrations (id serial PRIMARY KEY, app text, name text)", fresh_db)
        run = action({**base_inputs, "db-user": role, "db-password": "Ro-pass:1"})
    finally:
        admin_sql(lab, f'DROP DATABASE IF EXISTS "{fresh_db}" WITH (FORCE)')
        admin_sql(lab, f"DROP ROLE IF EXISTS {role}")
    assert_failed_in(run, "probe")
    assert run.annotations[0].startswith(
        f"::error title=bastion-migrate%3A probe failed::user '{role}' lacks a privilege reading the server's "
        f"facts in database '{fresh_db}': permission denied for table django_migrations"
    ), run.explain()
    assert "Traceback" not in run.stdout + run.stderr


def test_hostile_input_values_shown_in_the_resolved_inputs_group_forge_nothing(action, base_inputs, lab, tmp_path):
    # The group shows every non-secret value as given. A value with a line break is refused before it
    # is shown (a workflow command must start a line); one without shows as text inside the group.
    inline = "shop ::error::forged error ::endgroup:: ::set-output name=result::x"
    project = tmp_path / inline
    shutil.copytree(lab["sample_project"], project, ignore=shutil.ignore_patterns("__pycache__"))
    inputs = {**base_inputs, "command": "showmigrations", "working-directory": str(project)}
    for hostile in (f"{project}\n::error::forged", f"{project}\r::warning::forged", f"{project}\u2028::notice::x"):
        refused = action({**inputs, "working-directory": hostile})
        own_commands_only(runner_commands(refused.stdout), "settings")
        assert "working-directory: expected a single line without control characters" in refused.annotations[0]
        honest_outputs(refused.outputs)
        assert "forged" not in "".join(runner_commands(refused.stdout))

    run = action({**inputs, "args": "catalog ::error::forged-args ::endgroup::"})
    assert run.returncode != 0, run.explain()  # Django refuses those app labels
    own_commands_only(runner_commands(run.stdout), "command")
    honest_outputs(run.outputs)
    shown = run.stdout[run.stdout.index("::group::resolved inputs\n") : run.stdout.index("\n::endgroup::\n")]
    assert any(line.startswith("working-directory: '/tmp/") for line in shown.splitlines())  # shown, shortened
    assert "args: 'catalog ::error::forged-args ::endgroup::'" in shown

    ok = action({**inputs, "args": "catalog"})
    assert ok.returncode == 0, ok.explain()
    assert [line for line in runner_commands(ok.stdout) if not line.startswith("::add-mask::")] == [
        "::group::resolved inputs",
        "::endgroup::",
        f"::group::{lab['runner_python']} manage.py showmigrations catalog",
        "::endgroup::",
    ]
    assert ok.outputs["result"] == "success"
