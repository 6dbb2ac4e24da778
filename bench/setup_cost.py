"""Action set-up on a runner: scripts/setup-venv.sh as a fresh GitHub-hosted runner meets it, then warmer.

cold:      empty tool cache, empty uv cache, pip without cache or local configuration (a hosted runner has
           neither wheels on disk nor a pip.conf), packages from PyPI; with uv on PATH and without it (pip
           then bootstraps uv); the full set (docker, compare) and lightweight mode's set.
warm uv:   empty tool cache, uv's download cache kept from an earlier build (a self-hosted runner after a
           release changed the lock).
restored:  the tool cache unpacked from a tar.zst archive as actions/cache restores it (the download from
           GitHub's cache service, which this machine cannot reach, is not in the figure), then the set-up.
cached:    the virtualenv exists.
Run: `python bench/setup_cost.py [--runs N]` (needs PyPI; not the lab).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import ROOT, measure, ratio, report

SCRIPT = ROOT / "scripts/setup-venv.sh"
FULL, LIGHT = "", "lightweight"  # the script's argument: the action's mode input


class Runner:
    """A scratch runner: its tool cache and uv cache under one temporary directory."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.tool_cache = scratch / "tool-cache"
        self.trash = scratch / "trash"
        self.trash.mkdir()
        self.moved = itertools.count()
        uv_bin = scratch / "uv-bin"
        uv_bin.mkdir()
        (uv_bin / "uv").symlink_to(Path(sys.executable).parent / "uv")
        # No uv on PATH unless asked for: only system directories, as on a hosted runner's image.
        self.path_without_uv = "/usr/local/bin:/usr/bin:/bin"
        self.path_with_uv = f"{uv_bin}:{self.path_without_uv}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_", "GITHUB_", "VIRTUAL_ENV"))},
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "BASTION_MIGRATE_BASE_PYTHON": str(Path(sys.executable).resolve()),
        }

    def setup(self, mode: str, *, with_uv: bool = True, uv_cache: Path | None = None) -> None:
        env = {
            **self.env,
            "PATH": self.path_with_uv if with_uv else self.path_without_uv,
            "RUNNER_TOOL_CACHE": str(self.tool_cache),
            "UV_CACHE_DIR": str(uv_cache or self.scratch / "uv-cache"),
            "PIP_NO_CACHE_DIR": "1",
        }
        subprocess.run(["bash", str(SCRIPT), *([mode] if mode else [])], env=env, check=True, capture_output=True)

    def empty(self, *names: str) -> None:
        """Moved aside, not deleted: deleting a venv takes longer than some set-ups (removed at the end)."""
        for name in names or ("tool-cache", "uv-cache"):
            if (self.scratch / name).exists():
                (self.scratch / name).rename(self.trash / f"{name}-{next(self.moved)}")

    def cold(self, mode: str, *, with_uv: bool) -> Callable[[], None]:
        def run() -> None:
            self.empty()
            self.setup(mode, with_uv=with_uv)

        return run

    def warm_uv(self, mode: str, uv_cache: Path) -> Callable[[], None]:
        def run() -> None:
            self.empty("tool-cache")
            self.setup(mode, uv_cache=uv_cache)

        return run

    def archive(self, mode: str, into: Path) -> int:
        """The tool cache after one cold set-up, as actions/cache saves it (tar, zstd); its size in bytes."""
        self.empty()
        self.setup(mode)
        tar = ["tar", "--posix", "-C", str(self.scratch), "--use-compress-program", "zstd -T0", "-cf", str(into)]
        subprocess.run([*tar, "tool-cache/bastion-migrate"], check=True)
        return into.stat().st_size

    def restored(self, mode: str, archive: Path) -> Callable[[], None]:
        def run() -> None:
            self.empty()
            tar = ["tar", "-C", str(self.scratch), "--use-compress-program", "zstd -d", "-xf", str(archive)]
            subprocess.run(tar, check=True)
            self.setup(mode)

        return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(Path(tmp))
        samples = measure(
            {
                "cold, uv on PATH": runner.cold(FULL, with_uv=True),
                "cold, uv on PATH, light": runner.cold(LIGHT, with_uv=True),
                "cold, pip installs uv": runner.cold(FULL, with_uv=False),
                "cold, pip installs uv, light": runner.cold(LIGHT, with_uv=False),
            },
            options.runs,
            warmup=0,
        )
        uv_cache = Path(tmp) / "kept-uv-cache"
        runner.setup(FULL, uv_cache=uv_cache)
        runner.setup(LIGHT, uv_cache=uv_cache)
        samples |= measure(
            {"warm uv cache": runner.warm_uv(FULL, uv_cache), "warm uv cache, light": runner.warm_uv(LIGHT, uv_cache)},
            options.runs,
        )
        sizes = {mode: runner.archive(mode, Path(tmp) / f"cache{mode}.tar.zst") for mode in (FULL, LIGHT)}
        samples |= measure(
            {
                "restored (tar.zst)": runner.restored(FULL, Path(tmp) / "cache.tar.zst"),
                "restored (tar.zst), light": runner.restored(LIGHT, Path(tmp) / f"cache{LIGHT}.tar.zst"),
            },
            options.runs,
        )
        runner.setup(FULL)
        samples |= measure({"cached": lambda: runner.setup(FULL)}, options.runs)
    medians = report("action set-up (scripts/setup-venv.sh), empty caches unless named", samples)
    print(f"  archive of the tool cache (tar.zst): full {sizes[FULL] / 1e6:.1f} MB, light {sizes[LIGHT] / 1e6:.1f} MB")
    cold_uv, cold_pip = medians["cold, uv on PATH"], medians["cold, pip installs uv"]
    ratio("set-up cold (uv on PATH), seconds", cold_uv, "<= 2 s")
    ratio("set-up cold (pip installs uv), seconds", cold_pip, "<= 2 s")
    ratio("set-up cold (uv on PATH), light / full", medians["cold, uv on PATH, light"] / cold_uv, "<= 0.85")
    ratio("set-up cold (pip installs uv), light / full", medians["cold, pip installs uv, light"] / cold_pip, "<= 0.85")
    ratio("set-up, warm uv cache, seconds", medians["warm uv cache"], "<= 1 s")
    ratio("set-up, restored venv (no download), seconds", medians["restored (tar.zst)"], "<= 0.3 s")
    ratio("set-up cached, seconds", medians["cached"], "<= 0.3 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
