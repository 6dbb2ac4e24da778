"""Where the command runs: the command line, its environment, and the runner's process handling."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from factories import make_settings

from bastion_action import launch as launch_module
from bastion_action.errors import CommandError, SettingsError
from bastion_action.gha import Console
from bastion_action.output import LINE_HEAD, LineSplitter, cut_marker
from bastion_action.runners import Output, command_argv, command_env, local, pgoptions, title
from bastion_action.runners import docker as docker_runner

ROOT = Path(__file__).resolve().parents[2]
URL = "postgresql://migrator:x@127.0.0.1:40001/app?sslmode=prefer"
MIB = 1 << 20


class Collected:
    """An ``Output`` that splits what it is fed into ``lines``, noting the largest chunk."""

    def __init__(self) -> None:
        self.splitter = LineSplitter()
        self.lines: list[str] = []
        self.largest = 0
        self.seen = asyncio.Event()

    def feed(self, chunk: bytes | str) -> None:
        self.largest = max(self.largest, len(chunk))
        self.lines += self.splitter.feed(chunk)
        self.seen.set()

    def note(self, line: str) -> None:
        self.lines.append(line)

    def close(self) -> list[str]:
        self.lines += self.splitter.close()
        return self.lines


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({}, ["manage.py", "migrate", "--noinput", "--fake-initial", "-v", "2"], id="migrate"),
        pytest.param({"fake_initial": "false"}, ["manage.py", "migrate", "--noinput", "-v", "2"], id="migrate-no-fake"),
        pytest.param(
            {"args": "--verbosity 1"},
            ["manage.py", "migrate", "--noinput", "--fake-initial", "-v", "2", "--verbosity", "1"],
            id="migrate-own-verbosity-last",
        ),
        pytest.param({"command": "plan"}, ["manage.py", "migrate", "--plan"], id="plan"),
        pytest.param({"command": "check"}, ["manage.py", "migrate", "--plan"], id="check"),
        pytest.param(
            {"command": "showmigrations", "args": "--plan catalog"},
            ["manage.py", "showmigrations", "--plan", "catalog"],
            id="args",
        ),
        pytest.param(
            {"command": "custom", "args": "alembic upgrade 'head'"}, ["alembic", "upgrade", "head"], id="custom"
        ),
        pytest.param(
            {"manage_py": "src/manage.py", "command": "showmigrations"},
            ["src/manage.py", "showmigrations"],
            id="manage-py",
        ),
    ],
)
def test_command_argv(overrides: dict[str, str], expected: list[str]) -> None:
    assert command_argv(make_settings(**overrides)) == expected


def test_command_env_drops_inputs_and_sets_the_apps_settings() -> None:
    app = make_settings(
        database_url_env="DB_URL",
        django_settings_module="proj.settings.prod",
        secret_key="k3y",
        extra_env="FEATURE=on\nDATABASE_URL=kept",
    ).app
    env = command_env(app, URL, {"PATH": "/usr/bin", "INPUT_DB_PASSWORD": "pw", "HOME": "/root"})
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "PYTHONUNBUFFERED": "1",
        "FEATURE": "on",
        "DATABASE_URL": "kept",
        "DB_URL": URL,
        "DJANGO_SETTINGS_MODULE": "proj.settings.prod",
        "SECRET_KEY": "k3y",
        "PGOPTIONS": "-c idle_in_transaction_session_timeout=300000",
    }


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({}, "-c idle_in_transaction_session_timeout=300000", id="default"),
        pytest.param({"db_idle_in_transaction_timeout": "0"}, "", id="off"),
        pytest.param(
            {"db_idle_in_transaction_timeout": "10", "db_lock_timeout": "2.5", "db_statement_timeout": "0.0001"},
            "-c idle_in_transaction_session_timeout=10000 -c lock_timeout=2500 -c statement_timeout=1",
            id="all",
        ),
    ],
)
def test_pgoptions_carries_the_bounds_that_are_on(overrides: dict[str, str], expected: str) -> None:
    assert pgoptions(make_settings(**overrides).app.bounds) == expected


@pytest.mark.parametrize(
    ("environ", "extra_env", "expected"),
    [
        pytest.param({}, "", "-c lock_timeout=5000", id="ours-only"),
        pytest.param(
            {"PGOPTIONS": "-c search_path=app"}, "", "-c lock_timeout=5000 -c search_path=app", id="runner-env"
        ),
        pytest.param(
            {"PGOPTIONS": "-c search_path=app"},
            "PGOPTIONS=-c lock_timeout=0",
            "-c lock_timeout=5000 -c lock_timeout=0",  # the user's comes last, so it wins on the server
            id="extra-env-replaces-runner-env",
        ),
    ],
)
def test_command_env_puts_the_users_pgoptions_after_the_bounds(
    environ: dict[str, str], extra_env: str, expected: str
) -> None:
    app = make_settings(db_idle_in_transaction_timeout="0", db_lock_timeout="5", extra_env=extra_env).app
    assert command_env(app, URL, environ)["PGOPTIONS"] == expected


@pytest.mark.parametrize(
    ("environ", "extra_env", "expected"),
    [
        pytest.param({}, "", "bastion-migrate command 0a1b2c3d", id="named-by-the-action"),
        pytest.param({"PGAPPNAME": "billing"}, "", "billing", id="runner-env-names-them"),
        pytest.param({}, "PGAPPNAME=deploy", "deploy", id="extra-env-names-them"),
        pytest.param({"PGAPPNAME": ""}, "", "bastion-migrate command 0a1b2c3d", id="an-empty-name-is-none"),
    ],
)
def test_the_commands_sessions_are_named_by_the_action_unless_the_user_names_them(
    environ: dict[str, str], extra_env: str, expected: str
) -> None:
    # The name is how the action finds what a stopped command left busy on the server; it never takes the
    # user's own name over (sessions called that may be anyone's), so then it finds and ends nothing.
    app = make_settings(extra_env=extra_env).app
    assert command_env(app, URL, environ, "bastion-migrate command 0a1b2c3d")["PGAPPNAME"] == expected
    assert "PGAPPNAME" not in command_env(make_settings().app, URL, {}), "no name given: none set"


def test_no_pgoptions_when_every_bound_is_off_and_the_user_set_none() -> None:
    app = make_settings(db_idle_in_transaction_timeout="0").app
    assert "PGOPTIONS" not in command_env(app, URL, {})


def test_titles_name_the_interpreter_as_given_and_the_second_view(tmp_path: Path) -> None:
    parsed = make_settings(tmp_path, python=sys.executable, command="showmigrations")
    runner = local.prepare(parsed, {})
    argv = command_argv(parsed)
    assert title(parsed, runner, argv) == f"{sys.executable} manage.py showmigrations"
    compare = make_settings(tmp_path, mode="compare", command="showmigrations", image="reg.example.com/app:1")
    image = docker_runner.ImageRunner(None, None, compare, where="in the image")  # type: ignore[arg-type]
    assert title(compare, image, argv) == "in the image: python manage.py showmigrations"
    custom = make_settings(tmp_path, command="custom", args="alembic upgrade head")
    assert title(custom, local.prepare(custom, {}), command_argv(custom)) == "alembic upgrade head"


def test_prepare_names_a_missing_working_directory(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        local.prepare(make_settings(tmp_path, working_directory="nowhere"), {})
    assert (
        info.value.message
        == f"working-directory: expected an existing directory, {str(tmp_path / 'nowhere')!r} is not one"
    )


def test_prepare_names_a_missing_interpreter_but_a_custom_command_needs_none(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        local.prepare(make_settings(tmp_path, python="no-such-python-3.99"), {})
    assert info.value.message.startswith("python: expected an interpreter name on PATH or an absolute path")
    custom = local.prepare(make_settings(tmp_path, python="no-such-python-3.99", command="custom", args="true"), {})
    assert custom.python == ""


def test_a_relative_interpreter_path_is_found_in_the_working_directory(tmp_path: Path) -> None:
    venv_python = tmp_path / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(sys.executable)
    runner = local.prepare(make_settings(tmp_path, python=".venv/bin/python"), {})
    assert runner.python == str(venv_python)


MANAGE_PY = """\
import os, sys
print("argv", *sys.argv[1:])
print("url", os.environ["DATABASE_URL"])
print("inputs", sorted(name for name in os.environ if name.startswith("INPUT_")))
sys.stdout.write("no newline at the end")
sys.exit(int(os.environ.get("EXIT", "0")))
"""


async def run_local(tmp_path: Path, environ: dict[str, str], **overrides: str) -> tuple[int, list[str]]:
    (tmp_path / "manage.py").write_text(MANAGE_PY)
    runner = local.prepare(make_settings(tmp_path, python=sys.executable, **overrides), environ)
    output = Collected()
    code = await runner.run(["manage.py", "showmigrations"], database_url=URL, output=output)
    return code, output.close()


async def test_the_local_runner_runs_python_manage_py_with_the_url(tmp_path: Path) -> None:
    environ = {"PATH": os.environ["PATH"], "INPUT_SSH_PASSWORD": "pw", "EXIT": "3"}
    code, shown = await run_local(tmp_path, environ)
    assert code == 3
    assert shown == ["argv showmigrations", f"url {URL}", "inputs []", "no newline at the end"]


async def test_a_50_mb_line_is_read_to_the_real_exit_code_in_bounded_memory(tmp_path: Path) -> None:
    script = "import sys; sys.stdout.write('before\\n' + 'x' * 50_000_000 + '\\nafter\\n'); sys.exit(3)"
    output = Collected()
    tracemalloc.start()
    try:
        code = await local.run([sys.executable, "-c", script], cwd=tmp_path, env=dict(os.environ), output=output)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 3
    assert output.close() == ["before", "x" * LINE_HEAD + cut_marker(50_000_000 - LINE_HEAD), "after"]
    assert output.largest <= local.READ_CHUNK
    assert peak < 2 * MIB, peak  # measured: about 0.5 MiB


class Script:
    """A ``Runner`` for ``launch()``: a Python script run by ``local.run``."""

    where = ""

    def __init__(self, cwd: Path, code: str) -> None:
        self.cwd = cwd
        self.code = code

    def interpreter(self) -> str:
        return sys.executable

    async def ready(self) -> None:
        return

    async def run(
        self,
        argv: Sequence[str],
        *,
        database_url: str,
        output: Output,
        application_name: str = "",
    ) -> int:
        del argv, database_url, application_name  # the protocol's; unused here
        return await local.run([sys.executable, "-c", self.code], cwd=self.cwd, env=dict(os.environ), output=output)


async def test_a_partial_line_is_shown_while_the_command_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch_module, "PARTIAL_LINE_DELAY", 0.05)
    go = tmp_path / "go"
    script = (
        "import os, sys, time\n"
        "sys.stdout.write('  Applying orders.0003_big...'); sys.stdout.flush()\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        "print(' OK')\n"
    )
    stream = io.StringIO()
    launched = launch_module.launch(Console({}, stream), Script(tmp_path, script), [], "migrate", database_url=URL)
    waiting = asyncio.ensure_future(launched.wait())
    for _ in range(1000):  # at most 10 s
        if "  Applying orders.0003_big...\n" in stream.getvalue():
            break
        await asyncio.sleep(0.01)
    assert not waiting.done()  # shown while the command waits for us
    go.touch()
    assert await asyncio.wait_for(waiting, 10) == 0
    assert stream.getvalue().splitlines() == ["== migrate", "  Applying orders.0003_big...", "… OK"]
    assert list(launched.output) == ["  Applying orders.0003_big... OK"]


async def test_a_command_killed_by_a_signal_exits_as_a_shell_reports_it(tmp_path: Path) -> None:
    script = tmp_path / "die.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    code = await local.run([sys.executable, str(script)], cwd=tmp_path, env=dict(os.environ), output=Collected())
    assert code == 128 + signal.SIGKILL


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in {"Z", "X"}


async def test_cancelling_a_command_ends_its_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = tmp_path / "tree.py"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    output = Collected()
    running = asyncio.ensure_future(
        local.run([sys.executable, str(script)], cwd=tmp_path, env=dict(os.environ), output=output)
    )
    await asyncio.wait_for(output.seen.wait(), 10)
    parent, child = map(int, pids.read_text().split())
    assert alive(parent)
    assert alive(child)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not alive(parent)  # the command itself has been waited for
    # Its child got SIGKILL with the group; the kernel ends it when next scheduled.
    for _ in range(500):  # at most 5 s
        if not alive(child):
            break
        await asyncio.sleep(0.01)
    assert not alive(child)


def group_of_sleepers(tmp_path: Path) -> tuple[Path, str]:
    """A shell that ignores SIGTERM and leaves a child of its own session holding its stdout open."""
    pids = tmp_path / "pids"
    script = f"trap '' TERM; setsid sleep 60 & echo $$ $! > {pids}; echo ready; sleep 60"
    return pids, script


async def test_an_exit_is_seen_though_a_child_in_another_session_holds_the_pipe(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"setsid sleep 60 & echo $! > {pids}; echo done; exit 4"
    output = Collected()
    started = asyncio.get_running_loop().time()
    code = await asyncio.wait_for(
        local.run(["sh", "-c", script], cwd=tmp_path, env=dict(os.environ), output=output), 10
    )
    daemon = int(pids.read_text())
    try:
        assert code == 4
        assert output.close() == ["done"]
        assert asyncio.get_running_loop().time() - started < 2  # measured: about 0.25 s (the drain)
        assert alive(daemon)  # not this command's to end: end_descendants() does when the run ends
    finally:
        os.kill(daemon, signal.SIGKILL)


async def test_cancelling_a_command_that_ignores_sigterm_ends_it_and_its_other_sessions_after_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "TERMINATE_GRACE_SECONDS", 0.5)
    pids, script = group_of_sleepers(tmp_path)
    output = Collected()
    running = asyncio.ensure_future(local.run(["sh", "-c", script], cwd=tmp_path, env=dict(os.environ), output=output))
    await asyncio.wait_for(output.seen.wait(), 10)
    shell, daemon = map(int, pids.read_text().split())
    loop = asyncio.get_running_loop()
    cancelled_at = loop.time()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    took = loop.time() - cancelled_at
    assert 0.5 <= took < 1.5, took  # the grace, then SIGKILL; not a wait for the pipe to close
    assert not alive(shell)
    for _ in range(500):  # SIGKILLed; the kernel ends it when next scheduled
        if not alive(daemon):
            break
        await asyncio.sleep(0.01)
    assert not alive(daemon)


async def test_a_command_that_cannot_start_is_a_command_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError) as info:
        await local.run([str(tmp_path / "missing")], cwd=tmp_path, env={}, output=Collected())
    assert info.value.message == f"cannot start {tmp_path / 'missing'}: No such file or directory"


class FakeDaemon:
    """Stands in for the Docker daemon connection: records what the image runner asks it to run."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def run(self, image: docker_runner.PreparedImage, argv: list[str], **kwargs: Any) -> int:
        self.calls.append({"image": image, "argv": argv, **kwargs})
        kwargs["output"].feed("migrated\n")
        return 0


