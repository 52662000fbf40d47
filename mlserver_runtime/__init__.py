"""The storecast predictor as an MLServer custom runtime: the same numpy core and version loader, another server.

``runtime`` (the ``mlserver.MLModel``; MLServer's ``implementation`` is
``mlserver_runtime.runtime.StorecastRuntime``), ``tensors`` (MLServer's V2 types to the codec's and back),
``settings`` (the runtime's settings: the KServe predictor's, read from ``model-settings.json``),
``environment`` (MLServer's own environment: it pins an older FastAPI than KServe) and ``launch``
(``storecast mlserver``: the settings files and ``mlserver start`` on loopback). Only ``runtime`` and
``tensors`` import MLServer; they run in its environment, never in the KServe one.
"""
