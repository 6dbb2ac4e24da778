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
    REPORT = "report"  # after the flow: handing the results to the runner (the outputs, the step summary)


class ActionError(Exception):
    """An expected failure: what went wrong, in which stage, and what to do."""

    stage: ClassVar[Stage]
    file = ""  # a file the problem is in (the topology file), for the annotation's place
    line = 0

    def __init__(self, message: str, *, hint: str = "", anchor: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.anchor = anchor or self.stage.value

    @property
    def problems(self) -> tuple[ActionError, ...]:
        """The problems to annotate one by one: this one, or all the settings problems of a run."""
        return (self,)

    @property
    def docs(self) -> str:
        return f"{DOCS_TROUBLESHOOTING}#{self.anchor}"

    def __str__(self) -> str:
        text = f"{self.stage.value}: {self.message}"
        if self.hint:
            text += f"\nHINT: {self.hint}"
        return text


class SettingsError(ActionError):
    """A bad or missing input. ``inputs`` names the inputs at fault, so the parser can say where each came
    from; ``expected``/``got`` are kept apart so a value read from a secret is described, never shown;
    ``file``/``line`` place the annotation on the topology file."""

    stage = Stage.SETTINGS

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        anchor: str = "",
        inputs: tuple[str, ...] = (),
        expected: str = "",
        got: str | None = None,
        suggestion: str = "",
        file: str = "",
        line: int = 0,
    ) -> None:
        super().__init__(message, hint=hint, anchor=anchor)
        self.inputs = inputs
        self.expected = expected
        self.got = got
        self.suggestion = suggestion
        self.file = file
        self.line = line
        self.resolved: tuple[str, ...] = ()  # the run's resolved inputs, for the log (set by the parser)


class SettingsProblems(SettingsError):  # noqa: N818 - it holds errors; it is one
    """Every settings problem of a run at once: one annotation each, so one run shows them all."""

    def __init__(self, problems: list[SettingsError]) -> None:
        listed = "; ".join(problem.message for problem in problems)
        super().__init__(
            f"{len(problems)} problems with the inputs: {listed}",
            hint="Fix each one (every problem has its own annotation with its fix).",
        )
        self._problems = tuple(problems)

    @property
    def problems(self) -> tuple[ActionError, ...]:
        return self._problems

    @classmethod
    def of(cls, problems: list[SettingsError]) -> SettingsError:
        """One problem as itself, several as one error holding them all."""
        return problems[0] if len(problems) == 1 else cls(problems)


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


class ReportError(ActionError):
    """The results could not be handed to the runner (its disk full, its files not writable)."""

    stage = Stage.REPORT


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


def input_message(name: str, expected: str, got: str | None = None, suggestion: str = "") -> str:
    """``ssh-port: expected 1-65535, got 'abc'`` — the shape of every input error (``; did you mean ...?`` after)."""
    message = f"{name}: expected {expected}"
    if got is not None:
        message += f", got {got}"
    if suggestion:
        message += f"; {suggestion}"
    return message


def input_error(name: str, expected: str, got: str | None = None, *, suggestion: str = "") -> SettingsError:
    """A bad value of one input; the parser adds where the value came from and the fix there."""
    return SettingsError(
        input_message(name, expected, None if got is None else repr(got), suggestion),
        hint=f"Check the '{name}' input of the step.",
        inputs=(name,),
        expected=expected,
        got=got,
        suggestion=suggestion,
    )
