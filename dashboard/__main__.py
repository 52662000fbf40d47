"""``python -m dashboard``: serve the planners' dashboard (see ``dashboard.server``)."""

import sys

from dashboard.server import main

sys.exit(main())
