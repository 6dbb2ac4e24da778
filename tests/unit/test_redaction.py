"""The masked forms of a secret: whatever Python, JSON or a URL prints of it is one of them."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bastion_action import cli, report
from bastion_action.errors import CommandError
from bastion_action.gha import Console
from bastion_action.redaction import masks, redacted, secret_forms
from bastion_action.report import Result, RunResult

# Letters only: every printer below leaves them as they are, so they fence the secret's printed form.
FENCE = "QxFENCExQ"

PRINTERS: dict[str, Callable[[str], str]] = {
    "str": str,
    "repr": repr,
    "ascii": ascii,
    "json": json.dumps,
    "json-unicode": lambda text: json.dumps(text, ensure_ascii=False),
    "bytes-repr": lambda text: repr(text.encode()),
    "url": lambda text: quote(text, safe=""),
    "url-path": quote,
    "url-form": quote_plus,
    "dict-repr": lambda text: repr({"password": text}),
    "json-object": lambda text: json.dumps({"password": text}),
}

PIECES = ["\\", "'", '"', "%41", "é", "€", "𝄞", "\x01", "\t", " ", "a", "+", "/"]
HOSTILE = st.lists(st.sampled_from(PIECES)).map("".join)


def printed_form(printer: Callable[[str], str], secret: str, before: str, after: str) -> str:
    """What ``printer`` shows of ``secret`` when it sits between ``before`` and ``after`` in a longer string."""
    return printer(f"{before}{FENCE}{secret}{FENCE}{after}").split(FENCE)[1]


@pytest.mark.parametrize("printer", PRINTERS.values(), ids=PRINTERS.keys())
@given(
    secret=st.one_of(st.text(min_size=1), HOSTILE.filter(bool)),
    before=st.sampled_from(["", "'", '"', "'\""]),
    after=st.sampled_from(["", "'", '"']),
)
def test_every_printed_form_is_masked(printer: Callable[[str], str], secret: str, before: str, after: str) -> None:
    assume(secret.strip() and FENCE not in secret)
    assert printed_form(printer, secret, before, after) in secret_forms(secret)


def test_the_hostile_password_of_the_report() -> None:
    password = "a\\b'c\"d%41é€"
    forms = set(secret_forms(password))
    assert {
        password,
        "a%5Cb%27c%22d%2541%C3%A9%E2%82%AC",  # the DSN's
        "a\\\\b\\'c\"d%41é€",  # repr
        "a\\\\b'c\"d%41é€",  # repr inside a string that made Python pick double quotes
        "a\\\\b\\'c\"d%41\\xe9\\u20ac",  # ascii
        "a\\\\b'c\\\"d%41\\u00e9\\u20ac",  # json.dumps
        "a\\\\b'c\\\"d%41é€",  # json.dumps(ensure_ascii=False)
    } <= forms


@given(lines=st.lists(st.text(alphabet=st.characters(exclude_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"))))
def test_each_line_is_masked_unless_too_short(lines: list[str]) -> None:
    value = "\n".join(lines)
    forms = secret_forms(value)
    for line in lines:
        stripped = line.strip()
        if len(stripped) >= 4:
            assert {stripped, repr(stripped)[1:-1], json.dumps(stripped)[1:-1]} <= set(forms)
        else:
            assert stripped not in forms or stripped == value


def test_short_lines_and_blanks_never_mask() -> None:
    forms = secret_forms('{\n  "k": "a\'b",\n  "x": 1\n}\n')
    assert not [form for form in forms if len(form) < 4 or not form.strip()]
    assert secret_forms("  \n ") == []


def test_a_value_read_with_its_trailing_newline_is_masked_without_it() -> None:
    assert "hunter2" in secret_forms("hunter2\n")


def test_masks_are_longest_first_and_include_verbatim() -> None:
    found = masks(["ab'c", None, ""], verbatim=["postgresql://u:ab%27c"])
    assert found[0] == "postgresql://u:ab%27c"
    assert "ab\\'c" in found
    assert list(found) == sorted(found, key=len, reverse=True)


@given(password=HOSTILE.filter(str.strip))
def test_forms_are_registered_before_settings_are_parsed(password: str) -> None:
    """The early masks (before any validation can print) hold every form, from an input or the secrets JSON."""
    early = cli._secret_inputs({"db-password": password}, {})
    assert set(secret_forms(password)) <= set(early)
    from_json = cli._secret_inputs({"environment": "prod", "secrets": json.dumps({"PROD_DB_PASSWORD": password})}, {})
    assert set(secret_forms(password)) <= set(from_json)
    from_environ = cli._secret_inputs({"environment": "prod"}, {"PROD_DB_PASSWORD": password})
    assert set(secret_forms(password)) <= set(from_environ)


def test_a_run_is_redacted_through_and_through_before_it_is_serialised() -> None:
    # A command's error quoting repr() of the password, in a fan-out: the `databases` output is JSON of it,
    # a form no redaction of the finished JSON looks for (a backslash doubled twice).
    password = "my\\pw'x9"
    console = Console({})
    console.mask(masks([password]))
    failed = CommandError(f"exited with code 1: RuntimeError: {password!r}", hint=f"see {password}", exit_code=1)
    one = RunResult("dev", "lightweight", "custom", database="app", result=Result.FAILURE, error=failed)
    run = RunResult("dev", "lightweight", "custom", result=Result.FAILURE, targets=[one], output_tail=[password])
    shown = redacted(run, console.redact)
    serialised = json.dumps(report.outputs(shown)) + report.outputs(shown)["databases"] + str(report.document(shown))
    assert "pw" not in serialised
    assert "***" in report.outputs(shown)["databases"]
    assert shown.result is Result.FAILURE  # members stay members
    assert shown.targets is not None
    error = shown.targets[0].error
    assert isinstance(error, CommandError)
    assert (error.message, error.hint, error.exit_code) == ('exited with code 1: RuntimeError: "***"', "see ***", 1)
    assert run.targets is not None
    assert run.targets[0].error is failed, "the run itself is left as it was"
    assert failed.message.endswith(repr(password))
