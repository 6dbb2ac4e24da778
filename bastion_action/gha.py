"""The only writer of GitHub workflow commands, outputs and the step summary.

Every line goes through the redactor first: the run's secrets never print,
not even off GitHub where no runner would mask them. Off GitHub the same
calls print plain, human-readable text instead of ``::`` commands.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TextIO

import github_action_utils as gha

from bastion_action.errors import ActionError

TITLE = "bastion-migrate"


class Console:
    """Masks, redacts, and writes log lines, annotations, outputs and the summary."""

    def __init__(self, environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._stream = stream or sys.stdout
        self.github = self._environ.get("GITHUB_ACTIONS") == "true"
        self._secrets: list[str] = []

    # -- secrets -----------------------------------------------------------
    def mask(self, values: Iterable[str]) -> None:
        """Register secrets; on GitHub also ``::add-mask::`` each, before anything else prints."""
        new = [value for value in values if value and value not in self._secrets]
        self._secrets = sorted([*self._secrets, *new], key=len, reverse=True)
        if self.github:
            for value in new:
                self._command(lambda v=value: gha.echo(f"::add-mask::{_escape_data(v)}"))  # type: ignore[misc]

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    # -- log -----------------------------------------------------------------
    def _command(self, emit: Callable[[], object]) -> None:
        self._stream.flush()
        with contextlib.redirect_stdout(self._stream):
            emit()
        self._stream.flush()

    def line(self, text: str) -> None:
        print(self.redact(text), file=self._stream, flush=True)

    @contextlib.contextmanager
    def group(self, title: str) -> Iterator[None]:
        title = self.redact(title)
        if not self.github:
            self.line(f"== {title}")
            yield
            return
        self._command(lambda: gha.echo(f"::group::{_escape_data(title)}"))
        try:
            yield
        finally:
            self._command(gha.end_group)

    def open_group(self, title: str) -> None:
        """A group whose end is not lexically scoped (a command started before its output is shown)."""
        title = self.redact(title)
        if self.github:
            self._command(lambda: gha.echo(f"::group::{_escape_data(title)}"))
        else:
            self.line(f"== {title}")

    def close_group(self) -> None:
        if self.github:
            self._command(gha.end_group)

    def warning(self, message: str, *, title: str = TITLE) -> None:
        message = self.redact(message)
        if self.github:
            self._command(lambda: gha.warning(message, title=title))
        else:
            self.line(f"warning: {message}")

    def failure(self, error: ActionError) -> None:
        """One annotation for a failed run: the stage, what happened, the hint."""
        message = self.redact(error.message)
        hint = self.redact(error.hint)
        if self.github:
            body = f"{message}\nHint: {hint}" if hint else message
            title = f"{TITLE}: {error.stage.value} failed"
            self._command(lambda: gha.error(body, title=title))
        else:
            self.line(f"error [{error.stage.value}]: {message}")
            if hint:
                self.line(f"hint: {hint}")

    # -- outputs and summary ---------------------------------------------------
    def set_outputs(self, outputs: Mapping[str, str]) -> None:
        path = self._environ.get("GITHUB_OUTPUT")
        redacted = {name: self.redact(value) for name, value in outputs.items()}
        if path:
            with _patched_environ("GITHUB_OUTPUT", path):
                for name, value in redacted.items():
                    gha.set_output(name, value)
        elif not self.github:
            self.line("outputs:")
            for name, value in redacted.items():
                self.line(f"  {name}: {value}")

    def summary(self, markdown: str) -> None:
        path = self._environ.get("GITHUB_STEP_SUMMARY")
        text = self.redact(markdown)
        if path:
            with Path(path).open("a", encoding="utf-8") as file:
                file.write(text + "\n")
        elif not self.github:
            self.line(text)


def _escape_data(text: str) -> str:
    # github-action-utils 2.0 writes option-less commands as `::add-mask ::value`; GitHub's
    # runner accepts that, act's command parser does not (and would print the secret).
    # So these two are written whole here, escaped as the runner expects.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


@contextlib.contextmanager
def _patched_environ(name: str, value: str) -> Iterator[None]:
    """github-action-utils reads the file path from os.environ; make it see ours."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous
