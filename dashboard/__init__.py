"""The planners' dashboard: static pages plus a small same-origin server in front of the business APIs.

The server (``python -m dashboard``) serves ``static/`` and reverse-proxies ``/api/forecast`` to the
transformer's business V1 endpoint and ``/api/retrain``, ``/api/jobs/{id}`` to the retrain service,
passing the browser's key through; it holds no key of its own. Beside that it serves read-only data
it can get cheaply and caches: recent actual sales from a sales file and each model version's
per-store holdout metrics from the registry.
"""
