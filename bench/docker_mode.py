"""Docker-mode `showmigrations`: the action against the recipe, cold and cached image, in one run.

The recipe: docker login; docker pull; ssh -L; psql probe; docker run --rm --network host
... showmigrations; stop the tunnel — one step after another. The action overlaps the pull
with tunnel + probe, and starts a present image's container while the tunnel comes up.
Also checks, from the action's own stage timings on cold runs, that the overlap holds:
duration <= max(pull, tunnel + probe) + command + 0.2 s.
Run against the lab: `python bench/docker_mode.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from common import action_inputs, action_python, fresh_database, load_lab, measure, ratio, report, run_action
from recipe import database_url, psql_probe, ssh_forward

DATABASE = "bench_docker"
OVERLAP_SLACK = 0.2


def drop_image(reference: str) -> None:
    subprocess.run(["docker", "rmi", "-f", reference], check=False, capture_output=True)


def run_recipe(lab: dict[str, Any], reference: str) -> None:
    with tempfile.TemporaryDirectory() as config:
        env = {**os.environ, "DOCKER_CONFIG": config}
        subprocess.run(
            ["docker", "login", lab["registry"], "-u", lab["registry_user"], "--password-stdin"],
            input=lab["registry_password"].encode(),
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(["docker", "pull", "-q", reference], env=env, check=True, capture_output=True)
        with ssh_forward(lab) as port:
            psql_probe(lab, port, DATABASE)
            argv = ["docker", "run", "--rm", "--network", "host"]
            argv += ["-e", "DATABASE_URL", "-e", "DJANGO_SETTINGS_MODULE", "-e", "SECRET_KEY"]
            argv += [reference, "python", "manage.py", "showmigrations"]
            app_env = {
                "DATABASE_URL": database_url(lab, port, DATABASE),
                "DJANGO_SETTINGS_MODULE": lab["django_settings_module"],
                "SECRET_KEY": "bench",
            }
            subprocess.run(argv, env={**env, **app_env}, check=True, capture_output=True)


def stage_seconds(output: str) -> dict[str, float]:
    """The action's own timings, from the summary it prints off GitHub."""
    found = {name: float(value) for name, value in re.findall(r"^\| (\w+) \| ([0-9.]+) \|$", output, re.MULTILINE)}
    duration = re.search(r"^\| duration \| ([0-9.]+) s \|$", output, re.MULTILINE)
    if duration:
        found["duration"] = float(duration.group(1))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per variant (medians are printed)")
    options = parser.parse_args()
    lab = load_lab()
    reference = f"{lab['image']}:{lab['image_tag']}"
    fresh_database(lab, DATABASE)
    python = action_python()
    inputs = action_inputs(
        lab,
        DATABASE,
        mode="docker",
        command="showmigrations",
        image=lab["image"],
        **{
            "image-tag": lab["image_tag"],
            "registry-username": lab["registry_user"],
            "registry-password": lab["registry_password"],
        },
    )
    overlaps: list[float] = []

    def action_cold() -> None:
        drop_image(reference)
        stages = stage_seconds(run_action(python, inputs))
        bound = max(stages["pull"], stages["tunnel"] + stages["probe"]) + stages["command"] + OVERLAP_SLACK
        overlaps.append(stages["duration"] - bound)

    def recipe_cold() -> None:
        drop_image(reference)
        run_recipe(lab, reference)

    cold = measure({"recipe cold": recipe_cold, "action cold": action_cold}, options.runs, warmup=0)
    cached = measure(
        {"recipe cached": lambda: run_recipe(lab, reference), "action cached": lambda: run_action(python, inputs)},
        options.runs,
    )
    medians = report("docker-mode showmigrations", cold | cached)
    ratio("docker showmigrations, cold image, action / recipe", medians["action cold"] / medians["recipe cold"], "-")
    ratio(
        "docker showmigrations, cached, action / recipe", medians["action cached"] / medians["recipe cached"], "<= 0.85"
    )
    print(
        f"  OVERLAP uncached pull: duration - (max(pull, tunnel+probe) + command + {OVERLAP_SLACK} s) = "
        f"{statistics.median(overlaps):+.3f} s median (target <= 0)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
