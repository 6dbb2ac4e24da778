"""The workflow-command writer: escaping, masks first, plain text off GitHub, the outputs file."""

from __future__ import annotations

import errno
import io
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support import runner_commands

from bastion_action import gha
from bastion_action.errors import CommandError, TunnelError
from bastion_action.gha import Console, append_whole

ROOT = Path(__file__).resolve().parents[2]

DELIMITER = re.compile(r"ghadelimiter_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def console(environ: dict[str, str]) -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(environ, stream), stream


def blocks_named(text: str) -> str:
    """The stop-commands tokens as T1, T2, ... in order of appearance; each must be new and unguessable."""
    tokens: list[str] = []
    for token in re.findall(r"::stop-commands::(.*)", text):
        assert re.fullmatch(r"[0-9a-f]{32}", token), token
        assert token not in tokens, "a stop-commands token was used twice"
        tokens.append(token)
    for number, token in enumerate(tokens, start=1):
        text = text.replace(token, f"T{number}")
    return text


def read_output_file(path: Path) -> list[tuple[str, str, str]]:
    """(name, delimiter, value) per record, read the way the runner reads the file on Linux."""
    text = path.read_bytes().decode()  # no newline translation: a CR in a value is data
    records = []
    lines = iter(text.split("\n"))
    for line in lines:
        if not line:
            continue
        name, sep, delimiter = line.partition("<<")
        assert sep, f"not a heredoc record: {line!r}"
        value = []
        for body in lines:
            if body == delimiter:
                break
            value.append(body)
        else:
            pytest.fail(f"output {name}: no closing delimiter")
        records.append((name, delimiter, "\n".join(value)))
    return records


@pytest.mark.parametrize(
    ("text", "data", "prop"),
    [
        pytest.param("plain", "plain", "plain", id="plain"),
        pytest.param("100%", "100%25", "100%25", id="percent"),
        pytest.param("%0A", "%250A", "%250A", id="escape-looking-text-decodes-once"),
        pytest.param("a\r\nb", "a%0D%0Ab", "a%0D%0Ab", id="newlines"),
        pytest.param("x: y, z", "x: y, z", "x%3A y%2C z", id="separators"),
        pytest.param("::warning::x", "::warning::x", "%3A%3Awarning%3A%3Ax", id="command-in-text"),
    ],
)
def test_escaping(text: str, data: str, prop: str) -> None:
    assert gha.escape_data(text) == data
    assert gha.escape_property(text) == prop


@pytest.mark.parametrize(
    ("name", "message", "properties", "line"),
    [
        pytest.param("endgroup", "", None, "::endgroup::", id="bare"),
        pytest.param("add-mask", "a%b", None, "::add-mask::a%25b", id="no-properties-no-space"),
        pytest.param(
            "error",
            "x\ny",
            {"title": "t: 1", "file": "a,b.py"},
            "::error title=t%3A 1,file=a%2Cb.py::x%0Ay",
            id="properties",
        ),
    ],
)
def test_command_line(name: str, message: str, properties: dict[str, str] | None, line: str) -> None:
    assert gha.command(name, message, properties) == line


def test_masks_come_first_and_only_on_github() -> None:
    gh, out = console({"GITHUB_ACTIONS": "true"})
    gh.mask(["hunter2", "line1\nline2", "", "hunter2"])
    gh.line("password is hunter2")
    assert blocks_named(out.getvalue()) == (
        "::add-mask::hunter2\n::add-mask::line1%0Aline2\n::stop-commands::T1\npassword is ***\n"
    )

    local, out = console({})
    local.mask(["hunter2"])
    local.line("password is hunter2")
    assert out.getvalue() == "password is ***\n"


def test_longer_secrets_are_redacted_before_their_parts() -> None:
    gh, out = console({})
    gh.mask(["abc", "xxabcxx"])
    gh.line("xxabcxx abc")
    assert out.getvalue() == "*** ***\n"


def test_every_kind_of_line_is_redacted_on_github(tmp_path: Path) -> None:
    summary = tmp_path / "summary"
    gh, out = console({"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    gh.mask(["s3cret"])
    with gh.group("group s3cret"):
        gh.warning("warn s3cret", title="title s3cret")
    gh.open_group("open s3cret")
    gh.close_group()
    gh.failure(CommandError("exit s3cret", hint="hint s3cret"))
    gh.summary("# s3cret")
    assert out.getvalue() == (
        "::add-mask::s3cret\n"
        "::group::group ***\n"
        "::warning title=title ***::warn ***\n"
        "::endgroup::\n"
        "::group::open ***\n"
        "::endgroup::\n"
        "::error title=bastion-migrate%3A command failed::exit ***%0AHint: hint ***\n"
    )
    assert summary.read_text() == "# ***\n"


def test_annotation_is_escaped_and_names_the_stage() -> None:
    gh, out = console({"GITHUB_ACTIONS": "true"})
    gh.failure(TunnelError("50% lost\r\nreally", hint="do this"))
    assert out.getvalue() == "::error title=bastion-migrate%3A tunnel failed::50%25 lost%0D%0Areally%0AHint: do this\n"


def test_annotation_without_a_hint() -> None:
    gh, out = console({"GITHUB_ACTIONS": "true"})
    gh.failure(TunnelError("refused"))
    assert out.getvalue() == "::error title=bastion-migrate%3A tunnel failed::refused\n"


@pytest.mark.parametrize("github", [True, False], ids=["github", "local"])
def test_warning(github: bool) -> None:
    env = {"GITHUB_ACTIONS": "true"} if github else {}
    gh, out = console(env)
    gh.warning("careful")
    assert out.getvalue() == ("::warning title=bastion-migrate::careful\n" if github else "warning: careful\n")


def test_groups_are_written_without_a_stray_space() -> None:
    gh, out = console({"GITHUB_ACTIONS": "true"})
    with gh.group("manage.py 100%"):
        gh.line("inside")
    assert blocks_named(out.getvalue()) == (
        "::group::manage.py 100%25\n::stop-commands::T1\ninside\n::T1::\n::endgroup::\n"
    )


def test_a_group_ends_when_its_body_raises() -> None:
    gh, out = console({"GITHUB_ACTIONS": "true"})
    with pytest.raises(RuntimeError, match=r"^boom$"), gh.group("step"):
        raise RuntimeError("boom")
    assert out.getvalue() == "::group::step\n::endgroup::\n"


def test_off_github_everything_is_plain_text() -> None:
    local, out = console({})
    local.mask(["s3cret"])
    with local.group("step s3cret"):
        local.line("inside")
    local.open_group("later")
    local.close_group()
    local.failure(TunnelError("refused", hint="check s3cret"))
    local.failure(TunnelError("refused"))
    local.set_outputs({"result": "failure", "exit-code": "1"})
    local.summary("# Done")
    assert out.getvalue() == (
        "== step ***\n"
        "inside\n"
        "== later\n"
        "error [tunnel]: refused\n"
        "hint: check ***\n"
        "error [tunnel]: refused\n"
        "outputs:\n"
        "  result: failure\n"
        "  exit-code: 1\n"
        "# Done\n"
    )


def test_on_github_without_files_outputs_and_summary_print_nothing() -> None:
    gh, out = console({"GITHUB_ACTIONS": "true"})
    gh.set_outputs({"result": "success"})
    gh.summary("# Done")
    assert out.getvalue() == ""


def test_outputs_file_reads_back(tmp_path: Path) -> None:
    output = tmp_path / "output"
    output.write_text("earlier<<EOF\nkept\nEOF\n")
    gh, out = console({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output)})
    gh.mask(["s3cret"])
    values = {
        "result": "success",
        "multi-line": "a\nb\r\nc",
        "trailing-newline": "x\n",
        "empty": "",
        "leak": "the s3cret",
        "looks_like_a_record": "x<<EOF\nEOF",
    }
    gh.set_outputs(values)
    records = read_output_file(output)
    assert [(name, value) for name, _, value in records] == [
        ("earlier", "kept"),
        *((name, value.replace("s3cret", "***")) for name, value in values.items()),
    ]
    delimiters = [delimiter for _, delimiter, _ in records[1:]]
    assert all(DELIMITER.fullmatch(delimiter) for delimiter in delimiters), delimiters
    assert len(set(delimiters)) == len(values), "a fresh delimiter per value"
    assert out.getvalue() == "::add-mask::s3cret\n", "outputs are written to the file only"


def test_output_record_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = uuid.UUID("12345678-1234-4234-8234-123456789abc")
    monkeypatch.setattr(uuid, "uuid4", lambda: fixed)
    assert gha.output_record("applied", '["a.0001"]') == (
        f'applied<<ghadelimiter_{fixed}\n["a.0001"]\nghadelimiter_{fixed}\n'
    )
    with pytest.raises(ValueError, match=r"^output applied: the value contains its own delimiter$"):
        gha.output_record("applied", f"x\nghadelimiter_{fixed}\nevil=1")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("a=b", id="equals"),
        pytest.param("a<<b", id="heredoc"),
        pytest.param("a\nb", id="newline"),
        pytest.param("a b", id="space"),
        pytest.param("1st", id="leading-digit"),
        pytest.param("-x", id="leading-dash"),
    ],
)
def test_bad_output_names_are_refused(name: str, tmp_path: Path) -> None:
    output = tmp_path / "output"
    gh, _ = console({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output)})
    with pytest.raises(ValueError, match=r"^output name .*: expected letters, digits, '-' or '_'"):
        gh.set_outputs({"result": "success", name: "x"})
    assert not output.exists(), "nothing is written when one name is bad"


