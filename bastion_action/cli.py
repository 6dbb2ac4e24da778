"""argv / ``INPUT_*`` environment -> Settings -> pipeline -> report -> exit code."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from bastion_action import NAME, __version__, aio, pipeline, report, settings, sources, summary
from bastion_action.errors import InternalError, ReportError, SettingsError, Stage
from bastion_action.gha import Console
from bastion_action.inputs import INPUTS, INPUTS_BY_NAME, close_matches, raw_from_environ
from bastion_action.redaction import redacted, secret_forms
from bastion_action.report import Result, RunResult
from bastion_action.runners import local

if TYPE_CHECKING:
    import argparse

EXIT_SIGNAL_BASE = 128


def _parser() -> argparse.ArgumentParser:
    import argparse  # noqa: PLC0415 - only the local CLI needs it

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            # One line: the usage of some forty flags would bury the one flag at fault.
            self.exit(2, f"{self.prog}: {message}\n")

    parser = Parser(
        prog=NAME,
        description="Run database migrations through an SSH bastion. Every input of action.yml is a flag; "
        "flags win over INPUT_* environment variables.",
        allow_abbrev=False,  # --comm must not quietly become --command, nor break when a flag is added
    )
    parser.add_argument("--version", action="version", version=f"{NAME} {__version__}")
    for spec in INPUTS:
        flags = [f"--{spec.name}"]
        if spec.name == "environment":
            flags.append("--env")
        default_text = f" (default: {spec.default})" if spec.default else ""
        parser.add_argument(*flags, dest=spec.name, metavar="VALUE", help=spec.description + default_text)
    return parser


def _unknown_argument(word: str) -> str:
    if not word.startswith("-"):
        return f"unexpected argument {word!r}; every value follows its flag (--command migrate)"
    flag = word.partition("=")[0]
    matches = close_matches(flag, ["--help", "--version", "--env", *(f"--{spec.name}" for spec in INPUTS)])
    if matches:
        return f"unknown flag {flag}; did you mean {' or '.join(matches)}?"
    return f"unknown flag {flag}; see --help for the flags"


def explicit_inputs(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[dict[str, str], frozenset[str]]:
    """The ``INPUT_*`` variables overridden by the CLI's flags, and which inputs the flags gave."""
    raw = raw_from_environ(environ)
    if not argv:  # the action itself passes no flags: argparse is not even imported
        return raw, frozenset()
    parser = _parser()
    namespace, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(_unknown_argument(extra[0]))
    flags = {name: value for name, value in vars(namespace).items() if value is not None}
    raw.update(flags)
    return raw, frozenset(flags)


def raw_inputs(argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    return explicit_inputs(argv, environ)[0]


def _secret_inputs(raw: Mapping[str, str], environ: Mapping[str, str]) -> list[str]:
    # The secrets JSON is masked value by value (early_masks), not as text: its braces are not secret.
    secret_specs = [spec for spec in INPUTS if spec.secret and spec.name != "secrets"]
    values = [raw[spec.name] for spec in secret_specs if raw.get(spec.name, "").strip()]
    values += sources.early_masks(raw, environ)
    return [form for value in values for form in secret_forms(value)]


async def _execute(parsed: settings.Settings, console: Console) -> tuple[RunResult, int | None]:
    """Run the pipeline; SIGTERM/SIGINT cancel it, and cleanup still runs before we report."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - always inside the Runner
    received: list[int] = []

    def cancel(signum: int) -> None:
        received.append(signum)
        task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, cancel, signum)
    try:
        run = await pipeline.execute(parsed, console)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return run, (received[0] if received else None)


def _write_report(console: Console, run: RunResult, environ: Mapping[str, str]) -> str:
    """The JSON report, in the runner's temporary directory (readable by this user only); its path."""
    directory = Path(environ.get("RUNNER_TEMP") or tempfile.gettempdir())
    path = directory / f"{NAME}-report-{uuid.uuid4().hex[:12]}.json"
    # Every text of the document redacted again (not the JSON text: a secret JSON escapes would be missed).
    text = json.dumps(redacted(report.document(run), console.redact), indent=2, ensure_ascii=False)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text + "\n")
    return str(path)


def _finish(console: Console, run: RunResult, environ: Mapping[str, str]) -> int:
    run.context = report.RunContext.from_environ(environ, __version__)
    if run.error is not None:
        console.failure(run.error)
    elif run.cancelled:
        console.line("cancelled: the run was stopped and its resources released")
    run = redacted(run, console.redact)  # every text, before it is escaped for Markdown or serialised
    try:
        outputs = report.outputs(run)
        try:
            outputs["report-path"] = _write_report(console, run, environ)
        except OSError as exc:
            console.warning(f"the JSON report could not be written: {exc}")
        markdown: str | None = summary.markdown(run)
        code = run.process_exit_code
    except Exception as exc:  # noqa: BLE001 - a bug in reporting must not cost the result outputs
        if run.error is None:
            console.failure(InternalError.of(exc, Stage.INTERNAL))
        code = run.process_exit_code or 1
        outputs, markdown = {"result": "failure", "exit-code": str(code)}, None
    try:
        if not _hand_over(console, outputs, markdown) and not code:
            code = 1  # a workflow must not go on as if outputs it cannot see said "success"
    finally:
        console.end()  # the runner reads commands again after the step, as it did before it
    return code


