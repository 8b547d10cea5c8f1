"""``python -m lab``: the same as ``python -m lab.run``."""

import sys

from lab.run import main

sys.exit(main())
