"""Pure: a command's output, in chunks of any size, as lines; and bounded stores of those lines.

A command may print anything: a 50 MB line, 500 MB in all, UTF-8 cut anywhere by
the pipe. Nothing here grows with it: a line keeps its first ``LINE_HEAD``
characters and says how many more it had; a store keeps at most so many lines
and characters.
"""

from __future__ import annotations

import codecs
import collections
import re
from collections.abc import Iterator

LINE_HEAD = 64 * 1024  # characters kept of one line; a traceback's longest lines fit


def cut_marker(count: int) -> str:
    return f" … [{count:,} more characters of this line not shown]"


_CUT = re.compile(r"(.*) … \[([0-9,]+) more characters of this line not shown\]", re.DOTALL)


def cut_line(line: str) -> tuple[str, int] | None:
    """A line ``LineSplitter`` cut short: its head and how many characters were dropped; None if whole."""
    if not line.endswith(" not shown]"):
        return None
    cut = _CUT.fullmatch(line)
    return None if cut is None else (cut[1], int(cut[2].replace(",", "")))


class LineSplitter:
    """Chunks (bytes or text) in, whole lines out, without their ``\\n`` or trailing ``\\r``.

    Bytes are decoded as UTF-8 across chunk boundaries (invalid bytes become U+FFFD).
    Whatever the chunking, the same text gives the same lines.
    """

    def __init__(self, head: int = LINE_HEAD) -> None:
        self._limit = head
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._head: list[str] = []  # the unfinished line's first characters, at most `head` in all
        self._kept = 0
        self._length = 0  # the unfinished line's characters so far, kept or not
        self._returns = 0  # how many of them, at its end, are "\r"

    @property
    def unfinished(self) -> bool:
        """Whether a line has begun and not ended."""
        return self._length > 0

    @property
    def partial(self) -> str:
        """The unfinished line as far as it is kept (a trailing ``\\r`` may be half of ``\\r\\n``: left out)."""
        if len(self._head) > 1:
            self._head = ["".join(self._head)]
        head = self._head[0] if self._head else ""
        return head[: self._length - self._returns]

    def feed(self, chunk: bytes | str) -> list[str]:
        """The lines this chunk completes."""
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        *ends, rest = text.split("\n")
        lines = []
        for piece in ends:
            self._add(piece)
            lines.append(self._finish())
        self._add(rest)
        return lines

    def close(self) -> list[str]:
        """The last line, if the output did not end with a newline."""
        self._add(self._decoder.decode(b"", final=True))
        return [self._finish()] if self._length else []

    def _add(self, piece: str) -> None:
        if not piece:
            return
        room = self._limit - self._kept
        if room > 0:
            kept = piece[:room]
            self._head.append(kept)
            self._kept += len(kept)
        self._length += len(piece)
        content = piece.rstrip("\r")
        self._returns = (self._returns if not content else 0) + len(piece) - len(content)

    def _finish(self) -> str:
        length = self._length - self._returns
        head = "".join(self._head)[:length]
        self._head, self._kept, self._length, self._returns = [], 0, 0, 0
        return head + cut_marker(length - len(head)) if length > len(head) else head


class Tail:
    """The last lines appended: at most ``lines`` of them and ``chars`` characters (at least the last line)."""

    def __init__(self, lines: int, chars: int) -> None:
        self._max_lines = lines
        self._max_chars = chars
        self._lines: collections.deque[str] = collections.deque()
        self._chars = 0
        self.dropped = 0  # lines dropped from the front

    def append(self, line: str) -> None:
        self._lines.append(line)
        self._chars += len(line)
        while len(self._lines) > self._max_lines or (self._chars > self._max_chars and len(self._lines) > 1):
            self._chars -= len(self._lines.popleft())
            self.dropped += 1

    def clear(self) -> None:
        self._lines.clear()
        self._chars = 0
        self.dropped = 0

    def __iter__(self) -> Iterator[str]:
        return iter(self._lines)

    def __len__(self) -> int:
        return len(self._lines)


class HeadAndTail:
    """Lines kept back to be shown later: the first and the last ones, and a line saying how many between were cut."""

    def __init__(self, lines: int, chars: int) -> None:
        self._max_lines = lines // 2
        self._max_chars = chars // 2
        self._head: list[str] = []
        self._head_chars = 0
        self._tail = Tail(lines - self._max_lines, chars - self._max_chars)

    def append(self, line: str) -> None:
        fits = len(self._head) < self._max_lines and self._head_chars + len(line) <= self._max_chars
        if fits and not self._tail:
            self._head.append(line)
            self._head_chars += len(line)
        else:
            self._tail.append(line)

    def clear(self) -> None:
        self._head.clear()
        self._head_chars = 0
        self._tail.clear()

    def __iter__(self) -> Iterator[str]:
        yield from self._head
        if self._tail.dropped:
            yield f"… [{self._tail.dropped:,} lines not shown: only the first and last lines are kept while held back]"
        yield from self._tail

    def __len__(self) -> int:
        return len(self._head) + len(self._tail)
