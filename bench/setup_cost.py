"""Action set-up on a runner: scripts/setup-venv.sh cold (empty tool cache) and cached.

Cold is measured twice: with uv on PATH, and without (uv is then bootstrapped with pip).
Run: `python bench/setup_cost.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, measure, ratio, report

SCRIPT = ROOT / "scripts/setup-venv.sh"


def run(cache: Path, path: str) -> None:
    env = {**os.environ, "RUNNER_TOOL_CACHE": str(cache), "PATH": path}
    env.pop("GITHUB_OUTPUT", None)
    subprocess.run(["bash", str(SCRIPT)], env=env, check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    python_dir = str(Path(sys.executable).resolve().parent)
    no_uv_path = ":".join(d for d in os.environ["PATH"].split(":") if not (Path(d) / "uv").exists())
    no_uv_path = f"{python_dir}:{no_uv_path}" if not (Path(python_dir) / "uv").exists() else no_uv_path
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)

        def cold(path: str) -> None:
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir()
            run(cache, path)

        samples = measure(
            {
                "cold, uv on PATH": lambda: cold(os.environ["PATH"]),
                "cold, no uv (pip bootstraps it)": lambda: cold(no_uv_path),
            },
            options.runs,
            warmup=0,
        )
        run(cache, os.environ["PATH"])
        samples |= measure({"cached": lambda: run(cache, os.environ["PATH"])}, options.runs)
    medians = report("action set-up (scripts/setup-venv.sh)", samples)
    ratio("set-up cold (uv on PATH), seconds", medians["cold, uv on PATH"], "<= 2 s")
    ratio("set-up cold (no uv), seconds", medians["cold, no uv (pip bootstraps it)"], "<= 2 s")
    ratio("set-up cached, seconds", medians["cached"], "<= 0.3 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
