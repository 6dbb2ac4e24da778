"""The only writer of GitHub workflow commands, outputs and the step summary.

Written here, not through a library: each command is one escaped line, and
github-action-utils 2.0 writes `::add-mask ::value` (act's parser rejects it and
prints the secret) and reads file paths from os.environ only.

Every line goes through the redactor first: the run's secrets never print,
not even off GitHub where no runner would mask them. Off GitHub the same
calls print plain, human-readable text instead of ``::`` commands.

On GitHub, every plain line (the command's output, echoed values, anything the
action did not write as a command) is printed inside a ``::stop-commands::``
block whose token is fresh and unguessable, so the runner never acts on it;
the action's own commands (masks, groups, annotations) are printed only
between such blocks.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TextIO

from bastion_action.errors import ActionError

TITLE = "bastion-migrate"
SUMMARY_BYTES = 1000 * 1024  # GitHub refuses a step summary over 1 MiB

# The runner's own rule for output names (letters, digits, `-`, `_`; no leading digit or `-`).
_OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def escape_data(text: str) -> str:
    """A command's message, as the runner unescapes it; `%` first so the others are decoded once."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A property value (`title=`, `file=`, ...): `:` and `,` would end it early."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str = "", properties: Mapping[str, str] | None = None) -> str:
    """One workflow command line, without its newline: `::name k=v,k=v::message`."""
    props = ",".join(f"{key}={escape_property(value)}" for key, value in (properties or {}).items())
    # No space before `::` when there are no properties: act's parser does not accept one.
    head = f"{name} {props}" if props else name
    return f"::{head}::{escape_data(message)}"


def output_record(name: str, value: str) -> str:
    """One `GITHUB_OUTPUT` entry in the heredoc form, under a fresh delimiter nobody can predict."""
    if not _OUTPUT_NAME.fullmatch(name):
        raise ValueError(f"output name {name!r}: expected letters, digits, '-' or '_', not starting with a digit")
    delimiter = f"ghadelimiter_{uuid.uuid4()}"
    if delimiter in value:
        raise ValueError(f"output {name}: the value contains its own delimiter")
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


def append_whole(path: str, text: str) -> None:
    """Append ``text`` to the file at ``path``, or nothing of it: a write that fails (a full disk) is taken back.

    The runner parses ``GITHUB_OUTPUT`` after the step: half a record (a heredoc without its end) would
    fail the step with the runner's own parse error, and lose every output written before it.
    """
    data = text.encode("utf-8")
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(descriptor).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(descriptor, size)
            raise
    finally:
        os.close(descriptor)


def within_summary_limit(markdown: str) -> str:
    """The summary, cut at a line so that GitHub accepts it (a huge fan-out or migration table)."""
    data = markdown.encode("utf-8")
    if len(data) <= SUMMARY_BYTES:
        return markdown
    note = "\n\n**The summary was cut here: GitHub takes at most 1 MiB.** The outputs hold the whole state.\n"
    kept = data[: SUMMARY_BYTES - len(note.encode())].decode("utf-8", "ignore")
    return kept[: kept.rfind("\n") + 1] + note


_MIN_CUT = 4  # a secret's start shorter than this, before an ellipsis, is left: it would blank out common words


