"""The forward itself: per-query round trip (pgbench -S, one client) and a 200 MB COPY,
through the action's forward (in its own process) against OpenSSH `ssh -L`, in one run.

Run against the lab: `python bench/forward.py [--runs N] [--seconds S]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from common import ROOT, admin, drop_databases, load_lab, measure, ratio, report
from recipe import ssh_forward

DATABASE = "bench_forward"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
COPY_RUNS = 7
COPY_SQL = "COPY (SELECT repeat('x', 1000) FROM generate_series(1, 200000)) TO STDOUT"  # ~200 MB


@contextlib.contextmanager
def action_forward() -> Iterator[int]:
    python = Path(sys.executable)
    process = subprocess.Popen(
        [str(python), str(ROOT / "bench/action_forward.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None  # noqa: S101
        yield int(process.stdout.readline())
    finally:
        assert process.stdin is not None  # noqa: S101
        process.stdin.close()
        process.wait(timeout=10)


def client_env(lab: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": lab["db_password"], "PGSSLMODE": "require", "PGUSER": lab["db_user"]}


def latency_ms(lab: dict[str, str], port: int, seconds: int) -> float:
    done = subprocess.run(
        [str(PG_BIN / "pgbench"), "-S", "-c", "1", "-T", str(seconds), "-h", "127.0.0.1", "-p", str(port), DATABASE],
        env=client_env(lab),
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"latency average = ([0-9.]+) ms", done.stdout)
    if not match:
        raise RuntimeError(done.stdout + done.stderr)
    return float(match.group(1))


def copy(lab: dict[str, str], port: int) -> None:
    url_args = ["-h", "127.0.0.1", "-p", str(port), "-d", DATABASE, "-qAt", "-c", COPY_SQL]
    with Path(os.devnull).open("wb") as sink:
        subprocess.run([str(PG_BIN / "psql"), *url_args], env=client_env(lab), stdout=sink, check=True)


def prepare(lab: dict[str, str]) -> None:
    drop_databases(lab, DATABASE)
    admin(lab, f'CREATE DATABASE {DATABASE} OWNER "{lab["db_user"]}"')
    argv = list(lab["db_admin_argv"])
    psql = argv.index(next(a for a in argv if a.endswith("psql")))
    pgbench = [*argv[:psql], str(PG_BIN / "pgbench"), "-i", "-q", "-s", "1"]
    pgbench += ["-h", argv[argv.index("-h") + 1], "-p", argv[argv.index("-p") + 1], DATABASE]
    subprocess.run(pgbench, check=True, capture_output=True)
    admin(lab, f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{lab["db_user"]}"', DATABASE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3, help="pgbench duration per sample")
    options = parser.parse_args()
    lab = load_lab()
    prepare(lab)
    with action_forward() as ours, ssh_forward(lab) as openssh:
        latencies: dict[str, list[float]] = {"action forward": [], "OpenSSH ssh -L": []}
        for _ in range(options.runs):
            latencies["action forward"].append(latency_ms(lab, ours, options.seconds))
            latencies["OpenSSH ssh -L"].append(latency_ms(lab, openssh, options.seconds))
        lat = report("per-query round trip, pgbench -S, 1 client", latencies, unit="ms")
        # A COPY takes under a second and its spread is wide (four busy processes share 2 cores): 7 samples at least.
        copies = measure(
            {"action forward": lambda: copy(lab, ours), "OpenSSH ssh -L": lambda: copy(lab, openssh)},
            max(options.runs, COPY_RUNS),
        )
        cp = report("COPY ~200 MB out", copies)
    ratio("per-query round trip, action / OpenSSH", lat["action forward"] / lat["OpenSSH ssh -L"], "<= 1.2")
    ratio("COPY 200 MB, action / OpenSSH", cp["action forward"] / cp["OpenSSH ssh -L"], "<= 1.1")
    drop_databases(lab, DATABASE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
