"""aiodocker, loaded without aiohttp reading the system's CA bundle twice.

At import, aiohttp builds its two default TLS client contexts (a verified one and an
unverified one), and each loads the system's CA bundle: about 45 ms of every docker-mode
run, spent before the first request to the daemon. The action never uses them. The daemon
is reached over its Unix socket, or over TCP with the context aiodocker builds from
``DOCKER_CERT_PATH`` or the Docker context's certificates (after this import, so with the
bundle); registries are contacted by the daemon, not by this process.

So while aiohttp loads, those two contexts are made without the bundle. The verified one
then trusts no certificate: a request that ever fell back to it would fail verification,
never pass unverified. The unverified one never looked at certificates.

Only with no other thread running: the change is to ``ssl.SSLContext`` itself, and a TLS
context another thread made meanwhile (the probe's, say) must get the bundle. Modules that
use aiodocker or aiohttp import them from here: ``from bastion_action.dockerlib import aiodocker, aiohttp``.
"""

from __future__ import annotations

import ssl
import threading
from types import ModuleType
from typing import TYPE_CHECKING

_METHOD = "set_default_verify_paths"


def _without_default_paths(_context: ssl.SSLContext) -> None:
    pass


def _load() -> tuple[ModuleType, ModuleType]:
    if threading.active_count() > 1:
        import aiodocker  # noqa: PLC0415 - another thread may be making a TLS context: as it is
        import aiohttp  # noqa: PLC0415

        return aiodocker, aiohttp
    setattr(ssl.SSLContext, _METHOD, _without_default_paths)  # a class attribute, shadowing the C method
    try:
        import aiodocker  # noqa: PLC0415 - the bundle is skipped only while aiohttp loads
        import aiohttp  # noqa: PLC0415

        return aiodocker, aiohttp
    finally:
        delattr(ssl.SSLContext, _METHOD)


if TYPE_CHECKING:
    import aiodocker as aiodocker  # noqa: PLC0414 - re-exported
    import aiohttp as aiohttp  # noqa: PLC0414 - re-exported
else:
    aiodocker, aiohttp = _load()