@pytest.mark.parametrize(("mode", "interpreter"), [("docker", "python3.12"), ("compare", "python")])
async def test_the_image_runner_waits_for_the_pull_and_uses_the_images_interpreter(mode: str, interpreter: str) -> None:
    parsed = make_settings(
        mode=mode, command="showmigrations", image="reg.example.com/app:1", python="python3.12", environment="dev"
    )
    daemon = FakeDaemon()
    pulled: asyncio.Future[docker_runner.PreparedImage] = asyncio.get_running_loop().create_future()
    runner = docker_runner.ImageRunner(daemon, pulled, parsed)  # type: ignore[arg-type]
    output = Collected()
    running = asyncio.ensure_future(runner.run(["manage.py", "showmigrations"], database_url=URL, output=output))
    await asyncio.sleep(0.05)
    assert daemon.calls == []  # no container before the image is there
    image = docker_runner.PreparedImage(image_id="sha256:" + "1" * 64, digest=None, pulled=True)
    pulled.set_result(image)
    assert await running == 0
    [call] = daemon.calls
    assert call["image"] is image
    assert call["argv"] == [interpreter, "manage.py", "showmigrations"]
    assert call["env"]["DATABASE_URL"] == URL
    assert "PATH" not in call["env"]  # the runner's environment stays on the runner
    assert call["labels"] == {"environment": "dev", "command": "showmigrations"}
    assert output.lines == ["migrated"]


