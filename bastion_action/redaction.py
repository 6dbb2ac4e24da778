"""What gets masked: a secret and every form of it that may be printed."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast
from urllib.parse import quote, quote_plus

_T = TypeVar("_T")

_MIN_LINE_MASK = 4


def _utf8(value: str) -> bytes:
    try:
        return value.encode("utf-8", "surrogateescape")  # os.environ's undecodable bytes come back as they were
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def _python_literals(value: str) -> set[str]:
    """The text between the quotes of every str/bytes literal Python prints for ``value``.

    ``repr`` quotes with ``'`` (escaping ``'`` inside) unless the string holds ``'`` and no ``"``;
    the value may sit inside a longer string (a DSN, a dict's repr) whose other characters pick
    the quote, so both styles count. A leading ``"`` forces the ``'`` style.
    """
    forms = set()
    escapers: tuple[Callable[[str], str], ...] = (repr, ascii)
    for escape in escapers:
        forms.add(escape('"' + value)[2:-1])
        forms.add("'".join(escape('"' + part)[2:-1] for part in value.split("'")))
    utf8 = _utf8(value)
    forms.add(repr(b'"' + utf8)[3:-1])
    forms.add("'".join(repr(b'"' + part)[3:-1] for part in utf8.split(b"'")))
    return forms


def _encodings(value: str) -> set[str]:
    """``value`` as Python, JSON and URLs print it (the DSN's password is ``quote(safe="")``)."""
    utf8 = _utf8(value)  # quote() would raise on a lone surrogate
    return {
        value,
        quote(utf8, safe=""),
        quote(utf8),
        quote_plus(utf8, safe=""),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        *_python_literals(value),
    }


def secret_forms(value: str) -> list[str]:
    """A secret and every form of it that may be printed: encodings of the value and of each of its lines."""
    if not value.strip():
        return []  # whitespace is no secret; its encodings (%20, \\n) would blank out the log
    forms = _encodings(value)
    # Each line prints on its own (GitHub masks line by line), and so does a value read with its trailing
    # newline. A line too short to be secret ("{" of a JSON) would blank out the log; its encodings are
    # never shorter than the line, so the same rule keeps them all out.
    lines = {line.strip() for line in value.splitlines()}
    forms.update(form for line in lines if len(line) >= _MIN_LINE_MASK for form in _encodings(line))
    return sorted((form for form in forms if form.strip()), key=len, reverse=True)


def masks(values: Iterable[str | None], verbatim: Iterable[str] = ()) -> tuple[str, ...]:
    """Every form of the given secrets, and the ``verbatim`` strings as they are; longest first."""
    found = {form for value in values if value for form in secret_forms(value)} | set(verbatim)
    return tuple(sorted(found, key=len, reverse=True))


def redacted(value: _T, redact: Callable[[str], str]) -> _T:
    """A copy of ``value`` with ``redact`` applied to every text in it, however deep: in lists, tuples,
    dicts (keys too), dataclasses and exceptions (their arguments and attributes).

    What the summary and the outputs show is redacted here, before it is escaped or serialised: a
    secret escaped for Markdown (``my\\_pw``) or JSON-encoded after ``repr`` no longer matches any form
    a redaction of the finished text would look for.
    """
    return cast("_T", _redacted(value, redact))


def _redacted(value: Any, redact: Callable[[str], str]) -> Any:  # noqa: PLR0911 - one case per kind
    if isinstance(value, enum.Enum):  # a StrEnum is a str, and stays the member it is
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(item, redact) for item in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_redacted(item, redact) for item in value)
    if isinstance(value, dict):
        return {_redacted(key, redact): _redacted(item, redact) for key, item in value.items()}
    if isinstance(value, BaseException):
        clone = type(value).__new__(type(value), *_redacted(value.args, redact))
        clone.__dict__.update({name: _redacted(item, redact) for name, item in vars(value).items()})
        return clone
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return dataclasses.replace(
            value, **{field.name: _redacted(getattr(value, field.name), redact) for field in fields if field.init}
        )
    return value
