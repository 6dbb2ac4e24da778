"""Lightweight `showmigrations`: the action against the shell recipe and against the floor.

recipe: sshpass ssh -L (no host key check) &; wait for the port; psql select version();
        python manage.py showmigrations; stop ssh.
floor:  the same Django command from inside the bastion namespace, straight to the database.
Run against the lab: `python bench/lightweight.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from common import action_inputs, action_python, fresh_database, load_lab, measure, ratio, report, run_action
from recipe import database_url, psql_probe, ssh_forward

DATABASE = "bench_light"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    options = parser.parse_args()
    lab = load_lab()
    fresh_database(lab, DATABASE)
    python = action_python()
    inputs = action_inputs(
        lab,
        DATABASE,
        mode="lightweight",
        command="showmigrations",
        python=lab["runner_python"],
        **{"working-directory": lab["sample_project"]},
    )

    def recipe() -> None:
        with ssh_forward(lab) as port:
            psql_probe(lab, port, DATABASE)
            env = {
                **os.environ,
                "DATABASE_URL": database_url(lab, port, DATABASE),
                "DJANGO_SETTINGS_MODULE": lab["django_settings_module"],
                "SECRET_KEY": "bench",
            }
            subprocess.run(
                [lab["runner_python"], "manage.py", "showmigrations"],
                cwd=lab["sample_project"],
                env=env,
                check=True,
                capture_output=True,
            )

    def floor() -> None:
        from common import floor_run  # noqa: PLC0415

        floor_run(lab, DATABASE, ["showmigrations"])

    samples = measure({"recipe": recipe, "action": lambda: run_action(python, inputs), "floor": floor}, options.runs)
    medians = report("lightweight showmigrations", samples)
    ratio("lightweight showmigrations, action / recipe", medians["action"] / medians["recipe"], "<= 0.90")
    ratio("lightweight showmigrations, action / floor", medians["action"] / medians["floor"], "<= 1.3 (stretch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
