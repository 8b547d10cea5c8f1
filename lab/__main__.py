"""``python -m openbell.lab``: the same as ``python -m openbell.lab.run``."""

import sys

from openbell.lab.run import main

sys.exit(main())
