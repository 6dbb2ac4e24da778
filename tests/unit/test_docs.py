"""The user documentation agrees with the code: docs/inputs.md with action.yml, links with the files they name.

docs/inputs.md is written by hand (grouped, with validation notes), so this test is what keeps
it from drifting: every input and output of action.yml has its row, in order, with the default
of ``inputs.INPUTS``, the 🔒 mark of a secret input, and where else the input may come from.
Every relative link in README.md and docs/*.md must name an existing file, and a link into
docs/troubleshooting.md (where every error message points) an existing heading.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from bastion_action import sources
from bastion_action.inputs import INPUTS, INPUTS_BY_NAME, InputSpec
from bastion_action.report import OUTPUTS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
INPUTS_DOC = DOCS / "inputs.md"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
ACTION = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
NO_DEFAULT = "—"
SECRET_MARK = "🔒"

_FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_ROW_NAME = re.compile(r"^\| `([a-z][a-z0-9-]*)`")
_SECTION = re.compile(r"^## (.+)$", re.MULTILINE)


def _sections(text: str) -> dict[str, str]:
    """The level-2 sections of a markdown page, by title."""
    parts = _SECTION.split(text)
    return {parts[index].strip(): parts[index + 1] for index in range(1, len(parts), 2)}


def _cells(row: str) -> list[str]:
    """A table row's cells; ``\\|`` inside a cell is not a separator."""
    body = row.strip().removeprefix("|").removesuffix("|")
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", body)]


def _rows(section: str) -> dict[str, list[str]]:
    """Table rows that start with a code-formatted name, by name, in order of appearance."""
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        match = _ROW_NAME.match(line)
        if match:
            assert match[1] not in rows, f"docs/inputs.md: `{match[1]}` has two rows"
            rows[match[1]] = _cells(line)
    return rows


INPUTS_SECTIONS = _sections(INPUTS_DOC.read_text(encoding="utf-8"))
INPUT_ROWS = _rows(INPUTS_SECTIONS.get("Inputs", ""))
OUTPUT_ROWS = _rows(INPUTS_SECTIONS.get("Outputs", ""))


def _input_name(cell: str) -> str:
    return cell.replace(SECRET_MARK, "").strip().strip("`")


def test_every_input_of_action_yml_has_its_row_in_order() -> None:
    declared = list(ACTION["inputs"])
    assert declared == [spec.name for spec in INPUTS], "action.yml is stale: run scripts/render_action_yml.py"
    missing = [name for name in declared if name not in INPUT_ROWS]
    assert not missing, f"docs/inputs.md has no row '| `<name>` ...' for input(s): {', '.join(missing)}"
    unknown = [name for name in INPUT_ROWS if name not in ACTION["inputs"]]
    assert not unknown, f"docs/inputs.md documents input(s) action.yml does not have: {', '.join(unknown)}"
    assert list(INPUT_ROWS) == declared, "docs/inputs.md lists the inputs in another order than action.yml"


@pytest.mark.parametrize("spec", INPUTS, ids=lambda spec: spec.name)
def test_input_row_has_the_codes_default_and_secret_mark(spec: InputSpec) -> None:
    name = spec.name
    row = INPUT_ROWS.get(name)
    assert row is not None, f"docs/inputs.md: no row for input `{name}`"
    assert len(row) >= 2, f"docs/inputs.md: the row of `{name}` has no default column"
    expected_default = INPUTS_BY_NAME[name].default or NO_DEFAULT
    shown_default = row[1].strip("`").strip()
    assert shown_default == expected_default, (
        f"docs/inputs.md: `{name}` shows default {row[1]!r}, the code's default is {expected_default!r}"
    )
    assert _input_name(row[0]) == name
    marked = SECRET_MARK in row[0]
    assert marked == INPUTS_BY_NAME[name].secret, (
        f"docs/inputs.md: `{name}` is {'' if INPUTS_BY_NAME[name].secret else 'not '}a secret input; "
        f"its {SECRET_MARK} mark says otherwise"
    )


