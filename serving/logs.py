"""The one log set-up of every storecast process: ``storecast.*`` lines in one format on stderr.

The servers, the retrain service, the dashboard and the ``storecast`` CLI each call
:func:`configure_logging` once at start (the predictor also in each KServe worker it spawns).
"""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(process)s %(name)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# libraries' lines that say nothing to a storecast user: Prophet logs an error at import when plotly (its
# interactive plots, which storecast never draws) is missing
QUIET_LOGGERS = {"prophet.plot": logging.CRITICAL}


def configure_logging(level: int = logging.INFO, libraries: int | None = None) -> logging.Logger:
    """storecast's log lines (``storecast.*``) from ``level`` on stderr, once per process.

    ``libraries``: other loggers' lines too, from that level, in the same format (the retrain service
    and the dashboard; the servers leave them to KServe's own set-up). Returns the ``storecast`` logger.
    """
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet)
    ours = logging.getLogger("storecast")
    if not ours.handlers:
        ours.addHandler(_stderr())
        ours.setLevel(level)
        ours.propagate = False
    if libraries is not None:
        root = logging.getLogger()
        if not root.handlers:
            root.addHandler(_stderr())
        root.setLevel(libraries)
    return ours


def _stderr() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt=DATE_FORMAT))
    return handler
