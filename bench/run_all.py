"""Every benchmark against the lab, then the table of figures (ratios measured in one run each).

Run: `python bench/run_all.py [--runs N]` (the lab must be up: `bash tests/lab/up.sh`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLOW = frozenset({"docker_mode.py", "forward.py", "fan_out.py", "query_heavy.py"})  # fewer runs: each takes seconds
SLOWEST = frozenset({"fan_out_scale.py"})  # a run is up to 100 databases: 3 runs at most
BENCHMARKS = (
    "lightweight.py",
    "docker_mode.py",
    "forward.py",
    "query_heavy.py",
    "setup_cost.py",
    "fan_out.py",
    "fan_out_scale.py",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    options = parser.parse_args()
    figures: list[str] = []
    for script in BENCHMARKS:
        runs = str(min(options.runs, 3 if script in SLOWEST else 5 if script in SLOW else options.runs))
        done = subprocess.run(
            [sys.executable, str(HERE / script), "--runs", runs], cwd=HERE, capture_output=True, text=True, check=False
        )
        print(done.stdout, end="")
        if done.returncode:
            print(done.stderr, file=sys.stderr)
            figures.append(f"  {script}: FAILED (exit {done.returncode})")
            continue
        kinds = ("RATIO", "OVERLAP", "SCALE")
        figures += [line for line in done.stdout.splitlines() if line.lstrip().startswith(kinds)]
    print("\nAll figures:")
    print("\n".join(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
