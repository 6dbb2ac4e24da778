"""Fan-out at scale: `showmigrations` on 10 and on 100 databases behind one bastion, at several concurrencies.

For each run: the time, the time per database x concurrency (flat when the time grows linearly with
databases / concurrency), and, sampled every few milliseconds while it runs, the peak resident memory of
the action's process tree (the action and every command it started), the most command processes alive at
once, and the most connections the bastion held open to the database port at once (one per SSH channel
the run forwarded: the probe's, the lock's, the command's). The last two must stay bounded by
`concurrency` whatever the number of databases.

The databases are copies of one migrated template (created, and dropped after, outside the timed span).
Run against the lab: `python bench/fan_out_scale.py [--runs N] [--count 100] [--concurrency 2,4,8]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from common import (
    ROOT,
    action_env,
    action_inputs,
    action_python,
    cloned_database,
    drop_databases,
    fresh_database,
    load_lab,
)

TEMPLATE = "bench_scale_template"
SAMPLE_SECONDS = 0.02  # the sampler's own CPU is part of every row alike


@dataclasses.dataclass
class Peaks:
    rss: int = 0  # bytes, the action's process tree
    commands: int = 0  # the project's interpreters alive at once (the commands the action started)
    channels: int = 0  # ESTABLISHED connections from the bastion to the database port
    cpu: float = 0.0  # seconds of CPU, user and system, of the action and every command it started


def _database_endpoint(lab: dict[str, object]) -> str:
    """The database's address as /proc/net/tcp writes it (little-endian hex address, hex port)."""
    address = bytes(int(part) for part in str(lab["db_host"]).split("."))[::-1].hex().upper()
    return f"{address}:{int(str(lab['db_port'])):04X}"


def _bastion_connections(table: Path, endpoint: str) -> int:
    """ESTABLISHED (state 01) connections to the database in the bastion's namespace, read without a process."""
    count = 0
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        count += fields[2] == endpoint and fields[3] == "01"
    return count


def _watch(process: psutil.Process, lab: dict[str, object], peaks: Peaks, stop: threading.Event) -> None:
    python = str(lab["runner_python"])
    # The bastion's sshd lives in the bastion's namespace: its /proc/<pid>/net/tcp is that namespace's table.
    sshd = int(Path(str(lab["sshd_pidfile"])).read_text().split()[0])
    table, endpoint = Path(f"/proc/{sshd}/net/tcp"), _database_endpoint(lab)
    while not stop.is_set():
        try:
            tree = [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = commands = 0
        for member in tree:
            try:
                rss += member.memory_info().rss
                # The project's interpreter: not the helpers a library's import may spawn (asyncssh's
                # find_library runs gcc and ld for a moment).
                commands += member is not process and member.cmdline()[:1] == [python]
            except psutil.Error:
                continue
        peaks.rss = max(peaks.rss, rss)
        peaks.commands = max(peaks.commands, commands)
        peaks.channels = max(peaks.channels, _bastion_connections(table, endpoint))
        stop.wait(SAMPLE_SECONDS)


def watched_run(python: str, inputs: dict[str, str], lab: dict[str, object]) -> tuple[float, Peaks]:
    """One run of the action, its wall time and the peaks seen while it ran."""
    peaks, stop = Peaks(), threading.Event()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(
        [python, str(ROOT / "entrypoint.py")],
        env=action_env(inputs),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watcher = threading.Thread(target=_watch, args=(psutil.Process(process.pid), lab, peaks, stop))
    watcher.start()
    output, _ = process.communicate()
    took = time.perf_counter() - started
    stop.set()
    watcher.join()
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)  # the action waited for its commands, this for it
    peaks.cpu = ended.ru_utime + ended.ru_stime - used.ru_utime - used.ru_stime
    if process.returncode:
        msg = f"the action failed:\n{output[-3000:]}"
        raise RuntimeError(msg)
    return took, peaks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--concurrency", default="2,4,8")
    options = parser.parse_args()
    lab = load_lab()
    counts = sorted({min(10, options.count), options.count})
    concurrencies = [int(part) for part in options.concurrency.split(",")]
    names = [f"bench_scale_{n}" for n in range(options.count)]
    fresh_database(lab, TEMPLATE)
    python = action_python()
    common = {"mode": "lightweight", "command": "showmigrations", "python": lab["runner_python"]}
    common["working-directory"] = str(Path(lab["sample_project"]))
    figures: list[str] = []
    try:
        for name in names:
            cloned_database(lab, name, TEMPLATE)
        watched_run(python, action_inputs(lab, "", **common, databases=",".join(names[:2])), lab)  # warm-up
        print(f"\nfan-out at scale, showmigrations (medians of {options.runs} runs; peaks: the runs' highest)")
        print(
            f"  {'databases':>9} {'conc.':>5} {'time s':>7} {'s/db x conc.':>12} {'CPU s':>6} "
            f"{'peak RSS MiB':>12} {'commands':>8} {'channels':>8}"
        )
        for concurrency in concurrencies:
            for count in counts:
                databases = ",".join(names[:count])
                inputs = action_inputs(lab, "", **common, databases=databases, concurrency=str(concurrency))
                runs = [watched_run(python, inputs, lab) for _ in range(options.runs)]
                median = statistics.median(took for took, _ in runs)
                cpu = statistics.median(peaks.cpu for _, peaks in runs)
                rss = max(peaks.rss for _, peaks in runs) / 2**20
                commands = max(peaks.commands for _, peaks in runs)
                channels = max(peaks.channels for _, peaks in runs)
                print(
                    f"  {count:>9} {concurrency:>5} {median:>7.2f} {median / count * concurrency:>12.3f} "
                    f"{cpu:>6.2f} {rss:>12.0f} {commands:>8} {channels:>8}"
                )
                figures.append(
                    f"  SCALE {count} databases, concurrency {concurrency}: {median:.2f} s, "
                    f"{median / count * concurrency:.3f} s/db x concurrency, CPU {cpu:.2f} s, "
                    f"peak RSS {rss:.0f} MiB, {commands} commands and {channels} channels at once at most"
                )
        print("\n".join(figures))
    finally:
        drop_databases(lab, *names, TEMPLATE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
