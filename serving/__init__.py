"""The serving layer shared by the predictor and the transformer (see docs/architecture.md).

``contract`` (the cross-process rules), ``settings`` (flags and ``STORECAST_*`` variables), ``server``
(the one start-up), ``rest`` / ``http`` and ``grpc_server`` (the two protocols with the same
guarantees), ``tensors`` and ``grpc_tensors`` (Open Inference Protocol tensors on the wire),
``dataplane``, ``door`` (the hook for authentication and rate limits), ``errors`` (one error
mapping), ``metrics``, ``shedding``, ``eventloop``, ``cloudevents``; ``access*``, ``ratelimit``,
``oidc``, ``audit``: the access mechanism behind the door.
"""
