"""The local end of the command's tunnel: bound first, before anything slow happens (stdlib only)."""

from __future__ import annotations

import socket

from bastion_action.errors import SettingsError

BACKLOG = 128


def bind_loopback(port: int) -> socket.socket:
    """A listening socket on ``127.0.0.1:<port>`` (0: a free port); the kernel queues connections at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SettingsError(
            f"local-port: expected a free port, 127.0.0.1:{port} is not ({exc.strerror})",
            hint="Leave local-port at 0 (the default) to get a free port.",
        ) from None
    return sock
