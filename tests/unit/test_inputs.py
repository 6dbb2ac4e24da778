"""The input table: the sources' tables derive from it, and settings still exports what others import."""

from __future__ import annotations

import json
import re

import pytest

from bastion_action import inputs, redaction, references, settings, sources
from bastion_action.errors import SettingsError
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


SINGLE_LINE = [spec.name for spec in INPUTS if not spec.secret and not spec.multi_line]


def test_the_multi_line_inputs_are_the_texts_lists_and_scripts() -> None:
    multi = {spec.name for spec in INPUTS if spec.multi_line and not spec.secret}
    assert multi == {
        "args",
        "ssh-known-hosts",
        "db-sslrootcert",
        "ssh-host-fingerprint",
        "ssh-jump-hosts",
        "databases",
        "extra-env",
        "rollback-targets",
    }


@pytest.mark.parametrize("name", SINGLE_LINE)
def test_control_characters_in_a_single_line_input_are_named(name: str) -> None:
    with pytest.raises(SettingsError) as info:
        inputs.check_single_line({name: "10.0.0.5\n::error::x"})
    assert info.value.message == (
        f"{name}: expected a single line without control characters, got a newline (U+000A) at position 9"
    )
    assert "::error::" not in str(info.value), "the value is described, never echoed"
    assert name in info.value.hint


@pytest.mark.parametrize(
    ("value", "described"),
    [
        pytest.param("a\rb", "a carriage return (U+000D) at position 2", id="cr"),
        pytest.param("a\tb", "a tab (U+0009) at position 2", id="tab"),
        pytest.param("ab\x1b[31m", "an escape (U+001B) at position 3", id="escape"),
        pytest.param("a\x00", "a NUL (U+0000) at position 2", id="nul"),
        pytest.param("a\x85b", "a control character (U+0085) at position 2", id="c1-next-line"),
        pytest.param("a\u2028b", "a control character (U+2028) at position 2", id="line-separator"),
        pytest.param("a\x7f", "a control character (U+007F) at position 2", id="del"),
    ],
)
def test_each_control_character_is_described(value: str, described: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(f"got {described}")):
        inputs.check_single_line({"db-host": value})


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"db-host": "10.0.0.5\n"}, id="trailing-newline-of-a-pasted-secret"),
        pytest.param({"db-host": "  db.example.com \r\n"}, id="crlf"),
        pytest.param({"db-password": "p\nw\x1b'\\"}, id="secret"),
        pytest.param({"ssh-private-key": "-----BEGIN\nx\n-----END\n"}, id="secret-text"),
        pytest.param({"ssh-known-hosts": "h1 ssh-ed25519 A\nh2 ssh-ed25519 B"}, id="multi-line"),
        pytest.param({"args": "-c '\nprint(1)\n'"}, id="script"),
        pytest.param({"db-host": "bücher.example"}, id="non-ascii"),
    ],
)
def test_what_is_legal(values: dict[str, str]) -> None:
    inputs.check_single_line(values)


def test_a_control_character_from_the_secrets_json_names_the_input_not_the_value() -> None:
    raw = {
        "environment": "uat",
        "secrets": json.dumps({"UAT_HOST": "bastion\n::error::x", "UAT_DB_PASSWORD": "pw\n\x1b"}),
        "ssh-password": "pw",
        "ssh-host-fingerprint": "SHA256:" + "A" * 43,
    }
    with pytest.raises(SettingsError) as info:
        settings.parse(raw, environ={"GITHUB_WORKSPACE": "/nonexistent"})
    first = info.value.problems[0].message
    assert first.startswith("ssh-host: expected a single line without control characters, got a newline")
    assert first.endswith("(from secret UAT_HOST (secrets input))")
    assert "::error::" not in str(info.value)


def test_a_control_character_in_an_explicit_input_is_refused_before_the_sources_are_read() -> None:
    with pytest.raises(SettingsError, match=r"^settings: config-file: expected a single line"):
        settings.parse({"config-file": "a.yml\nb"}, environ={"GITHUB_WORKSPACE": "/nonexistent"})
