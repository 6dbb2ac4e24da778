"""asyncssh, loaded without its search for optional C libraries.

At import, asyncssh looks for liboqs (sntrup761 key exchange) and nettle (UMAC MACs) with
``ctypes.util.find_library``, which on Linux runs ``ldconfig``, then the C compiler and the linker,
for each name: seven processes and about 30 ms of every run, spent before the SSH connection can
start. The action needs neither library: its key exchange (curve25519, ML-KEM hybrids) comes
from ``cryptography``, and the ciphers it prefers are AEAD, which carry their own MAC (the
hmac-sha2 family serves the CTR ciphers). The search is answered "not found", so the algorithms
the action offers never depend on which libraries a runner happens to have.

Modules that use asyncssh import it from here: ``from bastion_action.sshlib import asyncssh``.
"""

from __future__ import annotations

import ctypes.util
from types import ModuleType
from typing import TYPE_CHECKING

SKIPPED_LIBRARIES = frozenset({"oqs", "liboqs", "nettle", "libnettle", "libnettle-6"})


def _load() -> ModuleType:
    search = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        return None if name in SKIPPED_LIBRARIES else search(name)

    ctypes.util.find_library = find_library
    try:
        import asyncssh  # noqa: PLC0415 - the search is answered only while asyncssh loads

        return asyncssh
    finally:
        ctypes.util.find_library = search


if TYPE_CHECKING:
    import asyncssh as asyncssh  # noqa: PLC0414 - re-exported
else:
    asyncssh = _load()
