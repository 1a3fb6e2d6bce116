"""``python -m swav.cli`` (as torchrun launches it)."""

import sys

from swav.cli import main

sys.exit(main())
