"""action.yml agrees with the code: every input mapped through env:, defaults equal."""

from __future__ import annotations

from pathlib import Path

import yaml

from bastion_action.inputs import INPUTS

ROOT = Path(__file__).resolve().parents[2]
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())


def test_inputs_match_the_code() -> None:
    assert list(ACTION["inputs"]) == [spec.name for spec in INPUTS]
    for spec in INPUTS:
        declared = ACTION["inputs"][spec.name]
        assert declared["description"], spec.name
        assert "default" not in declared, f"{spec.name}: a declared default would hide secrets and the config file"
        if spec.default:
            assert declared["description"].endswith(f" Default: {spec.default}."), spec.name
        assert "${{" not in declared["description"], f"{spec.name}: expressions are not allowed in metadata"


def test_every_input_reaches_the_code_through_env_only() -> None:
    steps = ACTION["runs"]["steps"]
    run_step = next(step for step in steps if step.get("id") == "run")
    assert run_step["env"] == {
        "BASTION_MIGRATE_PYTHON": "${{ steps.setup.outputs.python }}",
        "BASTION_MIGRATE_ACTION_REPOSITORY": "${{ github.action_repository }}",
        "BASTION_MIGRATE_ACTION_REF": "${{ github.action_ref }}",
        **{spec.env: f"${{{{ inputs.{spec.name} }}}}" for spec in INPUTS},
    }
    for step in steps:
        assert "${{" not in step.get("run", ""), f"expression inside run: of {step.get('name')}"


def test_composite_with_a_linux_guard_first() -> None:
    assert ACTION["runs"]["using"] == "composite"
    first = ACTION["runs"]["steps"][0]
    assert first["if"] == "runner.os != 'Linux'"
    assert all("uses" not in step for step in ACTION["runs"]["steps"])
    assert ACTION["branding"]


def test_outputs_come_from_the_run_step() -> None:
    for name, output in ACTION["outputs"].items():
        assert output["value"] == f"${{{{ steps.run.outputs.{name} }}}}"


def test_action_yml_is_rendered_from_the_tables() -> None:
    import importlib.util  # noqa: PLC0415 - loads the script as a module only here

    spec = importlib.util.spec_from_file_location("render", ROOT / "scripts/render_action_yml.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "action.yml").read_text() == module.render(), "run scripts/render_action_yml.py"
