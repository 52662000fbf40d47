"""Rolling-origin backtests (``storecast backtest``): train before a cutoff, serve, score against references.

``windows`` (the default windows, the data cuts, the special days), ``reference`` (seasonal naive and a global
LightGBM through mlforecast), ``served`` (train, serve on loopback, ask the business API), ``scoring``,
``report`` and ``run`` (the orchestration). LightGBM and mlforecast are imported only by ``reference``, lazily.
"""