@pytest.mark.parametrize("spec", INPUTS, ids=lambda spec: spec.name)
def test_input_row_says_where_else_the_value_may_come_from(spec: InputSpec) -> None:
    name = spec.name
    row = INPUT_ROWS.get(name)
    assert row is not None, f"docs/inputs.md: no row for input `{name}`"
    also = row[-1]
    secrets = {f"<P>_{spec.by_prefix}"} if spec.by_prefix else set()
    if name in sources.REGISTRY_TOKEN_FILLS:
        secrets.add(sources.REGISTRY_TOKEN)
    shown = set(re.findall(r"`(<P>_[A-Z_]+|[A-Z][A-Z0-9_]*)`", also))
    assert shown == secrets, f"docs/inputs.md: `{name}` is read from secret(s) {sorted(secrets)}, the row says {also!r}"
    in_file = re.search(r"\bfile\b", also) is not None
    assert in_file == spec.in_file, (
        f"docs/inputs.md: `{name}` {'may' if spec.in_file else 'may not'} be set in the config file; "
        f"the row says {also!r}"
    )


def test_every_output_of_action_yml_has_its_row_in_order() -> None:
    declared = list(ACTION["outputs"])
    assert declared == list(OUTPUTS), "action.yml is stale: run scripts/render_action_yml.py"
    missing = [name for name in declared if name not in OUTPUT_ROWS]
    assert not missing, f"docs/inputs.md has no row '| `<name>` ...' for output(s): {', '.join(missing)}"
    unknown = [name for name in OUTPUT_ROWS if name not in ACTION["outputs"]]
    assert not unknown, f"docs/inputs.md documents output(s) action.yml does not have: {', '.join(unknown)}"
    assert list(OUTPUT_ROWS) == declared, "docs/inputs.md lists the outputs in another order than action.yml"


# -- links -------------------------------------------------------------------------------------


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (not '-' or '_'), spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where nothing is a link or a heading."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a page, with GitHub's -1, -2... suffixes for repeated headings."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for match in _HEADING.finditer(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        anchor = github_anchor(match[2])
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _links(page: Path) -> list[str]:
    return _LINK.findall(_prose(page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("//"):
            continue  # http:, https:, mailto: ...
        file_part = unquote(target.partition("#")[0])
        if not file_part:
            continue  # an anchor in the same page
        resolved = (page.parent / file_part).resolve()
        if not resolved.exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_links_into_troubleshooting_name_existing_headings(page: Path) -> None:
    known = anchors(TROUBLESHOOTING)
    broken = []
    for target in _links(page):
        file_part, sep, anchor = target.partition("#")
        if not sep:
            continue
        resolved = (page.parent / unquote(file_part)).resolve() if file_part else page.resolve()
        if resolved == TROUBLESHOOTING.resolve() and anchor not in known:
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to headings docs/troubleshooting.md does not have: {broken}"


def test_the_link_checker_sees_links_and_headings() -> None:
    """The helpers themselves: a checker that finds nothing would pass everything."""
    assert github_anchor("Matrix over dev / uat / prod") == "matrix-over-dev--uat--prod"
    assert github_anchor("Lightweight mode, docker mode, compare mode") == "lightweight-mode-docker-mode-compare-mode"
    assert github_anchor("The topology file (`.github/bastion-migrate.yml`)") == (
        "the-topology-file-githubbastion-migrateyml"
    )
    assert github_anchor("snake_case and CAPS") == "snake_case-and-caps"
    assert "host-key" in anchors(TROUBLESHOOTING)
    assert "on-the-bastion-itself-most-trustworthy" not in anchors(TROUBLESHOOTING), "a comment in a code block"
    text = "see [a](x.md#y) and `[b](not-a-link.md)`\n```\n[c](nor-this.md)\n```\n"
    assert _LINK.findall(_prose(text)) == ["x.md#y"]
    assert any("troubleshooting.md#" in target for page in PAGES for target in _links(page))
