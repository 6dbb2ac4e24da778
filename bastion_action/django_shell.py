"""Pure: a one-process step asking the project's Django something (``manage.py shell -c SCRIPT``), and its answer.

The script runs inside the project's Python, where the command runs (the runner's interpreter,
or the image). It prints one JSON object, cut into lines of at most ``CHUNK_CHARS`` characters
(a log line keeps 64 Ki characters) that each start with a marker made fresh for the run::

    <marker> 0 {"catalog.0001_initial": {"sql": "BEGIN;\\n...", "more": 0}, ...
    <marker> 1 ...}
    <marker> end 2 35112

Whatever else the project prints comes before, in between, or not at all; it is untrusted, and so
is the answer: ``answer`` fails on anything that does not add up, and its callers check the shape.
The launcher hides the marker's lines from the log (they are a result for the action).
"""

from __future__ import annotations

import json
import secrets

CHUNK_CHARS = 16_000

# Runs inside the project's Python (Django 3.2+, Python 3.8+): defines ``emit(marker, document)``.
# No comprehension may use the script's names (``exec`` without globals on some versions), nothing newer than 3.8.
EMIT = f"""\
def emit(marker, document, chunk={CHUNK_CHARS}):
    import json, sys
    text = json.dumps(document, ensure_ascii=True)
    sys.stdout.write("\\n")
    index = 0
    while index * chunk < len(text):
        sys.stdout.write("%s %d %s\\n" % (marker, index, text[index * chunk : (index + 1) * chunk]))
        index += 1
    sys.stdout.write("%s end %d %d\\n" % (marker, index, len(text)))
    sys.stdout.flush()
"""


def new_marker(kind: str) -> str:
    """``bastion-migrate-<kind>-<24 hex>``: unguessable, so no output (a log line, a database's message) can
    pose as the answer. The project's own code is another matter: it runs in the same process, where it can
    read the marker (the script holds it), and could as well change django_migrations itself; the answer is
    only as trustworthy as that code, which is why its callers check its shape and the rows it claims."""
    return f"bastion-migrate-{kind}-{secrets.token_hex(12)}"


def argv(manage_py: str, script: str) -> list[str]:
    """The step's command line after the interpreter."""
    return [manage_py, "shell", "-v", "0", "-c", script]


class UnreadableError(ValueError):
    """The step's output held no whole, well-formed answer; the message says what was wrong."""


def answer(marker: str, text: str) -> object:
    """The JSON the script emitted with ``marker``; raises ``UnreadableError`` when no whole answer is there."""
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
