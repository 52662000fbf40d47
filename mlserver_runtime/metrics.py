"""The runtime's own Prometheus metrics, on the server's registry (its ``/metrics``; MLServer's ``mlserver.log``
metrics go to a registry it serves only with parallel workers, and batching needs none).

A module of their own: MLServer reloads the runtime's module each time it loads the model, and a metric
must be registered once per process.
"""

from __future__ import annotations

from prometheus_client import Histogram

BATCH_ROWS = Histogram("storecast_batch_rows", "rows of each evaluation of merged requests (adaptive batching): "
                       "its count is the merged evaluations, its sum their rows", ["model"],
                       buckets=(7, 14, 28, 56, 112, 224, 448, 896, 1792, 3584, 7168))
