"""``python -m bastion_action``: the local CLI, the same engine as the action."""

from bastion_action.cli import run_and_exit

run_and_exit()
