"""Docker mode against the lab: TLS registry with auth, the production image, host networking."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support import (
    ROOT,
    SAMPLE_MIGRATIONS,
    ActionRun,
    admin_sql,
    assert_failed_in,
    finish_action,
    parse_output_file,
    processes_mentioning,
    start_action,
    with_docker,
)

LABEL = "io.github.bastion-migrate.command"


def containers() -> set[str]:
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL}"], capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


@pytest.fixture
def docker_inputs(base_inputs, lab):
    before = containers()
    yield with_docker(base_inputs, lab)
    assert containers() == before, "a container of the run was left behind"


@pytest.fixture
def secrets(secrets, lab):  # the registry password joins the scanned secrets
    return [*secrets, lab["registry_password"]]


def test_pull_with_credentials_then_migrate(action, docker_inputs, lab, fresh_db) -> None:
    reference = f"{lab['image']}:{lab['image_tag']}"
    subprocess.run(["docker", "rmi", "-f", reference], capture_output=True, check=False)
    run = action({**docker_inputs, "command": "migrate"})
    assert run.returncode == 0, run.explain()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", run.outputs["image-digest"])
    assert "::group::pull " in run.stdout
    assert "Pull complete" in run.stdout
    assert run.stdout.count("Applying ") == len(SAMPLE_MIGRATIONS)
    assert int(admin_sql(lab, "SELECT count(*) FROM django_migrations", fresh_db)) == len(SAMPLE_MIGRATIONS)
    assert run.outputs["image-digest"] in run.summary
    assert "| pull |" in run.summary

    show = action({**docker_inputs, "command": "showmigrations"})
    assert show.returncode == 0, show.explain()
    assert show.stdout.count("[X]") == len(SAMPLE_MIGRATIONS)
    assert "pulled" not in show.stdout.split("image:")[1].splitlines()[0], "a present image is not pulled again"
    assert show.outputs["image-digest"] == run.outputs["image-digest"]


def test_pull_never_with_the_image_absent(action, docker_inputs) -> None:
    run = action(
        {**docker_inputs, "command": "showmigrations", "pull": "never", "image-tag": "absent-" + uuid.uuid4().hex[:8]}
    )
    assert_failed_in(run, "pull")
    assert "pull is 'never'" in run.annotations[0]


def test_wrong_registry_password(action, docker_inputs) -> None:
    run = action(
        {**docker_inputs, "command": "showmigrations", "pull": "always", "registry-password": "wrong-password"}
    )
    assert_failed_in(run, "pull")
    assert "refused the credentials" in run.annotations[0]


def test_tag_that_does_not_exist(action, docker_inputs) -> None:
    run = action({**docker_inputs, "command": "showmigrations", "image-tag": "no-such-tag-" + uuid.uuid4().hex[:8]})
    assert_failed_in(run, "pull")
    assert "not found" in run.annotations[0]


def test_failing_migration_in_the_image(action, docker_inputs) -> None:
    run = action({**docker_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_FAIL=1"})
    assert_failed_in(run, "command")
    assert run.outputs["exit-code"] == "1"
    assert "failing on purpose" in run.summary


def test_wrong_docker_host_fails_in_the_pull_stage(action, docker_inputs) -> None:
    run = action(
        {**docker_inputs, "command": "showmigrations"}, extra_env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    )
    assert_failed_in(run, "pull")
    assert "/nonexistent/docker.sock" in run.annotations[0]


def test_sigterm_removes_the_container_and_keeps_secrets_out_of_it(docker_inputs, secrets, fresh_db, tmp_path) -> None:
    inputs = {**docker_inputs, "command": "migrate", "extra-env": "SAMPLE_MIGRATION_SLEEP=60"}
    started = time.monotonic()
    process = start_action(inputs, tmp_path)
    deadline = time.monotonic() + 60
    running: set[str] = set()
    while time.monotonic() < deadline and not running:
        time.sleep(0.3)
        running = containers()
    assert running, "the container never started"
    time.sleep(2)
    inspected = json.loads(
        subprocess.run(["docker", "inspect", *running], capture_output=True, text=True, check=True).stdout
    )
    visible = json.dumps(
        [{k: c["Config"][k] for k in ("Cmd", "Labels", "Entrypoint")} | {"Name": c["Name"]} for c in inspected]
    )
    assert not [secret for secret in secrets if secret in visible]
    assert inspected[0]["HostConfig"]["NetworkMode"] == "host"
    os.kill(process.pid, signal.SIGTERM)
    cancelled_at = time.monotonic()
    run = finish_action(process, tmp_path, started, timeout=30)
    assert time.monotonic() - cancelled_at < 10, run.explain()
    assert run.returncode == 128 + signal.SIGTERM
    assert not containers() & running
    assert processes_mentioning(fresh_db) == []


def test_job_container_shares_its_network_with_the_migration(docker_inputs, tmp_path, secrets) -> None:
    """The job itself in a container (`container:` in a workflow): 127.0.0.1 must still be the tunnel."""
    venv = Path(sys.prefix)
    base_python = Path(sys.executable).resolve()
    pyenv_root = next(parent for parent in base_python.parents if parent.name == "versions").parent
    workdir = tmp_path / "job"
    workdir.mkdir()
    (workdir / "output").write_text("")
    (workdir / "summary").write_text("")
    env = {
        **{"INPUT_" + name.upper().replace("-", "_"): value for name, value in docker_inputs.items()},
        "INPUT_COMMAND": "showmigrations",
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": f"{workdir}/output",
        "GITHUB_STEP_SUMMARY": f"{workdir}/summary",
        "GITHUB_WORKSPACE": str(workdir),
    }
    env_file = tmp_path / "job.env"  # secrets go in a file, never on docker's command line
    env_file.touch(mode=0o600)
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items() if "\n" not in value))
    done = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--env-file",
            str(env_file),
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            f"{pyenv_root}:{pyenv_root}:ro",
            "-v",
            f"{venv}:{venv}:ro",
            "-v",
            f"{ROOT}:{ROOT}:ro",
            "-v",
            f"{workdir}:{workdir}",
            "bmlab/base:bookworm",
            f"{venv}/bin/python",
            f"{ROOT}/entrypoint.py",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    run = ActionRun(
        returncode=done.returncode,
        stdout=done.stdout,
        stderr=done.stderr,
        outputs=parse_output_file((workdir / "output").read_text()),
        summary=(workdir / "summary").read_text(),
        seconds=0,
    )
    assert run.returncode == 0, run.explain()
    assert re.search(r"network container:[0-9a-f]{64}", run.stdout), run.explain()
    assert "[ ] 0001_initial" in run.stdout
    assert not run.leaks(secrets)


def test_compare_mode_agrees_when_built_from_the_same_code(action, docker_inputs, lab) -> None:
    inputs = {
        **docker_inputs,
        "mode": "compare",
        "python": lab["runner_python"],
        "working-directory": lab["sample_project"],
    }
    run = action({**inputs, "command": "showmigrations"})
    assert run.returncode == 0, run.explain()
    assert "Runner and image agree on every migration." in run.summary


def test_compare_mode_shows_the_drift(action, docker_inputs, lab, tmp_path) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(lab["sample_project"], checkout, ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "catalog/migrations/0003_newer_than_the_image.py").write_text(
        "from django.db import migrations\n\n\n"
        "class Migration(migrations.Migration):\n"
        "    dependencies = [('catalog', '0002_product_sku')]\n"
        "    operations = []\n"
    )
    inputs = {**docker_inputs, "mode": "compare", "python": lab["runner_python"], "working-directory": str(checkout)}
    run = action({**inputs, "command": "showmigrations"})
    assert_failed_in(run, "command")
    assert "catalog.0003_newer_than_the_image only on the runner" in run.annotations[0]
    assert "The runner and the image differ" in run.summary
    assert run.outputs["exit-code"] == "1"
    # The migration outputs come from the runner's view, drift or not.
    catalog = json.loads(run.outputs["migrations"])["catalog"]
    assert [migration["name"] for migration in catalog][-1] == "0003_newer_than_the_image"
    assert "| command exit code | 1 |" in run.summary
    wrong = action({**inputs, "command": "migrate"})
    assert_failed_in(wrong, "settings")
    assert "command: expected showmigrations with mode: compare" in wrong.annotations[0]


def test_compare_mode_names_the_image_when_its_view_fails(action, docker_inputs, lab, tmp_path) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(lab["sample_project"], checkout, ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "sampleproject/runner_only.py").write_text("from sampleproject.settings import *  # noqa\n")
    inputs = {
        **docker_inputs,
        "mode": "compare",
        "python": lab["runner_python"],
        "working-directory": str(checkout),
        "django-settings-module": "sampleproject.runner_only",  # not in the image
        "command": "showmigrations",
    }
    run = action(inputs)
    assert_failed_in(run, "command")
    assert "in the image: `manage.py showmigrations` exited with code 1: ModuleNotFoundError" in run.annotations[0]
    assert "The image's view's last lines of output are in the step summary." in run.annotations[0]
    assert "ModuleNotFoundError" in run.summary  # its last lines, not the runner's listing
    assert json.loads(run.outputs["migrations"])["catalog"], "the migration outputs are the runner's view"


# Passes the Docker API through, holding back the daemon's answer to a container create as a busy daemon would.
_SLOW_CREATE_PROXY = r"""
import asyncio, os, re, sys
listen, delay = sys.argv[1], float(sys.argv[2])

