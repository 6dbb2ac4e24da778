"""``python -m bastion_action``: the local CLI, the same engine as the action."""

import sys

from bastion_action.cli import main

sys.exit(main())
