"""Stock Prophet on the exact future frame of a version: the reference every served number must equal."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.training.export import future_frame


def stock_forecast(model: Any, table: Any, store_id: str, days: np.ndarray) -> dict[str, np.ndarray]:
    """Stock ``Prophet.predict`` on the store's future frame (``ds`` + every regressor), back on the sales scale."""
    days = np.asarray(days, dtype=np.int64)
    out = model.predict(future_frame(table, store_id, days))
    inv = np.expm1 if table.transform == "log1p" else np.asarray
    return {k: inv(out[k].to_numpy()) for k in ("yhat", "yhat_lower", "yhat_upper")}


def days_of(dates: Any) -> np.ndarray:
    """Int days since 1970-01-01 of dates (strings, datetimes, a DatetimeIndex)."""
    return np.asarray(dates, dtype="datetime64[D]").astype(np.int64)
