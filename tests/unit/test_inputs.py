"""The input table: the sources' tables derive from it, and settings still exports what others import."""

from __future__ import annotations

import pytest

from bastion_action import inputs, redaction, references, settings, sources
from bastion_action.inputs import INPUTS, InputSpec


def test_each_secret_name_fills_one_input() -> None:
    by_prefix = [spec.by_prefix for spec in INPUTS if spec.by_prefix]
    assert len(by_prefix) == len(set(by_prefix)), "two inputs read from the same secret: one would be lost"
    assert len(sources.PREFIXED_SECRETS) == len(by_prefix)
    assert set(sources.REGISTRY_TOKEN_FILLS) <= set(inputs.INPUTS_BY_NAME)


def test_no_secret_input_may_come_from_the_file() -> None:
    assert not [name for name in sources.FILE_KEYS if inputs.INPUTS_BY_NAME[name].secret]
    with pytest.raises(ValueError, match="a secret input cannot be allowed in the config file"):
        InputSpec("api-key", "A key.", secret=True, in_file=True)


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("Settings", settings),
        ("SSHSettings", settings),
        ("DatabaseSettings", settings),
        ("AppSettings", settings),
        ("ImageSettings", settings),
        ("Mode", settings),
        ("Command", settings),
        ("PullPolicy", settings),
        ("parse", settings),
        ("JumpHost", references),
        ("ImageReference", references),
        ("parse_image_reference", references),
        ("INPUTS", inputs),
        ("INPUTS_BY_NAME", inputs),
        ("InputSpec", inputs),
        ("raw_from_environ", inputs),
        ("secret_forms", redaction),
    ],
)
def test_settings_exports_the_names_other_modules_import(name: str, owner: object) -> None:
    assert name in settings.__all__
    assert getattr(settings, name) is getattr(owner, name)
