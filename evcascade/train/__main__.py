"""``python -m evcascade.train align|distill|cache|export``."""

import sys

from evcascade.train.cli import main

sys.exit(main())
