"""Pure: how a script run with ``manage.py shell -c`` answers the action, and reading that answer.

The script ends by printing one JSON document, cut into lines of at most ``chunk`` characters
(a log line keeps 64 Ki characters) that each start with a marker made fresh for the run::

    <marker> 0 {"catalog.0001_initial": {...}, ...
    <marker> 1 ...}
    <marker> end 2 35112

Whatever else the project prints comes before, in between, or not at all. The marker's lines
are hidden from the log (``launch``'s ``conceal``); everything in them is untrusted, and
``read`` fails on anything malformed.
"""

from __future__ import annotations

import json
import secrets


class UnreadableError(ValueError):
    """The step's output held no whole, well-formed answer; the message says what was wrong."""


def new_marker(kind: str) -> str:
    return f"bastion-migrate-{kind}-{secrets.token_hex(12)}"


# Appended to a script that leaves its JSON text in ``text``; Python 3.8+, names of its own only.
_EMIT = """
import sys as _sys
_marker, _chunk = {marker!r}, {chunk}
_sys.stdout.write("\\n")
_index = 0
while _index * _chunk < len(text):
    _sys.stdout.write("%s %d %s\\n" % (_marker, _index, text[_index * _chunk : (_index + 1) * _chunk]))
    _index += 1
_sys.stdout.write("%s end %d %d\\n" % (_marker, _index, len(text)))
_sys.stdout.flush()
"""


def emit(marker: str, chunk: int) -> str:
    """The script's last lines: print the JSON text in ``text`` as marked lines of ``chunk`` characters."""
    return _EMIT.format(marker=marker, chunk=chunk)


def read(marker: str, text: str) -> object:
    """The JSON document the marked lines in ``text`` carry; raises ``UnreadableError`` if there is no whole one."""
    prefix = marker + " "
    pieces: list[str] = []
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        index, _, rest = line[len(prefix) :].partition(" ")
        if index == "end":
            count, _, length = rest.partition(" ")
            document = "".join(pieces)
            if count != str(len(pieces)) or length != str(len(document)):
                msg = f"its result lines do not add up ({len(pieces)} line(s), {len(document):,} characters)"
                raise UnreadableError(msg)
            try:
                return json.loads(document)
            except ValueError as exc:
                msg = f"its result is not JSON ({exc})"
                raise UnreadableError(msg) from None
        if index != str(len(pieces)):
            msg = f"its result line {len(pieces)} is missing or out of order"
            raise UnreadableError(msg)
        pieces.append(rest)
    msg = "it printed no result" if not pieces else "its result ended before its last line"
    raise UnreadableError(msg)
