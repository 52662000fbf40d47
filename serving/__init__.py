"""The serving layer shared by the predictor and the transformer (see docs/architecture.md).

``contract`` (the cross-process rules), ``settings`` (flags and ``STORECAST_*`` variables), ``server``
(the one start-up), ``logs`` (the one logging set-up), ``mlflow_env`` (MLflow's client defaults by
role), ``rest`` / ``http`` and ``grpc_server`` (the two protocols with the same guarantees),
``tensors`` (Open Inference Protocol tensors), ``rest_tensors`` and ``grpc_tensors`` (one codec per
wire form), ``dataplane``, ``errors`` (one error mapping), ``metrics``, ``shedding``, ``budget``,
``eventloop``, ``cloudevents``; ``access/``: the door hook and the access mechanism behind it.
"""
