"""Everything around serving: data, training, versions, retraining, rollouts, clients and the CLI.

The wings, each a sub-package (docs/architecture.md, "Layout"):

- ``data``: the sales store (base file + appended parts + calendars), Rossmann-layout sales files,
  synthetic sales, calendars;
- ``training``: fitting a chunk of stores, evaluation and the gate, interval offsets, export to the
  predictor's table, the fleet train (local processes or Ray), KubeRay RayJobs;
- ``versions``: the MLflow registry, deriving a version from its parent (``lineage``), the publish
  step, calendar pushes;
- ``retrain``: the retrain service (``python -m pipelines.retrain``), its jobs and job store, the
  accuracy watch and drift scores, its metrics;
- ``rollout``: the canary controller and its targets (local predictors or the InferenceService);
- ``clients``: business-API clients (one store's forecast, the fleet batch);
- ``cli``: the ``storecast`` command, one module per command group.

Flat: ``events`` (storecast's CloudEvents: parse and emit) and ``stack`` (the local stack on loopback).
"""