async def test_one_database_ending_does_not_cancel_the_shared_pull() -> None:
    parsed = make_settings(mode="docker", image="reg.example.com/app:1")
    pulled: asyncio.Future[docker_runner.PreparedImage] = asyncio.get_running_loop().create_future()
    runner = docker_runner.ImageRunner(FakeDaemon(), pulled, parsed)  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(runner.run(["manage.py"], database_url=URL, output=Collected()))
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert not pulled.cancelled()
    pulled.cancel()


def test_docker_pure_parts() -> None:
    layers: dict[str, str] = {}
    assert (
        docker_runner._progress_line({"status": "Pulling from team/app", "id": "1"}, layers) == "Pulling from team/app"
    )
    assert docker_runner._progress_line({"status": "Downloading", "id": "abc"}, layers) is None
    assert docker_runner._progress_line({"status": "Pull complete", "id": "abc"}, layers) == "abc: Pull complete"
    assert docker_runner._progress_line({"status": "Pull complete", "id": "abc"}, layers) is None
    container = "a" * 64
    mountinfo = f"1 2 0:1 /docker/containers/{container}/hostname /etc/hostname rw - ext4 /dev/x rw\n"
    assert docker_runner.own_container_id(mountinfo) == container
    assert docker_runner.own_container_id("1 2 0:1 / / rw - ext4 /dev/x rw\n") is None


