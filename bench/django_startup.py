"""Where a fan-out's time per database goes, without the action: Django's start-up against its command.

Straight from the bastion's namespace to the database (no tunnel, no action), one database at a time:

- start-up:        `python -c "import django; django.setup()"` with the project's settings
- a process each:  `python manage.py showmigrations`, once per database (what a fan-out runs today)
- one process:     `python manage.py shell -c DRIVER`: one interpreter serving every database in turn
                   (close the connections, point DATABASES["default"] at the next database, run the
                   command), each database's output checked against its own process's

Wall time and CPU seconds (user + system of the processes) for each. Run against the lab:
`python bench/django_startup.py [--runs N] [--count 10]`.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

from common import cloned_database, direct_url, drop_databases, fresh_database, load_lab

TEMPLATE = "bench_startup_template"
MARK = "bench-startup-database"

DRIVER = f"""
import os
from urllib.parse import parse_qsl, unquote, urlsplit
from django.core.management import call_command
from django.db import connections
from django.conf import settings
for url in os.environ["BENCH_URLS"].split():
    parts = urlsplit(url)
    connections.close_all()
    settings.DATABASES["default"].update(
        NAME=parts.path[1:], HOST=parts.hostname, PORT=str(parts.port or ""),
        USER=unquote(parts.username or ""), PASSWORD=unquote(parts.password or ""),
        OPTIONS=dict(parse_qsl(parts.query)),
    )
    print("{MARK}", parts.path[1:], flush=True)
    call_command("showmigrations")
connections.close_all()
"""


def _run(lab: dict[str, str], argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds and output of one process in the bastion's namespace."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        ["ip", "netns", "exec", lab["bastion_ns"], lab["runner_python"], *argv],
        cwd=lab["sample_project"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    took = time.perf_counter() - started
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    return took, ended.ru_utime + ended.ru_stime - used.ru_utime - used.ru_stime, done.stdout


def _same(each: str, shared: str, names: list[str]) -> bool:
    """Whether one process printed, database by database, what a process each did."""
    for name in names:  # the driver's output names each database first: strip those lines
        shared = shared.replace(name + "\n", "", 1)
    if each != shared:
        print("one process printed something else than a process each:\n", shared[:2000])
    return each == shared


def _report(samples: dict[str, list[tuple[float, float, str]]], count: int, runs: int) -> None:
    print(f"\nDjango per database, {count} databases one at a time (medians of {runs} runs)")
    for name, values in samples.items():
        wall = statistics.median(value[0] for value in values[1:])
        cpu = statistics.median(value[1] for value in values[1:])
        per = "" if name == "start-up" else f"   {wall / count:.3f} s / {cpu / count:.3f} s a database"
        print(f"  {name:16} wall {wall:7.3f} s   CPU {cpu:7.3f} s{per}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=10)
    options = parser.parse_args()
    lab = load_lab()
    names = [f"bench_startup_{n}" for n in range(options.count)]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": lab["django_settings_module"], "SECRET_KEY": "bench"}
    env["DATABASE_URL"] = direct_url(lab, TEMPLATE)
    fresh_database(lab, TEMPLATE)
    try:
        for name in names:
            cloned_database(lab, name, TEMPLATE)
        urls = [direct_url(lab, name) for name in names]

        def start_up() -> tuple[float, float, str]:
            return _run(lab, ["-c", "import django; django.setup()"], env)

        def each() -> tuple[float, float, str]:
            wall = cpu = 0.0
            outputs = []
            for url in urls:
                took, used, output = _run(lab, ["manage.py", "showmigrations"], {**env, "DATABASE_URL": url})
                wall, cpu = wall + took, cpu + used
                outputs.append(output)
            return wall, cpu, "".join(outputs)

        def shared() -> tuple[float, float, str]:
            took, used, output = _run(lab, ["manage.py", "shell", "-c", DRIVER], {**env, "BENCH_URLS": " ".join(urls)})
            return took, used, "".join(output.split(MARK + " ")[1:])

        variants = {"start-up": start_up, "a process each": each, "one process": shared}
        samples: dict[str, list[tuple[float, float, str]]] = {name: [] for name in variants}
        for _ in range(options.runs + 1):  # the first round warms the caches and is not counted
            for name, function in variants.items():
                samples[name].append(function())
        if not _same(samples["a process each"][-1][2], samples["one process"][-1][2], names):
            return 1
        _report(samples, options.count, options.runs)
    finally:
        drop_databases(lab, *names, TEMPLATE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
