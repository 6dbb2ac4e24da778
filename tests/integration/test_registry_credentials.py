"""Registry credentials reach only the image's own registry: a fake registry logs what the daemon sends it."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support import assert_failed_in

TOKEN = "dop_v1_fake0123456789abcdef"  # a made-up DigitalOcean token


class FakeRegistry(ThreadingHTTPServer):
    """Answers every request 401 with a Basic challenge, and keeps every Authorization header it got."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str]] = []  # (path, Authorization)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def credentials(self) -> list[str]:
        """What the Authorization headers carried, Basic auth decoded."""
        seen = []
        for _, header in self.requests:
            scheme, _, value = header.partition(" ")
            seen.append(header)
            if scheme.lower() == "basic":
                with contextlib.suppress(binascii.Error, ValueError):
                    seen.append(base64.b64decode(value).decode(errors="replace"))
        return seen


class _Handler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Authorization", "")))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="x"')
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET  # noqa: N815 - the name http.server dispatches HEAD to

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def docker_inputs(base_inputs, registry) -> dict[str, str]:
    """A docker-mode run of an image on the fake registry, DO_ACCESS_TOKEN among the secrets."""
    return {
        **base_inputs,
        "mode": "docker",
        "command": "showmigrations",
        "python": "",
        "working-directory": "",
        "image": f"{registry.host}/team/app:1",
        "pull": "always",
        "secrets": json.dumps({"DO_ACCESS_TOKEN": TOKEN, "github_token": "ghs_unrelated"}),
    }


def assert_token_never_sent(run, registry: FakeRegistry) -> None:
    assert not [seen for seen in registry.credentials() if TOKEN in seen], registry.requests
    assert not run.leaks([TOKEN]), run.explain()


def test_registry_naming_digitalocean_does_not_send_the_token_elsewhere(action, docker_inputs, registry) -> None:
    run = action({**docker_inputs, "registry": "registry.digitalocean.com"})
    assert_failed_in(run, "settings")
    assert f"registry is registry.digitalocean.com but image is on {registry.host}" in run.stdout, run.explain()
    assert registry.requests == [], "refused before the daemon was asked for anything"
    assert_token_never_sent(run, registry)


def test_the_token_is_not_offered_to_another_registry(action, docker_inputs, registry) -> None:
    run = action(docker_inputs)
    assert_failed_in(run, "pull")
    assert registry.requests, "the daemon did ask the fake registry"
    assert_token_never_sent(run, registry)


def test_explicit_credentials_do_reach_the_image_registry(action, docker_inputs, registry) -> None:
    """The control: the fake registry does see credentials the daemon sends, so the two tests above can fail."""
    credentials = {"registry-username": "team-user", "registry-password": "team-registry-pw"}
    run = action({**docker_inputs, **credentials})
    assert_failed_in(run, "pull")
    assert "team-user:team-registry-pw" in registry.credentials(), registry.requests
    assert_token_never_sent(run, registry)
    assert not run.leaks(["team-registry-pw"]), run.explain()