@pytest.mark.parametrize(
    ("message", "anchor", "start"),
    [
        ("unauthorized: authentication required", "registry-authentication", "the registry reg:5000 refused"),
        ("manifest unknown", "image-not-found", "reg:5000/app:1 was not found in reg:5000"),
        ("x509: certificate signed by unknown authority", "pull", "TLS with reg:5000 failed"),
        ("something else", "pull", "pulling reg:5000/app:1 failed: something else"),
    ],
)
def test_pull_errors_are_classified(message: str, anchor: str, start: str) -> None:
    error = docker_runner._classify(message, "reg:5000/app:1", "reg:5000")
    assert error.anchor == anchor
    assert error.message.startswith(start)


async def test_the_daemon_is_named_by_the_address_it_was_given(tmp_path: Path) -> None:
    socket_path = tmp_path / "docker.sock"
    import aiodocker  # noqa: PLC0415 - only this test needs the client itself

    async with aiodocker.Docker(url=f"unix://{socket_path}") as client:
        assert docker_runner.daemon_address(client) == f"unix://{socket_path}"
        error = docker_runner.DockerRunner(client)._unreachable("No such file or directory")
    assert error.message == f"cannot reach the Docker daemon at unix://{socket_path}: No such file or directory"


_DOCKERLIB_SCRIPT = """
import json, ssl, sys, threading
reference = ssl.create_default_context().cert_store_stats()["x509_ca"]
if sys.argv[1] == "thread":
    release = threading.Event()
    waiting = threading.Thread(target=release.wait)
    waiting.start()
import bastion_action.runners.docker
from aiohttp import connector
if sys.argv[1] == "thread":
    release.set()
verified = connector._SSL_CONTEXT_VERIFIED
print(json.dumps({
    "reference": reference,
    "verified_cas": verified.cert_store_stats()["x509_ca"],
    "verified_checks": verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname,
    "unverified_checks": connector._SSL_CONTEXT_UNVERIFIED.verify_mode != ssl.CERT_NONE,
    "restored": "set_default_verify_paths" not in vars(ssl.SSLContext),
    "after": ssl.create_default_context().cert_store_stats()["x509_ca"],
}))
"""


@pytest.mark.parametrize("threads", ["alone", "thread"])
def test_aiohttp_loads_without_the_ca_bundle_and_its_unused_default_context_trusts_nothing(threads: str) -> None:
    # A fresh interpreter, so this import is aiohttp's first: its two default TLS contexts read the
    # system's CA bundle (about 45 ms of every docker-mode run) though the action never uses them.
    done = subprocess.run(
        [sys.executable, "-c", _DOCKERLIB_SCRIPT, threads], capture_output=True, text=True, check=True, cwd=ROOT
    )
    found = json.loads(done.stdout)
    reference = found.pop("reference")
    skipped = threads == "alone"  # with another thread running, a context it made must get the bundle: untouched
    assert found == {
        "verified_cas": 0 if skipped else reference,  # fails closed: verifies, against no certificate at all
        "verified_checks": True,
        "unverified_checks": False,
        "restored": True,
        "after": reference,
    }
