"""Checks of what GitHub will render: the summary's tables and Mermaid chart, and the JSON report's schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs/report.schema.json").read_text())


def assert_report_valid(document: Any) -> None:
    """The JSON report follows docs/report.schema.json."""
    jsonschema.validate(document, SCHEMA, format_checker=jsonschema.FormatChecker())


# -- a small reader of the Markdown that matters-----------------------------------------------


def cells(row: str) -> int:
    """GitHub's cell count of a table row: unescaped pipes between the outer ones."""
    inner = row.strip()[1:-1]
    return len(re.split(r"(?<!\\)\|", inner))


def outside_html_blocks(markdown: str) -> str:
    """The Markdown GitHub reads as Markdown: a ``<pre>`` HTML block runs to the line holding ``</pre>``."""
    return re.sub(r"^<pre>$.*?</pre>$", "<pre/>", markdown, flags=re.MULTILINE | re.DOTALL)


def tables(markdown: str) -> list[list[str]]:
    found: list[list[str]] = []
    block: list[str] = []
    in_fence = False
    for line in [*outside_html_blocks(markdown).splitlines(), ""]:
        if line.startswith("```"):
            in_fence = not in_fence
        if not in_fence and line.startswith("|"):
            block.append(line)
            continue
        if block:
            found.append(block)
            block = []
    return found


def assert_tables_render(markdown: str) -> None:
    for table in tables(markdown):
        header, delimiter, *rows = table
        assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", delimiter), f"not a delimiter row: {delimiter}"
        width = cells(header)
        assert cells(delimiter) == width, table
        for row in rows:
            assert row.endswith("|"), row
            assert cells(row) == width, f"{cells(row)} cells, header has {width}: {row}"


_TASK = re.compile(r"    (?P<name>[A-Za-z0-9_.-]+) :(?P<id>s[0-9]+), (?P<start>[0-9]+), (?P<end>[0-9]+)")


def gantt_blocks(markdown: str) -> list[list[str]]:
    return [block.splitlines() for block in re.findall(r"^```mermaid\n(.*?)^```$", markdown, re.MULTILINE | re.DOTALL)]


def assert_gantt_parses(lines: list[str]) -> list[tuple[str, str, int, int]]:
    """Mermaid's gantt grammar, as far as the summary uses it; returns (section, task, start, end) ms."""
    assert lines[0] == "gantt"
    assert lines[1] == "    dateFormat x"
    assert re.fullmatch(r"    axisFormat %[MS][.:]%[SL]", lines[2]), lines[2]
    section, ids, tasks = None, set(), []
    for line in lines[3:]:
        if match := re.fullmatch(r"    section (?P<name>[A-Za-z0-9_.-]+)", line):
            section = match["name"]
            continue
        match = _TASK.fullmatch(line)
        assert match, f"not a gantt task line: {line!r}"
        assert section is not None, "a task before any section"
        assert match["id"] not in ids
        ids.add(match["id"])
        start, end = int(match["start"]), int(match["end"])
        assert 0 <= start < end
        tasks.append((section, match["name"], start, end))
    return tasks
