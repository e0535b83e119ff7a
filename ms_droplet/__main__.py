"""``python -m ms_droplet``: the same as ``ms-droplet``."""

import sys

from .cli import main

sys.exit(main())
