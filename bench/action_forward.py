"""The action's forward as the command uses it (the gate over the SSH tunnel), in a process of its own.

Prints the local port on stdout, then forwards until stdin closes; on the action's event loop
(uvloop; BASTION_MIGRATE_EVENT_LOOP=asyncio for the standard library's).
Usage: python bench/action_forward.py  (reads the lab from lab.json)
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import action_inputs, load_lab

from bastion_action import aio, gates, loopback, settings, tunnel


async def main() -> None:
    lab = load_lab()
    parsed = settings.parse(action_inputs(lab, "postgres", mode="lightweight", command="probe"), environ={})
    credentials = tunnel.load_credentials(parsed.ssh)
    sock = loopback.bind_loopback(0)
    async with (
        gates.gate(sock) as gate,
        tunnel.open_tunnel(parsed.ssh, credentials, parsed.db.host, parsed.db.port) as opened,
    ):
        gate.open(opened, parsed.db.host, parsed.db.port)
        print(gate.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=aio.loop_factory(os.environ)[1]) as runner:  # the action's own event loop
        runner.run(main())