async def handle(client_reader, client_writer):
    daemon_reader, daemon_writer = await asyncio.open_unix_connection("/var/run/docker.sock")
    creating = asyncio.Event()

    async def up():
        while data := await client_reader.read(65536):
            if re.search(rb"^POST /[^ ]*containers/create", data, re.M):
                creating.set()
                print("create held", flush=True)
            daemon_writer.write(data)
            await daemon_writer.drain()
        daemon_writer.write_eof()

    async def down():
        while data := await daemon_reader.read(65536):
            if creating.is_set():
                creating.clear()
                await asyncio.sleep(delay)
            client_writer.write(data)
            await client_writer.drain()
        client_writer.close()

    await asyncio.gather(up(), down(), return_exceptions=True)

async def main():
    server = await asyncio.start_unix_server(handle, listen)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def test_a_cancel_while_the_engine_creates_the_container_leaves_none_behind(docker_inputs, tmp_path) -> None:
    # The engine creates the container whatever became of the request; never started, AutoRemove never removes
    # it, and it holds the command's environment (the database URL with its password, SECRET_KEY).
    socket_path = tmp_path / "slow-docker.sock"
    proxy = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CREATE_PROXY, str(socket_path), "2"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proxy.stdout is not None
        assert proxy.stdout.readline().strip() == "listening"
        started = time.monotonic()
        process = start_action(
            {**docker_inputs, "command": "showmigrations"}, tmp_path, extra_env={"DOCKER_HOST": f"unix://{socket_path}"}
        )
        assert proxy.stdout.readline().strip() == "create held"
        time.sleep(0.3)  # the engine has the request; its answer is held back
        os.kill(process.pid, signal.SIGTERM)
        run = finish_action(process, tmp_path, started, timeout=20)
    finally:
        proxy.kill()
        proxy.communicate()
    assert run.returncode == 128 + signal.SIGTERM, run.explain()
    assert "cancelled: the run was stopped and its resources released" in run.stdout
    # docker_inputs checks that no container of the run is left, created or running
