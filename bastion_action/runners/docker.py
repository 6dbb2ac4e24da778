"""Docker mode: registry login and pull, then the command in the image (aiodocker only, from dockerlib)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion_action import aio, cafile
from bastion_action.dockerlib import aiodocker, aiohttp
from bastion_action.errors import CommandError, PullError
from bastion_action.runners import Output, command_env, with_interpreter
from bastion_action.settings import ImageSettings, Mode, PullPolicy, Settings

if TYPE_CHECKING:
    from aiodocker.types import JSONObject

LABEL_PREFIX = "io.github.bastion-migrate"
# A cancel sends SIGTERM, then SIGKILL this long after, as `docker stop -t 3`: with the rest of the
# clean-up and the requests' own bounds below, a cancelled run must end within 10 s.
STOP_GRACE_SECONDS = 3.0
SIGNAL_TIMEOUT_SECONDS = 1.0
REMOVE_TIMEOUT_SECONDS = 4.0
# Layer states worth a line each; byte-level "Downloading"/"Extracting" progress is dropped.
_LAYER_STATES = frozenset({"Pulling fs layer", "Already exists", "Download complete", "Pull complete"})
_CONTAINER_ID = re.compile(r"/(?:docker/)?containers/([0-9a-f]{64})/")
_CANNOT_CONNECT = 900  # aiodocker's status for "Cannot connect to Docker Engine" (an aiohttp connection error)


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    image_id: str
    digest: str | None
    pulled: bool


def own_container_id(mountinfo: str) -> str | None:
    """The id of the container this process runs in (a job container), from /proc/self/mountinfo."""
    match = _CONTAINER_ID.search(mountinfo)
    return match.group(1) if match else None


def _classify(message: str, reference: str, registry: str) -> PullError:
    lowered = message.lower()
    if any(word in lowered for word in ("unauthorized", "authentication required", "no basic auth", "denied")):
        return PullError(
            f"the registry {registry} refused the credentials for {reference}: {message}",
            hint="Check registry-username / registry-password (DigitalOcean: the access token as both) "
            "and that the token may read this repository.",
            anchor="registry-authentication",
        )
    if any(word in lowered for word in ("manifest unknown", "not found", "does not exist")):
        return PullError(
            f"{reference} was not found in {registry}: {message}",
            hint="Check image and image-tag: was this tag pushed (by the build job) before this run?",
            anchor="image-not-found",
        )
    if any(word in lowered for word in ("x509", "certificate", "tls")):
        return PullError(
            f"TLS with {registry} failed: {message}",
            hint="The Docker daemon must trust the registry's certificate (/etc/docker/certs.d/HOST:PORT/ca.crt).",
        )
    return PullError(f"pulling {reference} failed: {message}", hint="See the message; check image and registry.")


class DockerRunner:
    """One daemon connection for a run; every container it starts is removed."""

    def __init__(self, docker: aiodocker.Docker) -> None:
        self.docker = docker

    @property
    def daemon(self) -> str:
        return daemon_address(self.docker)

    def _unreachable(self, exc: BaseException | str) -> PullError:
        if isinstance(exc, str) and exc.endswith("]") and " [" in exc:
            exc = exc.partition(" [")[2][:-1]  # aiodocker's "Cannot connect to Docker Engine via X [reason]"
        return PullError(
            f"cannot reach the Docker daemon at {self.daemon}: {exc}",
            hint="Start the Docker engine on the runner, or point DOCKER_HOST at it.",
            anchor="docker-daemon",
        )

    async def network_mode(self) -> str:
        """``host`` on a plain runner; the job container's own namespace inside a job container.

        Inside a ``container:`` job the tunnel listens on the job container's loopback,
        which the daemon's host network cannot see. When this process runs in a
        container *of the same daemon*, the migration container joins that
        container's network namespace, so ``127.0.0.1:<tunnel-port>`` is the same
        socket for both. (A runner that is itself a container with its own daemon
        inside is a plain host for that daemon.)
        """
        container = _own_container_id_if_containerised()
        if container is None:
            return "host"
        try:
            await self.docker.containers.get(container)
        except aiodocker.DockerError:
            return "host"
        return f"container:{container}"

    async def _inspect(self, reference: str) -> dict[str, Any] | None:
        try:
            return await self.docker.images.inspect(reference)
        except aiodocker.DockerError as exc:
            if exc.status == 404:  # noqa: PLR2004 - HTTP Not Found
                return None
            raise

    async def prepare(
        self, image: ImageSettings, on_line: Callable[[str], None], before_registry: Callable[[], Awaitable[object]]
    ) -> PreparedImage:
        """Make the image present per ``pull`` policy; return its id and registry digest.

        ``before_registry`` is awaited before the registry is contacted (the settings are validated by then).
        """
        reference = str(image.reference)
        try:
            present = await self._inspect(reference)
            pulled = False
            if image.pull is PullPolicy.ALWAYS or (present is None and image.pull is PullPolicy.MISSING):
                await before_registry()
                await self._pull(image, on_line)
                pulled = True
                present = await self._inspect(reference)
        except aiodocker.DockerStreamError as exc:
            raise _classify(exc.message, reference, image.registry) from exc
        except aiodocker.DockerError as exc:
            if exc.status == _CANNOT_CONNECT:
                raise self._unreachable(exc.message) from exc
            raise _classify(f"{exc.status} {exc.message}", reference, image.registry) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(exc) from exc
        if present is None:
            policy = "pull is 'never'" if image.pull is PullPolicy.NEVER else "the pull did not produce it"
            raise PullError(
                f"{reference} is not on this runner and {policy}",
                hint="Set pull: missing (the default) or pull the image in an earlier step.",
                anchor="image-not-found",
            )
        return PreparedImage(image_id=str(present["Id"]), digest=_digest(present, image), pulled=pulled)

    async def _pull(self, image: ImageSettings, on_line: Callable[[str], None]) -> None:
        auth = None
        if image.username and image.password:
            auth = {"username": image.username, "password": image.password, "serveraddress": image.registry}
        reference = str(image.reference)
        if auth and image.reference.registry == "docker.io" and not reference.startswith("docker.io/"):
            reference = "docker.io/" + reference  # aiodocker wants the host in the name to send credentials
        layers: dict[str, str] = {}
        async for event in self.docker.images.pull(reference, auth=auth, stream=True):
            line = _progress_line(event, layers)
            if line:
                on_line(line)

    async def run(
        self,
        image: PreparedImage,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        labels: Mapping[str, str],
        output: Output,
        files: bytes | None = None,
    ) -> int:
        """Run ``argv`` in the image with host networking; stream its output; never leave the container behind.

        The engine removes the container when it exits (``docker run --rm``), so none
        survives this process even if it is killed; a cancel stops it as ``docker stop``
        does: SIGTERM, then SIGKILL after STOP_GRACE_SECONDS. ``files``: a tar extracted
        at ``/`` before the command starts (the database's CA certificate).
        """
        network = await self.network_mode()
        config: JSONObject = {
            "Image": image.image_id,
            "Cmd": list(argv),
            "Env": [f"{name}={value}" for name, value in env.items()],
            "Labels": {f"{LABEL_PREFIX}.{name}": value for name, value in labels.items()},
            "Tty": False,
            "AttachStdout": True,
            "AttachStderr": True,
            "HostConfig": {"NetworkMode": network, "Init": True, "AutoRemove": True},
        }
        name = f"bastion-migrate-{uuid.uuid4().hex[:12]}"
        output.note(f"container {name}: network {network}")
        creating = asyncio.ensure_future(self.docker.containers.create(config=config, name=name))
        try:
            container = await asyncio.shield(creating)
        except aiodocker.DockerError as exc:
            if exc.status == _CANNOT_CONNECT:
                unreachable = self._unreachable(exc.message)
                raise CommandError(unreachable.message, hint=unreachable.hint, anchor="docker-daemon") from exc
            raise CommandError(f"cannot create the container: {exc.message}", hint="See the Docker message.") from exc
        except (aiohttp.ClientError, OSError) as exc:
            await aio.to_the_end(self._discard(creating, name))  # the request broke: the engine may have created it
            unreachable = self._unreachable(exc)
            raise CommandError(unreachable.message, hint=unreachable.hint, anchor="docker-daemon") from exc
        except asyncio.CancelledError:
            await aio.to_the_end(self._discard(creating, name))
            raise
        registered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        removed = asyncio.ensure_future(self._wait_removed(container, registered))
        started = False
        try:
            if files:
                await container.put_archive("/", files)  # type: ignore[no-untyped-call]  # unannotated in aiodocker
            # Attached before it starts, nothing is missed; and attached rather than following its log, as
            # `docker run` does, its output comes as written (the log holds an unfinished line back).
            async with container.attach(stdout=True, stderr=True) as stream:
                either: list[asyncio.Future[Any]] = [registered, removed]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if not registered.done():
                    removed.result()  # the wait failed before it was registered: its error
                await container.start()
                started = True
                while message := await stream.read_out():
                    output.feed(message.data)
            return await asyncio.shield(removed)  # a cancel here must leave the wait to _end()
        finally:
            # However often the run is cancelled meanwhile.
            await aio.to_the_end(self._end(container, removed, started=started))

    async def _discard(self, creating: asyncio.Future[Any], name: str) -> None:
        """A create the run did not see through: the engine creates the container all the same (holding the
        command's environment: the database URL, SECRET_KEY) and, never started, AutoRemove never removes it.

        Its answer is awaited (bounded), then the container removed by its name, whatever the answer was.
        """
        with contextlib.suppress(Exception):
            await asyncio.wait_for(creating, REMOVE_TIMEOUT_SECONDS)
        await aio.stop(creating)
        with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError):
            await self.docker.containers.container(name).delete(force=True, timeout=REMOVE_TIMEOUT_SECONDS)

    async def _wait_removed(self, container: aiodocker.docker.DockerContainer, registered: asyncio.Future[None]) -> int:
        """The exit code, once the engine has removed the container (``docker run --rm`` waits the same way).

        With AutoRemove the exit code goes with the container, so the wait must be in place
        before the start: the engine answers with the headers once it has registered the wait,
        and ``registered`` is set then. aiodocker's ``wait()`` returns only the whole answer, so
        this is the second internal of aiodocker this module uses (``_query``, as ``wait()``
        itself does; aiodocker 0.27.0).
        """
        async with self.docker._query(  # noqa: SLF001 - see the docstring
            f"containers/{container.id}/wait", method="POST", params={"condition": "removed"}, timeout=None
        ) as response:
            registered.set_result(None)
            status = await response.json()
        return int(status["StatusCode"])

    async def _end(
        self, container: aiodocker.docker.DockerContainer, removed: asyncio.Future[Any], *, started: bool
    ) -> None:
        """Stop the container as ``docker stop`` would, unless it has ended; make sure it is gone."""
        try:
            if started and not removed.done():
                with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError):
                    await container.kill(signal="SIGTERM", timeout=SIGNAL_TIMEOUT_SECONDS)
                await asyncio.wait({removed}, timeout=STOP_GRACE_SECONDS)
            if not removed.done() or removed.cancelled() or removed.exception() is not None:
                # Never started, or still running, or the wait failed: remove it now (404 if it is gone already).
                with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError):
                    await container.delete(force=True, timeout=REMOVE_TIMEOUT_SECONDS)
        finally:
            await aio.stop(removed)


@dataclasses.dataclass(frozen=True)
class ImageRunner:
    """The production image: the command in a container of it, once the pull (shared by every database) is done."""

    daemon: DockerRunner
    image: asyncio.Future[PreparedImage]  # the run's one pull; awaited by each command before its container starts
    settings: Settings
    where: str = ""

    def interpreter(self) -> str:
        # In compare mode the `python` input names the runner's interpreter; the image has its own.
        return self.settings.app.python if self.settings.mode is Mode.DOCKER else "python"

    async def ready(self) -> None:
        await asyncio.shield(self.image)  # one database's end must not cancel the others' pull

    async def run(
        self,
        argv: Sequence[str],
        *,
        database_url: str,
        output: Output,
        application_name: str = "",
    ) -> int:
        image = await asyncio.shield(self.image)  # one database's end must not cancel the others' pull
        env = command_env(self.settings.app, database_url, {}, application_name)
        labels = {"environment": self.settings.environment, "command": self.settings.command.value}
        argv = with_interpreter(self.settings, self.interpreter(), argv)
        files = cafile.archive_for(database_url)
        return await self.daemon.run(image, argv, env=env, labels=labels, output=output, files=files)


def daemon_address(docker: aiodocker.Docker) -> str:
    """The daemon's address as configured (``unix:///var/run/docker.sock``, ``tcp://...``), for messages.

    An internal of aiodocker (see also ``_wait_removed``): its public ``docker_host`` says
    ``unix://localhost`` for any socket; the address as given is kept in ``_connection_info``
    (aiodocker 0.27.0; tests/unit/test_runners.py notices if that changes).
    """
    return str(getattr(docker, "_connection_info", None) or docker.docker_host)


def _own_container_id_if_containerised() -> str | None:
    if not Path("/.dockerenv").exists():
        return None
    try:
        return own_container_id(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return None


def _digest(inspected: Mapping[str, Any], image: ImageSettings) -> str | None:
    if image.reference.digest:
        return image.reference.digest
    digests = [str(entry) for entry in inspected.get("RepoDigests") or []]
    repository = image.reference.repository
    for entry in digests:
        name, _, digest = entry.partition("@")
        if name == repository or name.endswith("/" + repository):
            return digest
    return digests[0].partition("@")[2] if digests else None


def _progress_line(event: Mapping[str, Any], layers: dict[str, str]) -> str | None:
    status = str(event.get("status", ""))
    layer = event.get("id")
    if not layer or status.startswith(("Pulling from", "Digest")):
        return status or None
    if status in _LAYER_STATES and layers.get(str(layer)) != status:
        layers[str(layer)] = status
        return f"{layer}: {status}"
    return None


@contextlib.asynccontextmanager
async def connect() -> AsyncIterator[DockerRunner]:
    """A daemon connection that honours DOCKER_HOST as the Docker CLI does."""
    try:
        docker = aiodocker.Docker()
    except (ValueError, OSError) as exc:
        raise PullError(
            f"no Docker daemon found: {exc}",
            hint="Start the Docker engine on the runner, or point DOCKER_HOST at it.",
            anchor="docker-daemon",
        ) from exc
    async with docker:
        yield DockerRunner(docker)
