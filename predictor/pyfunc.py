"""The model version as an MLflow pyfunc: ``predict(DataFrame[store_id, ds]) -> DataFrame[yhat, ...]``.

Optional input columns ``promo`` and ``closed`` (0/1, empty: as the version's calendar says) evaluate a
what-if, as the business API's ``promoDays`` / ``closedDays`` do. The output adds ``open`` and ``promo``
(the calendar's, or the what-if's) beside Prophet's ``yhat``, ``yhat_lower``, ``yhat_upper``.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd

from predictor.forecast import calendar_days, forecast
from predictor.table import ParamTable

PARAMS_ARTIFACT = "params"


class StorecastPyfunc(mlflow.pyfunc.PythonModel):
    """Evaluates every store of the version from its parameter table (no Prophet objects)."""

    # predict has no type hints on purpose (below): MLflow would wrap it with a no-op and warn ("Add type hints
    # to the `predict` method") at every import, under a filter of its own that no warnings filter overrides
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.table = ParamTable.load(context.artifacts[PARAMS_ARTIFACT])

    # no type hints on predict: MLflow would derive (and enforce) a schema from them
    def predict(self, context, model_input, params=None):
        frame = pd.DataFrame(model_input)
        missing = [c for c in ("store_id", "ds") if c not in frame.columns]
        if missing:
            raise ValueError(f"model input needs columns store_id and ds; missing {', '.join(missing)}")
        rows = self.table.index(frame["store_id"].astype(str).str.strip().to_numpy())
        days = pd.to_datetime(frame["ds"]).to_numpy().astype("datetime64[D]").astype(np.int64)
        promo = _flag(frame, "promo")
        closed = _flag(frame, "closed")
        open_ = None if closed is None else np.where(closed < 0, -1, 1 - closed).astype(np.int8)
        yhat, lower, upper = forecast(self.table, rows, days, promo, open_)
        days_ = calendar_days(self.table, rows, days, promo, open_)
        return pd.DataFrame({"yhat": yhat, "yhat_lower": lower, "yhat_upper": upper, "open": days_.open,
                             "promo": days_.promo}, index=frame.index)


def _flag(frame: pd.DataFrame, column: str) -> np.ndarray | None:
    """A 0/1 column as int8 (-1 where empty), or None when absent; raises naming other values."""
    if column not in frame.columns:
        return None
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isnan(values) & ~np.isin(values, (0.0, 1.0))
    if bad.any() or (np.isnan(values) & frame[column].notna().to_numpy()).any():
        raise ValueError(f"column {column!r} must hold 0, 1 or nothing")
    return np.where(np.isnan(values), -1, values).astype(np.int8)
