"""``python -m pipelines.retrain``: the retrain service (``pipelines.retrain.service``)."""

import sys

from pipelines.retrain.service import main

sys.exit(main())
