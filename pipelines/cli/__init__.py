"""``storecast``: the command line for people, one module per command group (``main`` builds the parser)."""
