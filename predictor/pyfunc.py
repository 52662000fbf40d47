"""The model version as an MLflow pyfunc: ``predict(DataFrame[store_id, ds]) -> DataFrame[yhat, ...]``."""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd

from predictor.forecast import forecast
from predictor.table import ParamTable

PARAMS_ARTIFACT = "params"


class StorecastPyfunc(mlflow.pyfunc.PythonModel):
    """Evaluates every store of the version from its parameter table (no Prophet objects)."""

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
        yhat, lower, upper = forecast(self.table, rows, days)
        return pd.DataFrame({"yhat": yhat, "yhat_lower": lower, "yhat_upper": upper}, index=frame.index)
