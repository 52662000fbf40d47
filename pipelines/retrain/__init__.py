"""The retrain service (``python -m pipelines.retrain``): CloudEvents in, derived versions out.

``service`` (the HTTP app and start-up), ``settings`` (its flags and variables), ``jobs``
(coalescing, one durable job at a time, retries), ``recovery`` (unfinished jobs after a restart),
``jobstore`` (SQLite state), ``watch`` and ``drift`` (accuracy as actuals arrive), ``rayjob`` (a
fleet job on a KubeRay RayJob), ``metrics`` (``/metrics``).
"""
