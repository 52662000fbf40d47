"""Business answers from the predictor's arrays: the V1 JSON body and the V2 output columns.

The predictor answers FP64 ``yhat``/``yhat_lower``/``yhat_upper`` and the INT32 ``day_flags`` per
row (``serving.contract``). A day the flags say is closed (``serving.contract.closed_days``: by the
calendar, a what-if or the weekday pattern) is answered 0, lower 0, upper 0 by :func:`zero_closed`,
on every path (V1, V2 REST and gRPC, CloudEvents); the day's calendar columns come from unpacking the
flags once per request, strings (timestamps, holiday codes, sources) are made once per distinct value
and picked per row. The V1 body is built and encoded in chunks of about :data:`CHUNK_ROWS` rows, so a
732,000-row answer never holds the GIL in one long call: encoded in a worker thread, small
requests on the event loop keep being served meanwhile.
"""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import orjson

from serving.contract import CALENDAR_SOURCES, HOLIDAY_CODES, closed_days, iso, unpack_day_flags
from transformer.request import StoreWindow, expand, row_days

CHUNK_ROWS = 4096
FORECASTS = ("yhat", "yhat_lower", "yhat_upper")  # answered 0 on a closed day
_HOLIDAYS = np.array(HOLIDAY_CODES, dtype=object)
_SOURCES = np.array(CALENDAR_SOURCES, dtype=object)


def day_table(days: np.ndarray, suffix: str = "") -> tuple[np.ndarray, int]:
    """``YYYY-MM-DD`` + ``suffix`` of every day from the first of ``days`` to the last (an object array,
    each day formatted once) and that first day: ``table[day - first]`` is a day's string."""
    first = int(days.min()) if len(days) else 0
    last = int(days.max()) if len(days) else -1
    return np.array([iso(d) + suffix for d in range(first, last + 1)], dtype=object), first


def zero_closed(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``values`` with ``yhat``, ``yhat_lower`` and ``yhat_upper`` 0 on every closed day of ``day_flags``
    (the business API's answer; the predictor's own outputs keep Prophet's numbers). Needs ``day_flags``
    whenever a forecast column is given."""
    asked = [k for k in FORECASTS if k in values]
    if not asked:
        return values
    closed = closed_days(values["day_flags"])
    if not closed.any():
        return values
    return {**values, **{k: np.where(closed, 0.0, values[k]) for k in asked}}


def calendar_columns(flags: np.ndarray) -> dict[str, np.ndarray]:
    """``open``/``promo`` (int32 0/1), ``holiday`` and ``calendar`` (object str) of each row's ``day_flags``."""
    open_, promo, holiday, source = unpack_day_flags(flags)
    return {"open": open_, "promo": promo, "holiday": _HOLIDAYS[holiday], "calendar": _SOURCES[source]}


def v1_body(windows: list[StoreWindow], values: dict[str, np.ndarray], version: str | None) -> bytearray:
    """``{"predictions": [{"request", "forecast": [{timestamp, value, lower, upper, open, promo, holiday,
    calendar}]}], "model_version"}`` as JSON bytes; a closed day is 0/0/0 (:func:`zero_closed`).

    The rows are short-lived dicts without cycles: the cyclic collector is paused while they are made
    (a collection in the middle holds the GIL for long and the event loop with it)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return _v1_body(windows, values, version)
    finally:
        if paused:
            gc.enable()


def _v1_body(windows: list[StoreWindow], values: dict[str, np.ndarray], version: str | None) -> bytearray:
    open_, promo, holiday, source = unpack_day_flags(values["day_flags"])
    is_open, is_promo = open_.astype(bool), promo.astype(bool)  # tolist() gives Python booleans
    zeroed = zero_closed(values)
    yhat, lower, upper = (zeroed[k] for k in FORECASTS)
    days = row_days(windows)
    stamps, first_day = day_table(days, "T00:00:00")
    body, w, row = bytearray(b'{"predictions":['), 0, 0  # grown chunk by chunk: never one long copy
    while w < len(windows):
        first_window, first_row = w, row
        while w < len(windows) and (w == first_window or row - first_row + windows[w].days <= CHUNK_ROWS):
            row += windows[w].days
            w += 1
        cut = slice(first_row, row)
        rows = [{"timestamp": t, "value": v, "lower": lo, "upper": up, "open": o, "promo": p, "holiday": h,
                 "calendar": c}
                for t, v, lo, up, o, p, h, c in zip(
                    stamps[days[cut] - first_day].tolist(), yhat[cut].tolist(), lower[cut].tolist(),
                    upper[cut].tolist(), is_open[cut].tolist(), is_promo[cut].tolist(),
                    _HOLIDAYS[holiday[cut]].tolist(), _SOURCES[source[cut]].tolist(), strict=True)]
        chunk, start = [], 0
        for win in windows[first_window:w]:
            chunk.append({"request": win.echo(), "forecast": rows[start: start + win.days]})
            start += win.days
        if first_window:
            body += b","
        body += memoryview(orjson.dumps(chunk))[1:-1]
    body += b"]" + (b',"model_version":' + orjson.dumps(version) if version else b"") + b"}"
    return body


def v2_columns(windows: list[StoreWindow], values: dict[str, np.ndarray], names: tuple[str, ...]
               ) -> dict[str, Any]:
    """The V2 outputs ``names`` of every row (``serving.contract.TRANSFORMER_OUTPUTS``); a closed day's
    ``yhat``, ``yhat_lower`` and ``yhat_upper`` are 0 (``values`` carry ``day_flags`` whenever they do)."""
    values = zero_closed(values)
    out: dict[str, Any] = {}
    if "store_id" in names or "ds" in names:
        out["store_id"], days = expand(windows)
        table, first_day = day_table(days)
        out["ds"] = table[days - first_day]
    if "day_flags" in values:
        out.update(calendar_columns(values["day_flags"]))
    out.update({k: v for k, v in values.items() if k != "day_flags"})
    return {name: out[name] for name in names}
