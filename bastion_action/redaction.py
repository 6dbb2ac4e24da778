"""What gets masked: a secret and every form of it that may be printed."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, quote_plus

_MIN_LINE_MASK = 4


def secret_forms(value: str) -> list[str]:
    """A secret and every form of it that may be printed: its lines, URL encodings."""
    forms = {value, quote(value, safe=""), quote_plus(value, safe="")}
    lines = [line.strip() for line in value.splitlines()]
    if len(lines) > 1:
        # GitHub masks line by line; a line too short to be secret ("{" of a JSON) would blank out the log.
        forms.update(line for line in lines if len(line) >= _MIN_LINE_MASK)
    return sorted((form for form in forms if form.strip()), key=len, reverse=True)


def masks(values: Iterable[str | None], verbatim: Iterable[str] = ()) -> tuple[str, ...]:
    """Every form of the given secrets, and the ``verbatim`` strings as they are; longest first."""
    found = {form for value in values if value for form in secret_forms(value)} | set(verbatim)
    return tuple(sorted(found, key=len, reverse=True))
