"""``python -m mosaicvi.cli``."""

import sys

from . import main

sys.exit(main())