class Console:
    """Masks, redacts, and writes log lines, annotations, outputs and the summary."""

    def __init__(self, environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._stream = stream or sys.stdout
        self.github = self._environ.get("GITHUB_ACTIONS") == "true"
        self._secrets: list[str] = []
        self._stop_token: str | None = None  # the open stop-commands block's token, if one is open
        self.debugging = False

    # -- secrets -----------------------------------------------------------
    def mask(self, values: Iterable[str]) -> None:
        """Register secrets; on GitHub also ``::add-mask::`` each, before anything else prints."""
        new = [value for value in dict.fromkeys(values) if value and value not in self._secrets]
        self._secrets = sorted([*self._secrets, *new], key=len, reverse=True)
        if self.github:
            for value in new:
                self._command(command("add-mask", value))

    def _secret_start_before(self, text: str, end: int, shortest: int = 1) -> int:
        """How many characters before ``end`` are the start (not the whole) of a secret, the longest such start
        of the first secret that has one; 0 if none is ``shortest`` or longer."""
        for secret in self._secrets:
            for size in range(min(len(secret) - 1, end), shortest - 1, -1):
                if text.startswith(secret[:size], end - size):
                    return size
        return 0

    def safe_length(self, text: str) -> int:
        """How much of ``text`` may be shown when the rest follows later or never (a line shown in pieces,
        or cut short): no secret may be split at the end, where redaction could not see it whole."""
        cut = len(text)
        while size := self._secret_start_before(text, cut):
            cut -= size
        return cut

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        if "…" in text or "..." in text:
            text = self._cut_secrets(text)
        return text

    def _cut_secrets(self, text: str) -> str:
        """A secret's start right before an ellipsis is masked too: text shortened for display (Django's plan
        cuts a RunSQL at 40 characters, then ``…``) may end inside a secret, which no longer matches whole."""
        for ellipsis in ("…", "..."):
            end = text.find(ellipsis)
            while end >= 0:
                if cut := self._secret_start_before(text, end, _MIN_CUT):
                    text = text[: end - cut] + "***" + text[end:]
                    end += 3 - cut
                end = text.find(ellipsis, end + len(ellipsis))
        return text

    # -- log -----------------------------------------------------------------
    def _write(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def _command(self, line: str) -> None:
        """One of the action's own workflow commands: the runner must act on it, so no block is open."""
        self.end()
        self._write(line)

    def line(self, text: str) -> None:
        """Plain text, possibly untrusted: on GitHub the runner ignores any command in it."""
        if self.github and self._stop_token is None:
            self._stop_token = secrets.token_hex(16)
            self._write(command("stop-commands", self._stop_token))
        self._write(self.redact(text))

    def debug(self, text: str) -> None:
        """A debug line (``debug`` input or RUNNER_DEBUG=1): the runner shows it only in debug logs."""
        if not self.debugging:
            return
        if self.github:
            self._command(command("debug", self.redact(text)))
        else:
            self.line(f"debug: {text}")

    def end(self) -> None:
        """Close the open stop-commands block, if any (before a command, and as the last thing printed)."""
        if self._stop_token is not None:
            self._write(command(self._stop_token))
            self._stop_token = None

    @contextlib.contextmanager
    def group(self, title: str) -> Iterator[None]:
        self.open_group(title)
        try:
            yield
        finally:
            self.close_group()

    def open_group(self, title: str) -> None:
        """A group whose end is not lexically scoped (a command started before its output is shown)."""
        title = self.redact(title)
        if self.github:
            self._command(command("group", title))
        else:
            self.line(f"== {title}")

    def close_group(self) -> None:
        if self.github:
            self._command(command("endgroup"))

    def warning(self, message: str, *, title: str = TITLE) -> None:
        message = self.redact(message)
        if self.github:
            self._command(command("warning", message, {"title": self.redact(title)}))
        else:
            self.line(f"warning: {message}")

    def repository_path(self, path: Path) -> str:
        """``path`` relative to the repository (GITHUB_WORKSPACE, else the current directory), where GitHub
        places a file's annotations; '' when it lies outside."""
        workspace = Path(self._environ.get("GITHUB_WORKSPACE") or Path.cwd()).resolve()
        try:
            return path.resolve().relative_to(workspace).as_posix()
        except ValueError:
            return ""

    def annotate(self, level: str, message: str, *, title: str = TITLE, file: str = "", line: int = 0) -> None:
        """A ``notice``, ``warning`` or ``error`` annotation, placed on ``file`` (repository-relative) and ``line``."""
        message, title, file = self.redact(message), self.redact(title), self.redact(file)
        if self.github:
            properties = {"title": title}
            if file:
                properties["file"] = file
                if line:
                    properties["line"] = str(line)
            self._command(command(level, message, properties))
        else:
            place = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
            self.line(f"{level}: {place}{message}")

    def failure(self, error: ActionError) -> None:
        """One annotation per problem of a failed run (settings may have several): stage, what, the hint.

        A problem in the topology file is placed on its line, so GitHub shows it on the file too.
        """
        for problem in error.problems:
            message = self.redact(problem.message)
            hint = self.redact(problem.hint)
            if self.github:
                body = f"{message}\nHint: {hint}" if hint else message
                properties = {"title": f"{TITLE}: {problem.stage.value} failed"}
                if problem.file:
                    properties["file"] = self.redact(problem.file)
                    if problem.line:
                        properties["line"] = str(problem.line)
                self._command(command("error", body, properties))
            else:
                self.line(f"error [{problem.stage.value}]: {message}")
                if hint:
                    self.line(f"hint: {hint}")

    # -- outputs and summary ---------------------------------------------------
    def set_outputs(self, outputs: Mapping[str, str]) -> None:
        """Append the outputs to ``GITHUB_OUTPUT``, all or none (an ``OSError`` if they cannot be written)."""
        path = self._environ.get("GITHUB_OUTPUT")
        redacted = {name: self.redact(value) for name, value in outputs.items()}
        if path:
            append_whole(path, "".join(output_record(name, value) for name, value in redacted.items()))
        elif not self.github:
            self.show_outputs(redacted)

    def show_outputs(self, outputs: Mapping[str, str], title: str = "outputs") -> None:
        """The outputs as log lines (off GitHub, or when ``GITHUB_OUTPUT`` could not take them)."""
        self.line(f"{title}:")
        for name, value in outputs.items():
            self.line(f"  {name}: {self.redact(value)}")

    def summary(self, markdown: str) -> None:
        path = self._environ.get("GITHUB_STEP_SUMMARY")
        text = within_summary_limit(self.redact(markdown))  # cut after redaction: no secret is cut in half
        if path:
            append_whole(path, text + "\n")
        elif not self.github:
            self.line(text)
