"""Test support: the lab's facts, running the action as GitHub would, the leak and process scanners."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB_DIR = Path(os.environ.get("LAB_DIR", "/var/lib/bastion-migrate-lab"))


def load_lab() -> dict[str, Any]:
    path = LAB_DIR / "lab.json"
    if not path.is_file():
        msg = f"the lab is not up ({path} is missing): run `bash tests/lab/up.sh` (make test does)"
        raise RuntimeError(msg)
    return json.loads(path.read_text())


def admin_sql(lab: dict[str, Any], sql: str, database: str = "postgres") -> str:
    """Run SQL as the database superuser inside the private namespace (not through the tunnel)."""
    argv = [*lab["db_admin_argv"]]
    if "-d" in argv:
        argv[argv.index("-d") + 1] = database
    done = subprocess.run([*argv, "-c", sql], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode:
        msg = f"admin SQL failed ({sql!r}): {done.stderr}"
        raise RuntimeError(msg)
    return done.stdout.strip()


def _printed(value: str) -> set[str]:
    """``value`` as URLs, JSON and Python print it; Python's escape of ``'`` depends on the enclosing string."""
    forms = {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    for python in (repr, ascii, lambda text: repr(text.encode())[1:]):
        forms |= {python(value)[1:-1], python(value + '"')[1:-2]}  # a '"' makes Python quote with "'"
        if '"' not in value:
            forms.add(python(value + "'")[1:-2])  # quoted with '"', the "'" inside is not escaped
    return forms


def secret_forms(value: str) -> set[str]:
    forms = _printed(value)
    for line in value.splitlines():
        forms |= _printed(line.strip())
    return {form for form in forms if len(form.strip()) >= 4}


@dataclasses.dataclass
class ActionRun:
    returncode: int
    stdout: str
    stderr: str
    outputs: dict[str, str]
    summary: str
    seconds: float
    report_text: str = ""  # the JSON report the report-path output names

    @property
    def report(self) -> Any:
        return json.loads(self.report_text)

    @property
    def annotations(self) -> list[str]:
        """The annotations the runner would make of stdout (commands inside stop-commands blocks are text)."""
        return [line for line in runner_commands(self.stdout) if line.startswith(("::error", "::warning"))]

    def leaks(self, secrets: list[str]) -> list[str]:
        """Every secret form found anywhere outside an ::add-mask:: line."""
        text = "\n".join(
            [
                *(line for line in self.stdout.splitlines() if not line.startswith("::add-mask::")),
                self.stderr,
                *self.outputs.values(),
                self.summary,
                self.report_text,
            ]
        )
        return sorted({form for secret in secrets if secret for form in secret_forms(secret) if form in text})

    def explain(self) -> str:
        parts = [f"exit {self.returncode}", "--- stdout", self.stdout, "--- stderr", self.stderr]
        return "\n".join([*parts, "--- summary", self.summary])


_COMMAND = re.compile(r"::([^ :]+)(?: [^:]*)?::(.*)")


def runner_commands(stdout: str) -> list[str]:
    """The workflow commands a runner acts on in ``stdout``, as GitHub's runner reads them.

    The runner splits the output into lines at CR, LF or CRLF; a ``::stop-commands::TOKEN``
    line turns command processing off until a ``::TOKEN::`` line. Legacy ``##[command]``
    lines count as commands too.
    """
    found: list[str] = []
    resume: str | None = None
    for line in re.split(r"\r\n|\r|\n", stdout):
        match = _COMMAND.fullmatch(line)
        if resume is not None:
            if match and match[1] == resume:
                resume = None
            continue
        if match and match[1] == "stop-commands":
            resume = match[2]
        elif match or line.startswith("##["):
            found.append(line)
    return found


def parse_output_file(text: str) -> dict[str, str]:
    """The outputs, read as the runner reads GITHUB_OUTPUT: record by record, `name=value` or a heredoc."""
    outputs: dict[str, str] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if not line:
            continue
        equals, heredoc = line.find("="), line.find("<<")
        if equals >= 0 and (heredoc < 0 or equals < heredoc):
            name, _, value = line.partition("=")
            outputs[name] = value
            continue
        name, _, delimiter = line.partition("<<")
        body = []
        for inner in lines:
            if inner == delimiter:
                break
            body.append(inner)
        else:
            msg = f"output {name}: no closing delimiter {delimiter!r}"
            raise ValueError(msg)
        outputs[name] = "\n".join(body)
    return outputs


# What a runner sets for every step (and action.yml passes as BASTION_MIGRATE_ACTION_*), as in a real run.
GITHUB_CONTEXT = {
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_REPOSITORY": "team/shop",
    "GITHUB_SHA": "5f1c0a9e2b7d4c3f8a6e1d0b9c8a7f6e5d4c3b2a",
    "GITHUB_REF": "refs/heads/main",
    "GITHUB_REF_NAME": "main",
    "GITHUB_ACTOR": "release-bot",
    "GITHUB_RUN_ID": "987654321",
    "GITHUB_RUN_ATTEMPT": "1",
    "GITHUB_WORKFLOW": "deploy",
    "BASTION_MIGRATE_ACTION_REPOSITORY": "org/bastion-migrate",
    "BASTION_MIGRATE_ACTION_REF": "v1",
}


def action_env(inputs: dict[str, str], workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(workdir / "output"),
        "GITHUB_STEP_SUMMARY": str(workdir / "summary"),
        "GITHUB_WORKSPACE": str(workdir),
        "RUNNER_TEMP": str(workdir),
        **GITHUB_CONTEXT,
    }
    env.update({"INPUT_" + name.upper().replace("-", "_"): value for name, value in inputs.items()})
    env.update(extra or {})
    return env


def start_action(
    inputs: dict[str, str], workdir: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("output", "summary"):
        (workdir / name).write_text("")
    return subprocess.Popen(
        [sys.executable, str(ROOT / "entrypoint.py")],
        env=action_env(inputs, workdir, extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_action(process: subprocess.Popen[str], workdir: Path, started: float, timeout: float = 300) -> ActionRun:
    stdout, stderr = process.communicate(timeout=timeout)
    outputs = parse_output_file((workdir / "output").read_text())
    report = Path(outputs["report-path"]) if "report-path" in outputs else None
    return ActionRun(
        returncode=process.returncode,
        stdout=stdout,
        stderr=stderr,
        outputs=outputs,
        summary=(workdir / "summary").read_text(),
        seconds=time.monotonic() - started,
        report_text=report.read_text() if report else "",
    )


def run_action(inputs: dict[str, str], workdir: Path, extra_env: dict[str, str] | None = None) -> ActionRun:
    started = time.monotonic()
    return finish_action(start_action(inputs, workdir, extra_env), workdir, started)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def owned_databases(lab: dict[str, Any], names: list[str]) -> Iterator[list[str]]:
    """New, empty databases owned by the lab's migration user, dropped on the way out (failure included)."""
    created: list[str] = []
    try:
        for name in names:
            admin_sql(lab, f'CREATE DATABASE "{name}" OWNER "{lab["db_user"]}"')
            created.append(name)
        yield names
    finally:
        for name in created:
            admin_sql(lab, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


OWN_NETNS = Path("/proc/self/ns/net")


def netns(name: str) -> Path:
    """The file of a named network namespace (as `ip netns add` creates it)."""
    return Path("/run/netns") / name


def alive(process: psutil.Process) -> bool:
    """Zombies count as dead: a daemon the lab or a test stopped may linger as one until reaped."""
    try:
        return process.status() not in {psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD}
    except psutil.Error:
        return False


def _in_netns(pid: int, namespace: os.stat_result) -> bool:
    try:
        own = Path(f"/proc/{pid}/ns/net").stat()
    except OSError:
        return False
    return (own.st_dev, own.st_ino) == (namespace.st_dev, namespace.st_ino)


def live_processes(*, namespace: Path | None = None, under: int | None = None) -> list[psutil.Process]:
    """Live processes other than this one: all, or those in the network ``namespace`` (its file), or ``under``'s tree.

    ``under`` includes that process itself and every descendant.
    """
    if under is None:
        candidates = list(psutil.process_iter())
    else:
        try:
            root = psutil.Process(under)
            candidates = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            candidates = []
    reference = None if namespace is None else namespace.stat()
    return [
        process
        for process in candidates
        if process.pid != os.getpid() and alive(process) and (reference is None or _in_netns(process.pid, reference))
    ]


def command_line(process: psutil.Process) -> str:
    """The arguments joined by spaces, as `ps` shows them; empty once the process is gone."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def processes_mentioning(text: str) -> list[int]:
    """Runner-side PIDs whose environment or command line contains ``text``.

    Only processes in the runner's network namespace count: the lab's own
    servers (a PostgreSQL backend serving the run) live in other namespaces.
    Entries are NUL-separated, as in /proc: ``"sleep\0123"`` matches the argv ``sleep 123``.
    """
    found = []
    for process in live_processes(namespace=OWN_NETNS):
        try:
            environ = "\0".join(f"{name}={value}" for name, value in process.environ().items())
            blob = environ + "\0" + "\0".join(process.cmdline())
        except psutil.Error:
            continue
        if text in blob:
            found.append(process.pid)
    return found


def sshd_sessions(namespace: str) -> dict[int, str]:
    """Live per-connection sshd processes in a lab namespace (``sshd: user [priv]``, ``sshd: user``, preauth).

    The listener itself (``sshd: ... [listener] ...``) is not a session.
    """
    found = {}
    for process in live_processes(namespace=netns(namespace)):
        line = command_line(process).strip()
        if line.startswith("sshd:") and "[listener]" not in line:
            found[process.pid] = line
    return found


def listening(port: int) -> bool:
    """A TCP socket of this network namespace listens on ``port`` (any address).

    Read from the socket table, not by connecting: a connect to a free ephemeral
    port on 127.0.0.1 can connect to itself (TCP simultaneous open), and a live
    listener of the action would take the probe for a client.
    """
    return any(
        conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
        for conn in psutil.net_connections(kind="tcp")
    )


# The sample project's migrations, in the order a full migrate applies them.
SAMPLE_MIGRATIONS = (
    "catalog.0001_initial",
    "catalog.0002_product_sku",
    "orders.0001_initial",
    "orders.0002_seed_statuses",
    "audit.0001_initial",
    "audit.0002_test_hooks",
)


def recorded_migrations(lab: dict[str, Any], database: str) -> list[str]:
    """``app.name`` of each row of ``database``'s django_migrations, in the order recorded (none: no table)."""
    if admin_sql(lab, "SELECT to_regclass('django_migrations') IS NOT NULL", database) != "t":
        return []
    return admin_sql(lab, "SELECT app || '.' || name FROM django_migrations ORDER BY id", database).splitlines()


def sleepers(lab: dict[str, Any], database: str) -> list[str]:
    """The application_name of each session of ``database`` running ``pg_sleep`` (the sample's slow migration)."""
    query = (
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
        "AND state = 'active' AND query LIKE 'SELECT pg_sleep%' ORDER BY 1"
    )
    return admin_sql(lab, query, database).splitlines()


def applied_rows(lab: dict[str, Any], database: str) -> int:
    """Rows in ``database``'s django_migrations; 0 before Django has created the table."""
    exists = admin_sql(lab, "SELECT to_regclass('django_migrations') IS NOT NULL", database)
    return int(admin_sql(lab, "SELECT count(*) FROM django_migrations", database)) if exists == "t" else 0


def assert_report(run: ActionRun, stage: str | None = None) -> Any:
    """The summary renders (tables, the time line) and the JSON report follows its schema and agrees with the
    outputs; a failure leads the summary with its stage, its fix and a link to the action's docs at its ref."""
    from markdown_check import (  # noqa: PLC0415 - jsonschema only where reports are checked
        assert_gantt_parses,
        assert_report_valid,
        assert_tables_render,
        gantt_blocks,
    )

    assert_tables_render(run.summary)
    for chart in gantt_blocks(run.summary):
        assert_gantt_parses(chart)
    report = run.report
    assert_report_valid(report)
    assert report["result"] == run.outputs["result"]
    assert str(report["exit_code"]) == run.outputs["exit-code"]
    assert report["context"]["sha"] == GITHUB_CONTEXT["GITHUB_SHA"]
    if stage is not None:
        assert report["error"]["stage"] == stage, report["error"]
        lead = run.summary.index(f"**Failed in the `{stage}` stage:**")
        assert lead < run.summary.index("| environment |"), "the failure comes before the context"
        anchor = report["error"]["docs"].partition("#")[2]
        docs = f"https://github.com/org/bastion-migrate/blob/v1/docs/troubleshooting.md#{anchor}"
        assert f"[troubleshooting]({docs})" in run.summary
    return report


def assert_failed_in(run: ActionRun, stage: str) -> None:
    """The failure contract: non-zero, result failure, one annotation naming the stage, a hint, the summary."""
    assert run.returncode == int(run.outputs["exit-code"]) != 0, run.explain()
    assert run.outputs["result"] == "failure", run.explain()
    errors = [line for line in run.annotations if line.startswith("::error")]
    assert len(errors) == 1, run.explain()
    assert errors[0].startswith(f"::error title=bastion-migrate%3A {stage} failed::"), run.explain()
    assert "Hint: " in errors[0], run.explain()
    assert f"Failed in the `{stage}` stage" in run.summary, run.explain()
    assert_report(run, stage)


def with_docker(inputs: dict[str, str], lab: dict[str, Any]) -> dict[str, str]:
    """The same run in docker mode: the lab's image from its registry, the image's own python."""
    return {
        **inputs,
        "mode": "docker",
        "python": "",
        "working-directory": "",
        "image": lab["image"],
        "image-tag": lab["image_tag"],
        "registry-username": lab["registry_user"],
        "registry-password": lab["registry_password"],
    }


def start_lock_holder(lab: dict[str, Any], database: str, seconds: int) -> subprocess.Popen[bytes]:
    """Another deploy (application_name other-deploy) taking the action's migration lock of ``database``."""
    from bastion_action.lock import lock_keys  # noqa: PLC0415 - the key as the action computes it

    key1, key2 = lock_keys(database)
    argv = list(lab["db_admin_argv"])
    argv[argv.index("-d") + 1] = database
    return subprocess.Popen(
        [*argv, "-c", f"SELECT pg_advisory_lock({key1}, {key2})", "-c", f"SELECT pg_sleep({seconds})"],
        env={**os.environ, "PGAPPNAME": "other-deploy"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """``probe()``'s first truthy value within ``timeout`` s; the test fails naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what} ({timeout:g} s)")


def action_locks(lab: dict[str, Any], database: str) -> int:
    """Advisory locks in the action's namespace (``bastion_action.lock.LOCK_NAMESPACE``) held on ``database``."""
    query = (
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.classid = 1651733614 AND d.datname = current_database()"
    )
    return int(admin_sql(lab, query, database))


@contextlib.contextmanager
def table_locked(lab: dict[str, Any], database: str, table: str) -> Iterator[None]:
    """An admin session holds ACCESS EXCLUSIVE on ``table`` until the block ends: every reader of it waits.

    The session idles in its transaction while psql waits for more input; ending psql closes the
    connection, and the server rolls back at once (a statement still running would hold the lock).
    """
    argv = list(lab["db_admin_argv"])
    argv[argv.index("-d") + 1] = database
    session = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert session.stdin is not None
    session.stdin.write(f"BEGIN;\nLOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;\n")
    session.stdin.flush()
    try:
        wait_for(lambda: _lock_held(lab, database, table), f"the lock on {table}")
        yield
    finally:
        session.kill()
        session.wait()
        session.stdin.close()
        wait_for(lambda: not _lock_held(lab, database, table), f"the lock on {table} released")


def _lock_held(lab: dict[str, Any], database: str, table: str) -> bool:
    query = f"SELECT count(*) FROM pg_locks WHERE relation = to_regclass('{table}') AND mode = 'AccessExclusiveLock'"  # noqa: S608 - the test's own table name
    return admin_sql(lab, query, database) == "1"
