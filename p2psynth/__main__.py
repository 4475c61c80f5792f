"""Allow ``python -m p2psynth``."""

import sys

from p2psynth.cli import main

sys.exit(main())
