"""Requests to numpy and back: the long format of ``serving.contract``, with errors that name the problem.

A request is rows of (``store_id``, ``ds``) and, for a what-if, ``promo`` / ``open`` per row: V2 inputs
as in ``serving.contract.PREDICTOR_INPUTS`` (shape [n]), or V1
``{"instances": [{"store_id": "4", "ds": "2015-08-01"}, ...]}``. Decoding gives :class:`Rows`
(store ids as a list of ``str``, dates as int64 days since 1970-01-01, what-ifs as int8 with -1 for
"as the calendar says") or raises ``RequestError``; each column's values are checked by
``predictor.request_values``. Nothing here imports KServe: V2 inputs are read through the ``name``/
``datatype``/``shape``/``data``/``as_numpy()`` of KServe's ``InferInput``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from predictor.request_values import RequestError, as_strings, flags, parse_days, store_ids_of
from serving.contract import (
    MAX_DAY,
    MIN_DAY,
    PREDICTOR_INPUTS,
    PREDICTOR_OUTPUTS,
    WINDOW_INPUTS,
    iso,
    names,
    window_rows,
)
from serving.contract import short as _short

INPUTS = names(PREDICTOR_INPUTS, required=True)  # store_id, ds
OPTIONAL_INPUTS = tuple(t.name for t in PREDICTOR_INPUTS if not t.required and t.name not in WINDOW_INPUTS)
INPUT_TYPES = {t.name: t.datatypes for t in PREDICTOR_INPUTS}
OUTPUTS = names(PREDICTOR_OUTPUTS, default=True)  # yhat, yhat_lower, yhat_upper
OPEN_RATE = "open_rate"  # on request: the share of that weekday the store was open in its last 52 weeks
ALL_OUTPUTS = names(PREDICTOR_OUTPUTS)
OUTPUT_TYPES = {t.name: t.datatype for t in PREDICTOR_OUTPUTS}
V1_KEYS = (*INPUTS, *OPTIONAL_INPUTS)


class TensorInput(Protocol):
    """What the decoder needs of a V2 input (KServe's ``InferInput``)."""

    name: str
    datatype: str
    shape: list[int]
    data: Any

    def as_numpy(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Rows:
    """Decoded request rows."""

    store_id: list[str]  # per row; the windows form: per window (``repeat`` rows each)
    days: np.ndarray  # int64 days since 1970-01-01, per row
    promo: np.ndarray | None = None  # int8 per row: 1, 0, or -1 (as the calendar says)
    open: np.ndarray | None = None
    repeat: np.ndarray | None = None  # the windows form: rows of each store_id (int64)

    def __len__(self) -> int:
        return len(self.days)

    def group(self) -> np.ndarray | None:
        """The windows form: each row's window (a what-if never reaches another window); else None."""
        return None if self.repeat is None else np.repeat(np.arange(len(self.repeat)), self.repeat)

    def where(self, row: int) -> tuple[str, str]:
        """Where a row came from, for an error message: (the input and place, its store id)."""
        if self.repeat is None:
            return f"input 'ds' row {row}", self.store_id[row]
        w = int(np.searchsorted(np.cumsum(self.repeat), row, side="right"))
        return f"inputs 'begin_day'/'days' window {w}", self.store_id[w]


def decode_v1(body: Any, max_rows: int) -> Rows:
    """Rows of ``{"instances": [{"store_id": ..., "ds": ...}, ...]}``."""
    body = json_body(body)
    if not isinstance(body, dict):
        raise RequestError('request body must be a JSON object like {"instances": [{"store_id": "4", '
                           '"ds": "2015-08-01"}]}')
    instances = body.get("instances")
    if instances is None:
        raise RequestError("request has no 'instances' (a list of {\"store_id\", \"ds\"} objects)")
    if not isinstance(instances, list):
        raise RequestError(f"'instances' must be a list, got {type(instances).__name__}")
    _check_rows(len(instances), max_rows)
    try:
        store_ids = [inst["store_id"] for inst in instances]
        dates = [inst["ds"] for inst in instances]
    except (KeyError, TypeError):
        raise RequestError(_bad_instance(instances)) from None
    extra = {k for inst in instances for k in inst if k not in INPUTS}
    for key in extra:
        if key not in V1_KEYS:
            raise RequestError(f"instances: unknown key {_short(key)}; the keys are {', '.join(V1_KEYS)}")
    ids = store_ids_of(store_ids, lambda i: f"instances[{i}].store_id")
    days = parse_days(as_strings(dates, lambda i: f"instances[{i}].ds"), lambda i: f"instances[{i}].ds")
    what_if = {k: flags([inst.get(k, -1) for inst in instances], lambda i, k=k: f"instances[{i}].{k}")
               for k in OPTIONAL_INPUTS if k in extra}
    return Rows(ids, days, what_if.get("promo"), what_if.get("open"))


def json_body(body: Any) -> Any:
    """The decoded body; KServe passes JSON sent without a JSON content type on as bytes."""
    if isinstance(body, bytes | str):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            what = "a string (a CloudEvent's data?)" if isinstance(body, str) else "not JSON"
            raise RequestError(f'request body is {what}: send a JSON object like {{"instances": [...]}}') from None
    return body


def _bad_instance(instances: list[Any]) -> str:
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            return f"instances[{i}] must be an object with store_id and ds, got {type(inst).__name__}"
        missing = [k for k in INPUTS if k not in inst]
        if missing:
            return f"instances[{i}] has no {' and no '.join(repr(k) for k in missing)}"
    return "instances must be objects with store_id and ds"


V1_OUTPUTS = (*OUTPUTS, "open_rate", "open", "promo", "holiday", "calendar")


def encode_v1(rows: Rows, values: dict[str, np.ndarray], version: str) -> dict[str, Any]:
    """``{"predictions": [{"store_id", "ds", "yhat", ..., "open_rate", "open", "promo", "holiday", "calendar"}],
    "model_version"}`` (``open`` and ``promo`` as booleans)."""
    dates = rows.days.astype("datetime64[D]").astype(str).tolist()
    columns = {k: (values[k].astype(bool) if k in ("open", "promo") else values[k]).tolist()
               for k in V1_OUTPUTS if k in values}
    keys = list(columns)
    predictions = [{"store_id": s, "ds": d, **dict(zip(keys, vals, strict=True))}
                   for s, d, *vals in zip(rows.store_id, dates, *columns.values(), strict=True)]
    return {"predictions": predictions, "model_version": version}


def decode_v2(inputs: Sequence[TensorInput], max_rows: int) -> Rows:
    """Rows of the V2 inputs (``serving.contract.PREDICTOR_INPUTS``: shape [n], the same n)."""
    by_name: dict[str, TensorInput] = {}
    for tensor in inputs:
        if tensor.name not in INPUT_TYPES:
            raise RequestError(f"unexpected input {_short(tensor.name)}: {_INPUTS_HELP}")
        if tensor.name in by_name:
            raise RequestError(f"input {tensor.name!r} is given twice")
        by_name[tensor.name] = tensor
    if any(name in by_name for name in WINDOW_INPUTS):
        return _decode_windows(by_name, max_rows)
    missing = [name for name in INPUTS if name not in by_name]
    if missing:
        given = ", ".join(by_name) or "none"
        raise RequestError(f"missing input {' and '.join(repr(m) for m in missing)} (given: {given}); {_INPUTS_HELP}")
    values = {name: _tensor_values(tensor, max_rows) for name, tensor in by_name.items()}
    n = len(values["store_id"])
    for name, vals in values.items():
        if len(vals) != n:
            raise RequestError(f"inputs have different lengths: store_id has {n} rows, {name} has {len(vals)}")
    ids = store_ids_of(values["store_id"], lambda i: f"input 'store_id' row {i}")
    days = parse_days(as_strings(values["ds"], lambda i: f"input 'ds' row {i}"), lambda i: f"input 'ds' row {i}")
    what_if = {k: flags(values[k], lambda i, k=k: f"input {k!r} row {i}") for k in OPTIONAL_INPUTS if k in values}
    return Rows(ids, days, what_if.get("promo"), what_if.get("open"))


def _decode_windows(by_name: dict[str, TensorInput], max_rows: int) -> Rows:
    """The windows form: ``store_id``, ``begin_day``, ``days`` per window (``serving.contract``)."""
    if "ds" in by_name:
        raise RequestError("give either ds (long format) or begin_day and days (windows form), not both")
    missing = [name for name in ("store_id", *WINDOW_INPUTS) if name not in by_name]
    if missing:
        raise RequestError(f"missing input {' and '.join(repr(m) for m in missing)}: the windows form is store_id, "
                           "begin_day and days, one element per window")
    values = {name: _tensor_values(by_name[name], max_rows) for name in ("store_id", *WINDOW_INPUTS)}
    m = len(values["store_id"])
    for name in WINDOW_INPUTS:
        if len(values[name]) != m:
            raise RequestError(f"inputs have different lengths: store_id has {m} windows, {name} has "
                               f"{len(values[name])}")
    ids = store_ids_of(values["store_id"], lambda i: f"input 'store_id' window {i}")
    begin = np.asarray(values["begin_day"], dtype=np.int64).reshape(m)
    length = np.asarray(values["days"], dtype=np.int64).reshape(m)
    checks = (("days", length < 1, "must be at least 1"),  # in this order: no sum below can overflow
              ("days", length > max_rows, f"is over the limit of {max_rows} rows (--max-rows)"),
              ("begin_day", (begin < MIN_DAY) | (begin > MAX_DAY),
               f"is outside {iso(MIN_DAY)} .. {iso(MAX_DAY)} (days since 1970-01-01: {MIN_DAY} .. {MAX_DAY})"),
              ("days", begin + length - 1 > MAX_DAY, f"makes the window run past {iso(MAX_DAY)}"))
    for name, bad, problem in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise RequestError(f"input {name!r} window {i}: {int(values[name][i])} {problem}")
    total = int(length.sum())
    _check_rows(total, max_rows)
    days = window_rows(begin, length)
    what_if = {}
    for k in OPTIONAL_INPUTS:
        if k in by_name:
            vals = _tensor_values(by_name[k], max_rows)
            if len(vals) != total:
                raise RequestError(f"input {k!r} has {len(vals)} elements; the windows add up to {total} rows "
                                   "(one per answered row)")
            what_if[k] = flags(vals, lambda i, k=k: f"input {k!r} row {i}")
    return Rows(ids, days, what_if.get("promo"), what_if.get("open"), length)


_INPUTS_HELP = ("the inputs are store_id and ds (BYTES), or store_id, begin_day and days (the windows form), and, for "
                "a what-if, promo and open (INT32 1/0/-1 or BOOL)")


def _tensor_values(tensor: TensorInput, max_rows: int) -> list[Any]:
    name = tensor.name
    if tensor.datatype not in INPUT_TYPES[name]:
        raise RequestError(f"input {name!r} must have datatype {' or '.join(INPUT_TYPES[name])}, "
                           f"got {_short(tensor.datatype)}")
    shape = list(tensor.shape or [])
    if len(shape) != 1 or shape[0] < 0:
        raise RequestError(f"input {name!r} must have shape [n] (one-dimensional), got {shape}")
    _check_rows(shape[0], max_rows)
    data = getattr(tensor, "data", None)
    if type(data) is list and len(data) == shape[0] and not (data and type(data[0]) is list):
        return data  # JSON or gRPC contents: already a flat list
    try:
        values = tensor.as_numpy()  # binary data, nested lists
    except Exception as exc:  # reshape errors, truncated binary data, ...
        raise RequestError(f"input {name!r}: data does not match shape {shape} ({str(exc)[:80]})") from None
    if values.size != shape[0]:
        raise RequestError(f"input {name!r}: data does not match shape {shape}")
    return values.reshape(-1).tolist()


def _check_rows(n: int, max_rows: int) -> None:
    if n > max_rows:
        raise RequestError(f"request has {n} rows; the limit is {max_rows} (--max-rows): split it")
