"""``python -m pipelines.cli``: the ``storecast`` command."""

import sys

from pipelines.cli.main import main

sys.exit(main())
