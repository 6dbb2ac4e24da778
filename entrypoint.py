#!/usr/bin/env python3
"""Entry point of the action: the exit code of ``bastion_action.cli.main()``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bastion_action.cli import run_and_exit

if __name__ == "__main__":
    run_and_exit()
