"""Clients of the business API: one store's forecast (``forecast``), every store into one table (``batch``)
and the retrying sender behind it (``retrying``)."""
