"""Fan-out: `showmigrations` on 10 databases behind one bastion (one SSH connection) against one database.

Run against the lab: `python bench/fan_out.py [--runs N]`. Target: 10 databases / one <= 2.
"""

from __future__ import annotations

import argparse
import sys

from common import (
    action_inputs,
    action_python,
    drop_databases,
    fresh_database,
    load_lab,
    measure,
    ratio,
    report,
    run_action,
)

COUNT = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", default="4")
    options = parser.parse_args()
    lab = load_lab()
    names = [f"bench_fan_{n}" for n in range(COUNT)]
    for name in names:
        fresh_database(lab, name)
    python = action_python()
    common = {"mode": "lightweight", "command": "showmigrations", "python": lab["runner_python"]}
    common["working-directory"] = lab["sample_project"]
    one = action_inputs(lab, names[0], **common)
    many = action_inputs(lab, "", **common, databases=",".join(names), concurrency=options.concurrency)
    samples = measure(
        {"one database": lambda: run_action(python, one), f"{COUNT} databases": lambda: run_action(python, many)},
        options.runs,
    )
    medians = report(f"fan-out showmigrations (concurrency {options.concurrency}, 2 cores)", samples)
    ratio(f"fan-out, {COUNT} databases / one", medians[f"{COUNT} databases"] / medians["one database"], "<= 2")
    drop_databases(lab, *names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
