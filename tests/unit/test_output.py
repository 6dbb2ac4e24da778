"""The output splitter and the bounded stores: any chunking gives the same lines, and nothing grows with the output."""

from __future__ import annotations

import itertools
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion_action.output import HeadAndTail, LineSplitter, Tail, cut_marker

MIB = 1 << 20


def split(chunks: list[bytes] | list[str], head: int = 64) -> list[str]:
    splitter = LineSplitter(head)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines + splitter.close()


def cuts(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(point % (len(data) + 1) for point in points)})
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


# Text rich in what chunking can break: newlines, "\r", multi-byte characters.
TEXT = st.text(alphabet=st.sampled_from("ab \n\r\r\né€😀"), max_size=300)


@given(text=TEXT, points=st.lists(st.integers(min_value=0), max_size=40), head=st.integers(min_value=1, max_value=20))
def test_any_chunking_of_any_text_gives_the_same_lines(text: str, points: list[int], head: int) -> None:
    data = text.encode()
    whole = split([data], head)
    assert split(cuts(data, points), head) == whole
    assert split([text], head) == whole  # text chunks (docker's log) as bytes (a pipe)
    raw = text.split("\n")
    if raw[-1] == "":
        raw.pop()  # a final newline ends the last line; it does not start one
    expected = [line.rstrip("\r") for line in raw]
    assert whole == [line if len(line) <= head else line[:head] + cut_marker(len(line) - head) for line in expected]


@given(data=st.binary(max_size=200), points=st.lists(st.integers(min_value=0), max_size=40))
def test_invalid_utf8_is_replaced_the_same_way_however_it_is_cut(data: bytes, points: list[int]) -> None:
    assert split(cuts(data, points), head=1000) == split([data], head=1000)


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        pytest.param([b"one\r", b"\ntwo\r\n"], ["one", "two"], id="crlf-cut"),
        pytest.param([b"\xe2\x82", b"\xac\n"], ["€"], id="utf8-cut"),
        pytest.param([b"no newline"], ["no newline"], id="last-line"),
        pytest.param([b"\n\n"], ["", ""], id="empty-lines"),
        pytest.param([b"a\rb\n"], ["a\rb"], id="inner-cr-kept"),
        pytest.param([b"\xff\n"], ["\ufffd"], id="invalid-byte"),
    ],
)
def test_splitting_cases(chunks: list[bytes], lines: list[str]) -> None:
    assert split(chunks) == lines


def test_an_unfinished_line_is_readable_as_it_stands() -> None:
    splitter = LineSplitter(head=10)
    assert splitter.feed(b"  Applying orders.0003_big...") == []
    assert splitter.unfinished
    assert splitter.partial == "  Applying"  # as much as is kept
    splitter = LineSplitter()
    splitter.feed(b"abc\r")
    assert splitter.partial == "abc"  # the "\r" may be half of "\r\n"
    assert splitter.feed(b"\n") == ["abc"]
    assert not splitter.unfinished
    assert splitter.partial == ""


def test_a_50_mb_line_keeps_its_head_and_memory_stays_bounded() -> None:
    chunk = b"x" * (64 * 1024)
    count = 50 * MIB // len(chunk)
    splitter = LineSplitter()
    tracemalloc.start()
    try:
        assert splitter.feed(b"before\n" + chunk) == ["before"]
        for _ in range(count - 1):
            assert splitter.feed(chunk) == []
        [line] = splitter.feed(b"\nafter")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert line == "x" * (64 * 1024) + cut_marker(count * len(chunk) - 64 * 1024)
    assert line.endswith(" … [52,363,264 more characters of this line not shown]")
    assert splitter.close() == ["after"]
    assert peak < MIB, peak  # a few chunks and the head, not the line


def test_the_tail_keeps_the_last_lines_within_its_bounds() -> None:
    tail = Tail(lines=3, chars=10)
    for line in ["a", "b", "c", "d"]:
        tail.append(line)
    assert list(tail) == ["b", "c", "d"]
    tail.append("x" * 9)
    assert list(tail) == ["d", "x" * 9]  # 10 characters
    tail.append("y" * 20)
    assert list(tail) == ["y" * 20]  # the last line is kept whatever its size
    assert tail.dropped == 5
    assert len(tail) == 1


def test_held_lines_keep_their_head_and_tail_and_say_what_was_cut() -> None:
    held = HeadAndTail(lines=4, chars=1000)
    for number in range(10):
        held.append(f"line {number}")
    assert list(held) == [
        "line 0",
        "line 1",
        "… [6 lines not shown: only the first and last lines are kept while held back]",
        "line 8",
        "line 9",
    ]
    held.clear()
    held.append("again")
    assert list(held) == ["again"]
    assert len(held) == 1


def test_lines_held_back_and_kept_stay_bounded() -> None:
    held = HeadAndTail(lines=20_000, chars=2 * MIB)
    tail = Tail(lines=100_000, chars=4 * MIB)
    line = "y" * 99
    tracemalloc.start()
    try:
        for _ in range(100_000):  # 10 MB: past both bounds
            held.append(line + "z")
            tail.append(line + "z")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(held) <= 20_000
    assert len(tail) <= 100_000
    assert peak < 16 * MIB, peak
