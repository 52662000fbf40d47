"""The load test of storecast: Locust users and load shapes, the ``storecast loadtest`` runner, its report.

``locustfile`` (the users ``Planner``, ``Service``, ``Event``, ``Refresher`` and the shapes ``surge`` and
``ramp``; ``locust -f loadtest/locustfile.py`` from a checkout), ``runner`` (``storecast loadtest``: headless
Locust against the local stack or ``--host``), ``report`` (the summary and the plot of a run), ``guard`` (retrain
requests only to a ``--dry-run`` retrain service). It may import ``pipelines`` and ``serving.contract``; nothing of
``predictor``, ``transformer`` or ``serving`` imports it, and none of its modules imports KServe.
"""
