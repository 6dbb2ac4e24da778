"""Docker mode `showmigrations`: the action against the recipe, cold and cached image.

The recipe: docker login; docker pull; ssh -L; psql probe; docker run --rm
--network host ... showmigrations; stop the tunnel — one step after another.
The action overlaps login+pull with tunnel+probe. Prints medians and ratios,
all measured in this one run. Run against the lab: `python bench/docker_mode.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from recipe import database_url, psql_probe, ssh_forward

ROOT = Path(__file__).resolve().parents[1]
LAB_DIR = Path(os.environ.get("LAB_DIR", "/var/lib/bastion-migrate-lab"))
DATABASE = "bench_docker"


def admin(lab: dict[str, Any], sql: str) -> None:
    subprocess.run([*lab["db_admin_argv"], "-c", sql], check=True, capture_output=True)


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
            run_argv = ["docker", "run", "--rm", "--network", "host"]
            run_argv += ["-e", "DATABASE_URL", "-e", "DJANGO_SETTINGS_MODULE", "-e", "SECRET_KEY"]
            run_argv += [reference, "python", "manage.py", "showmigrations"]
            subprocess.run(
                run_argv,
                env={
                    **env,
                    "DATABASE_URL": database_url(lab, port, DATABASE),
                    "DJANGO_SETTINGS_MODULE": lab["django_settings_module"],
                    "SECRET_KEY": "bench",
                },
                check=True,
                capture_output=True,
            )


def run_action(lab: dict[str, Any], python: str) -> None:
    inputs = {
        "mode": "docker",
        "command": "showmigrations",
        "image": lab["image"],
        "image-tag": lab["image_tag"],
        "registry-username": lab["registry_user"],
        "registry-password": lab["registry_password"],
        "ssh-host": lab["bastion_host"],
        "ssh-port": str(lab["ssh_port"]),
        "ssh-user": lab["ssh_password_user"],
        "ssh-password": lab["ssh_password"],
        "ssh-known-hosts": lab["ssh_known_hosts"],
        "db-host": lab["db_host"],
        "db-port": str(lab["db_port"]),
        "db-name": DATABASE,
        "db-user": lab["db_user"],
        "db-password": lab["db_password"],
        "db-sslmode": "require",
        "django-settings-module": lab["django_settings_module"],
        "secret-key": "bench",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INPUT_", "GITHUB_"))}
    env.update({"INPUT_" + k.upper().replace("-", "_"): v for k, v in inputs.items()})
    subprocess.run([python, str(ROOT / "entrypoint.py")], env=env, check=True, capture_output=True)


def timed(function: Any, *args: Any) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per variant (medians are printed)")
    options = parser.parse_args()
    lab = json.loads((LAB_DIR / "lab.json").read_text())
    reference = f"{lab['image']}:{lab['image_tag']}"
    admin(lab, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    admin(lab, f'CREATE DATABASE {DATABASE} OWNER "{lab["db_user"]}"')
    python = subprocess.run(
        ["bash", str(ROOT / "scripts/setup-venv.sh")], check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    samples: dict[str, list[float]] = {"recipe cold": [], "action cold": [], "recipe cached": [], "action cached": []}
    for _ in range(options.runs):  # interleaved, so drift in the machine hits both alike
        for kind, runner in (("recipe", run_recipe), ("action", run_action)):
            drop_image(reference)
            samples[f"{kind} cold"].append(timed(runner, lab, reference if kind == "recipe" else python))
            samples[f"{kind} cached"].append(timed(runner, lab, reference if kind == "recipe" else python))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"docker-mode showmigrations, medians of {options.runs} runs (seconds)")
    for name, value in medians.items():
        print(f"  {name:14} {value:6.3f}   (min {min(samples[name]):.3f}, max {max(samples[name]):.3f})")
    for variant in ("cold", "cached"):
        ratio = medians[f"action {variant}"] / medians[f"recipe {variant}"]
        print(f"  action / recipe, {variant} image: {ratio:.2f}")
    admin(lab, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
