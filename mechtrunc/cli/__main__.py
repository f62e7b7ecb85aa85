"""``python -m mechtrunc.cli``."""

import sys

from mechtrunc.cli import main

sys.exit(main())
