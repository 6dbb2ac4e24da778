"""The one error hierarchy: every expected failure names its stage and a hint.

    ActionError                 stage + message + hint (+ docs anchor)
    ├── SettingsError           bad or missing input; raised before any connection
    ├── TunnelError             SSH connect, authentication, host key, forward, drop
    ├── ProbeError              database unreachable or refusing through the tunnel
    ├── LockError               advisory lock not acquired in time
    ├── PullError               registry login or image pull
    ├── CommandError            the migration command failed, timed out or was cut off
    │   └── PendingMigrationsError  `check` found migrations not applied (result: pending)
    └── InternalError           anything unexpected (a bug): still one annotation, outputs and summary

Library exceptions are translated into these at the module that talks to the
library (``raise TunnelError(...) from exc``); nothing else reaches the user.
"""

from __future__ import annotations

import enum
from typing import ClassVar

DOCS_TROUBLESHOOTING = "docs/troubleshooting.md"


class Stage(enum.StrEnum):
    """The stages of a run, in the order they happen."""

    SETTINGS = "settings"
    TUNNEL = "tunnel"
    PROBE = "probe"
    LOCK = "lock"
    PULL = "pull"
    COMMAND = "command"
    INTERNAL = "internal"  # not a stage of the flow: an unexpected error, wherever it happened


class ActionError(Exception):
    """An expected failure: what went wrong, in which stage, and what to do."""

    stage: ClassVar[Stage]

    def __init__(self, message: str, *, hint: str = "", anchor: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.anchor = anchor or self.stage.value

    @property
    def docs(self) -> str:
        return f"{DOCS_TROUBLESHOOTING}#{self.anchor}"

    def __str__(self) -> str:
        text = f"{self.stage.value}: {self.message}"
        if self.hint:
            text += f"\nHINT: {self.hint}"
        return text


class SettingsError(ActionError):
    stage = Stage.SETTINGS


class TunnelError(ActionError):
    stage = Stage.TUNNEL


class ProbeError(ActionError):
    stage = Stage.PROBE


class LockError(ActionError):
    stage = Stage.LOCK


class PullError(ActionError):
    stage = Stage.PULL


class CommandError(ActionError):
    stage = Stage.COMMAND

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        anchor: str = "",
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint, anchor=anchor)
        self.exit_code = exit_code


class PendingMigrationsError(CommandError):
    """``check`` found unapplied migrations: the run's result is ``pending``, not ``failure``."""


class InternalError(ActionError):
    """An exception nobody expected, reported through the same contract as any failure."""

    stage = Stage.INTERNAL

    @classmethod
    def of(cls, exc: BaseException, stage: Stage) -> InternalError:
        return cls(
            f"unexpected {type(exc).__name__} in the {stage.value} stage: {exc}",
            hint="This is a bug in bastion-migrate. Please report it with this log (secrets are masked in it).",
            anchor="internal",
        )


def input_error(name: str, expected: str, got: str | None = None, *, suggestion: str = "") -> SettingsError:
    """``ssh-port: expected 1-65535, got 'abc'`` — the shape of every input error (``; did you mean ...?`` after)."""
    message = f"{name}: expected {expected}"
    if got is not None:
        message += f", got {got!r}"
    if suggestion:
        message += f"; {suggestion}"
    return SettingsError(message, hint=f"Check the '{name}' input of the step.")