def test_summary_is_appended(tmp_path: Path) -> None:
    summary = tmp_path / "summary"
    summary.write_text("# earlier step\n")
    gh, _ = console({"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    gh.summary("# this step")
    gh.summary("more")
    assert summary.read_text() == "# earlier step\n# this step\nmore\n"


def test_the_consoles_environ_is_used_and_os_environ_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoy_output, decoy_summary = tmp_path / "decoy-output", tmp_path / "decoy-summary"
    monkeypatch.setenv("GITHUB_OUTPUT", str(decoy_output))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(decoy_summary))
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    before = dict(os.environ)
    output, summary = tmp_path / "output", tmp_path / "summary"
    gh, out = console({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary)})
    gh.mask(["s3cret"])
    gh.set_outputs({"result": "success"})
    gh.summary("# Done")
    assert dict(os.environ) == before
    assert not decoy_output.exists()
    assert not decoy_summary.exists()
    assert [(name, value) for name, _, value in read_output_file(output)] == [("result", "success")]
    assert summary.read_text() == "# Done\n"
    assert out.getvalue() == "::add-mask::s3cret\n"


HOSTILE = [
    "::set-output name=image-digest::sha256:hacked",
    "::add-mask::x",
    "::error::forged",
    "::warning file=a.py,line=1::forged",
    "::notice::forged",
    "::debug::forged",
    "::endgroup::",
    "::group::forged",
    "::stop-commands::zzz",
    "::zzz::",
    "##[error]legacy forged",
    "::save-state name=x::y",
    "::add-path::/tmp/evil",
    "::set-env name=PATH::/tmp/evil",
    "ok\r::error::after a carriage return",
]


def test_untrusted_lines_never_reach_the_runner_as_commands() -> None:
    gh, out = console({"GITHUB_ACTIONS": "true"})
    gh.mask(["s3cret"])
    gh.open_group("migrate")
    for text in HOSTILE:
        gh.line(text)
    gh.mask(["found-later"])  # a mask registered mid-output still reaches the runner
    gh.line("found-later and more")
    gh.close_group()
    gh.failure(CommandError("exit 1", hint="see the summary"))
    gh.end()
    assert runner_commands(out.getvalue()) == [
        "::add-mask::s3cret",
        "::group::migrate",
        "::add-mask::found-later",
        "::endgroup::",
        "::error title=bastion-migrate%3A command failed::exit 1%0AHint: see the summary",
    ]
    assert "*** and more" in out.getvalue()


def test_the_block_is_closed_at_the_end_and_reopened_with_a_new_token() -> None:
    gh, out = console({"GITHUB_ACTIONS": "true"})
    gh.line("a")
    gh.warning("w")
    gh.line("b")
    gh.end()
    gh.end()
    assert blocks_named(out.getvalue()) == (
        "::stop-commands::T1\na\n::T1::\n::warning title=bastion-migrate::w\n::stop-commands::T2\nb\n::T2::\n"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("password is hunt", len("password is "), id="a secret's start at the end is held back"),
        pytest.param("password is hunter2", len("password is hunter2"), id="a whole secret is redacted anyway"),
        pytest.param("no secret here", len("no secret here"), id="nothing to hold back"),
        pytest.param("h", 0, id="a single character may start one"),
        pytest.param("x hunter2 hu", len("x hunter2 "), id="only the end matters"),
    ],
)
def test_safe_length_never_splits_a_secret(text: str, expected: int) -> None:
    gh, _ = console({})
    gh.mask(["hunter2"])
    assert gh.safe_length(text) == expected


def test_safe_length_backs_off_past_secrets_that_overlap() -> None:
    gh, _ = console({})
    gh.mask(["abcd", "cdxy"])
    # "ab" could start abcd; without it "...c" could start cdxy: both are held back
    assert gh.safe_length("zzzabc") == 3
    assert gh.safe_length("zzzc") == 3


def test_the_summary_is_cut_to_what_github_accepts_after_redaction(tmp_path: Path) -> None:
    path = tmp_path / "summary"
    gh, _ = console({"GITHUB_STEP_SUMMARY": str(path)})
    gh.mask(["s3cret-value"])
    row = "| x | " + "y" * 1000 + " s3cret-value |\n"
    gh.summary("# title\n" + row * 2000)
    text = path.read_text(encoding="utf-8")
    assert len(text.encode()) <= gha.SUMMARY_BYTES + 1
    assert text.endswith(
        "**The summary was cut here: GitHub takes at most 1 MiB.** The outputs hold the whole state.\n\n"
    )
    assert "s3cret" not in text
    body = text.split("\n\n**The summary was cut")[0]
    assert all(line == "| x | " + "y" * 1000 + " *** |" for line in body.splitlines()[1:])


_FILE_SIZE_LIMIT_SCRIPT = """
import os, resource, signal, sys
from bastion_action.gha import append_whole
path = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) + 100, resource.RLIM_INFINITY))
try:
    append_whole(path, "x" * 1000)
except OSError as exc:
    print(exc.errno)
"""


def test_an_append_that_cannot_be_whole_is_taken_back(tmp_path: Path) -> None:
    # The kernel writes what fits under the file size limit, then refuses: as a disk that fills mid-write.
    # Half a GITHUB_OUTPUT record would fail the runner's parse of the whole file.
    path = tmp_path / "out"
    path.write_text("kept=1\n")
    done = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT_SCRIPT, str(path)], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == str(errno.EFBIG)
    assert path.read_text() == "kept=1\n"
    append_whole(str(path), "more=2\n")
    assert path.read_text() == "kept=1\nmore=2\n"
