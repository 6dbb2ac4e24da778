"""Pure parsing of the reference syntaxes inputs use: hosts, host key fingerprints, databases, images, registries."""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

from bastion_action.errors import input_error


def _entries(text: str) -> list[str]:
    """The non-empty entries of a list input: separated by commas or newlines."""
    return [entry for item in re.split(r"[,\n]", text) if (entry := item.strip())]


@dataclasses.dataclass(frozen=True)
class JumpHost:
    user: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


_HOP = re.compile(r"(?:(?P<user>[^@\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^@:\s\[\]]+)(?::(?P<port>[0-9]{1,5}))?")


def parse_jump_hosts(text: str, default_user: str) -> tuple[JumpHost, ...]:
    hops = []
    for hop in _entries(text):
        match = _HOP.fullmatch(hop)
        port = int(match["port"]) if match and match["port"] else 22
        if not match or not 1 <= port <= 65535:  # noqa: PLR2004
            raise input_error("ssh-jump-hosts", "[user@]host[:port] entries separated by commas or newlines", hop)
        hops.append(JumpHost(user=match["user"] or default_user, host=match["host"].strip("[]"), port=port))
    return tuple(hops)


_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}=?")


def parse_fingerprints(text: str) -> tuple[str, ...]:
    """``ssh-host-fingerprint``: ``SHA256:<base64>`` entries separated by commas, spaces or newlines."""
    fingerprints = tuple(re.split(r"[\s,]+", text.strip())) if text else ()
    for fingerprint in fingerprints:
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise input_error(
                "ssh-host-fingerprint", "SHA256:<43 base64 characters>, as `ssh-keygen -lf` prints it", fingerprint
            )
    return fingerprints


class DatabaseTarget(NamedTuple):
    """One entry of ``databases``, with what it left out filled in."""

    host: str
    port: int
    name: str


_TARGET = re.compile(r"(?:(?P<host>[^/:\s]+)(?::(?P<port>[0-9]{1,5}))?/)?(?P<name>[^/\s,]+)")


def parse_databases(text: str, default_host: str, default_port: int) -> tuple[DatabaseTarget, ...]:
    """``databases``: ``[host[:port]/]name`` entries, each database once."""
    targets: list[DatabaseTarget] = []
    for entry in _entries(text):
        match = _TARGET.fullmatch(entry)
        port = int(match["port"]) if match and match["port"] else default_port
        if not match or not 1 <= port <= 65535:  # noqa: PLR2004
            raise input_error("databases", "[host[:port]/]name entries separated by commas or newlines", entry)
        target = DatabaseTarget(host=match["host"] or default_host, port=port, name=match["name"])
        if target in targets:
            raise input_error("databases", "each database once", entry)
        targets.append(target)
    return tuple(targets)


@dataclasses.dataclass(frozen=True)
class ImageReference:
    """``[registry[:port]/]path[:tag][@sha256:digest]``, split as the Docker CLI does."""

    repository: str  # with the registry host when the reference had one
    tag: str | None
    digest: str | None

    @property
    def registry(self) -> str:
        first, sep, _ = self.repository.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            return first
        return "docker.io"

    def __str__(self) -> str:
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"(?P<repository>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")


def parse_image_reference(image: str, default_tag: str) -> ImageReference:
    """The image to run: ``image`` as given, with ``image-tag`` appended when it has neither tag nor digest."""
    match = _REFERENCE.fullmatch(image)
    first, sep, _ = image.partition("/")
    if match and sep and first != first.lower() and not ("." in first or ":" in first):
        match = None  # an upper-case first component is only allowed as a registry host
    if not match:
        raise input_error(
            "image", "an image reference like registry.example.com/team/app[:tag][@sha256:<64 hex>]", image
        )
    tag, digest = match["tag"], match["digest"]
    if not tag and not digest:
        if not _TAG.fullmatch(default_tag):
            raise input_error("image-tag", "a tag: letters, digits, '_', '.', '-', at most 128", default_tag)
        tag = default_tag
    return ImageReference(repository=match["repository"], tag=tag, digest=digest)


def is_registry_host(text: str) -> bool:
    """``host[:port]``, as the registry part of an image reference."""
    return re.fullmatch(_DOMAIN, text) is not None


DIGITALOCEAN_REGISTRY = "registry.digitalocean.com"
# The names Docker Hub answers to; an image without a host is on it.
_DOCKER_HUB = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def same_registry(first: str, second: str) -> bool:
    """Both ``host[:port]`` name the same registry (host names are case-insensitive; Docker Hub has aliases)."""
    keys = ["docker.io" if host.lower() in _DOCKER_HUB else host.lower() for host in (first, second)]
    return keys[0] == keys[1]


def is_digitalocean(registry: str) -> bool:
    """DigitalOcean's registry itself: its access token opens much more than the registry, so no look-alike."""
    return registry.lower() == DIGITALOCEAN_REGISTRY