def _hand_over(console: Console, outputs: Mapping[str, str], markdown: str | None) -> bool:
    """The outputs, then the step summary, to the runner's files; False if the outputs could not be written."""
    handed = True
    try:
        console.set_outputs(outputs)
    except OSError as exc:
        handed = False
        console.show_outputs(outputs, "outputs (not written: GITHUB_OUTPUT could not take them)")
        console.failure(
            ReportError(
                f"the step's outputs could not be written to GITHUB_OUTPUT ({exc}): the run's own result "
                f"({outputs.get('result', '?')}, exit code {outputs.get('exit-code', '?')}) and its other outputs "
                "are only in this log, and the step fails so that the workflow does not go on without them",
                hint="The runner's disk is full, or GITHUB_OUTPUT is not writable: free space on the runner (an "
                "earlier step, or a larger runner) and re-run; a migrate that did succeed has nothing left to apply.",
            )
        )
    if markdown is not None:
        try:
            console.summary(markdown)
        except OSError as exc:
            console.warning(f"the step summary could not be written to GITHUB_STEP_SUMMARY ({exc}); it is not shown")
    return handed


def run_and_exit() -> NoReturn:
    """The process entry: ``main()``, then exit at once.

    Everything is closed and written by then; skipping the interpreter's teardown
    (garbage-collecting asyncssh, asyncpg, aiohttp...) saves 50-80 ms of every run.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _debug_settings(console: Console, parsed: settings.Settings) -> None:
    if not console.debugging:
        return
    ssh, db = parsed.ssh, parsed.db
    hops = "".join(f"{hop} -> " for hop in ssh.jump_hosts)
    console.debug(f"settings: mode {parsed.mode.value}, command {parsed.command.value}, args {list(parsed.args)}")
    console.debug(
        f"settings: ssh {hops}{ssh.user}@{ssh.host}:{ssh.port}, keepalive {ssh.keepalive_interval:g} s, "
        f"connect-timeout {ssh.connect_timeout:g} s, host key by "
        + ("fingerprint" if ssh.host_fingerprints else "known_hosts" if ssh.known_hosts else "nothing (skipped)")
    )
    databases = [f"{target.host}:{target.port}/{target.name}" for target in parsed.targets] or [
        f"{db.host}:{db.port}/{db.name}"
    ]
    console.debug(f"settings: database(s) {', '.join(databases)} as {db.user}, sslmode {db.sslmode}")
    console.debug(
        f"settings: lock {parsed.lock} (timeout {parsed.lock_timeout:g} s, lease {parsed.lock_lease:g} s), "
        f"run timeout {parsed.timeout:g} s"
    )
    if parsed.image is not None:
        console.debug(
            f"settings: image {parsed.image.reference}, registry {parsed.image.registry}, pull {parsed.image.pull}"
        )


def _resolved(console: Console, lines: Sequence[str]) -> None:
    """The "resolved inputs" group: where each input came from (never a secret's value)."""
    if lines:
        with console.group("resolved inputs"):
            for line in lines:
                console.line(line)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    console = Console(environ)
    raw, flags = explicit_inputs(sys.argv[1:] if argv is None else argv, environ)
    console.mask(_secret_inputs(raw, environ))
    console.debugging = settings.debug_requested(environ)
    try:
        parsed = settings.parse(raw, environ, flags=flags)
    except Exception as exc:  # noqa: BLE001 - a bug in parsing still ends in the failure contract
        console.line(f"{NAME} {__version__}")
        error = exc if isinstance(exc, SettingsError) else InternalError.of(exc, Stage.SETTINGS)
        if isinstance(error, SettingsError):
            _resolved(console, error.resolved)
        run = RunResult(
            environment=raw.get("environment", ""),
            mode=raw.get("mode", "").strip() or INPUTS_BY_NAME["mode"].default,
            command=raw.get("command", "").strip() or INPUTS_BY_NAME["command"].default,
            error=error,
        )
        return _finish(console, run, environ)
    console.mask(parsed.secrets)
    console.line(f"{NAME} {__version__}")  # after every mask: nothing else may print before them
    _resolved(console, parsed.resolved)
    console.debugging = parsed.debug
    _debug_settings(console, parsed)
    local.become_subreaper()
    loop_name, factory, problem = aio.loop_factory(environ)
    if problem:
        console.warning(f"{problem}; running on {loop_name}")
    console.debug(f"event loop: {loop_name}")
    with asyncio.Runner(loop_factory=factory) as runner:
        run, signum = runner.run(_execute(parsed, console))
    if signum is not None and run.result is not Result.SUCCESS:
        run.exit_code = EXIT_SIGNAL_BASE + signum  # the exit-code output and the status agree
    return _finish(console, run, environ)
