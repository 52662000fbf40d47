"""Requests to numpy and back: the long format of ``serving.contract``, with errors that name the problem.

A request is rows of (``store_id``, ``ds``) and, for a what-if, ``promo`` / ``open`` per row: V2 inputs
as in ``serving.contract.PREDICTOR_INPUTS`` (shape [n]), or V1
``{"instances": [{"store_id": "4", "ds": "2015-08-01"}, ...]}``. Decoding gives :class:`Rows`
(store ids as a list of ``str``, dates as int64 days since 1970-01-01, what-ifs as int8 with -1 for
"as the calendar says") or raises :class:`RequestError`. Store ids follow the contract's rule
(printable, at most 64 characters); dates are ISO ``YYYY-MM-DD`` from 1900 to 2199, a date-time is
accepted when it is midnight UTC (``2015-08-01T00:00:00Z``). Small requests are decoded in plain
Python (numpy's per-call cost dominates a 7-row request), large ones vectorized; both accept exactly
the same strings. Nothing here imports KServe: V2 inputs are read through the ``name``/``datatype``/
``shape``/``data``/``as_numpy()`` of KServe's ``InferInput``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

import numpy as np
import orjson

from serving.contract import (
    MAX_DAY,
    MIN_DAY,
    PREDICTOR_INPUTS,
    PREDICTOR_OUTPUTS,
    WINDOW_INPUTS,
    iso,
    names,
    store_id_problem,
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
MAX_DATE_TEXT = 40  # characters: no date is longer (a longer value is refused before any array is made)
SECONDS_PER_DAY = 86400
_SHOWN = 5  # bad values named in one message
_SMALL = 64  # rows decoded in plain Python
_EPOCH = date(1970, 1, 1).toordinal()
_PYTHON_DAYS = (date.min.toordinal() - _EPOCH, date.max.toordinal() - _EPOCH)  # the days ``iso`` can write


class RequestError(ValueError):
    """A request the predictor cannot answer; ``reason`` says why (served as a 400)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


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


# ---- V1 ----------------------------------------------------------------------------------------
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


# ---- V2 ----------------------------------------------------------------------------------------
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


def flags(values: list[Any], where: Callable[[int], str]) -> np.ndarray:
    """A what-if column as int8: 1, 0 or -1 (none); booleans are 1/0."""
    if len(values) > _SMALL:
        arr = np.asarray(values)
        if arr.dtype.kind in "bi" and arr.ndim == 1 and ((arr >= -1) & (arr <= 1)).all():
            return arr.astype(np.int8)
    out = np.empty(len(values), dtype=np.int8)
    for i, v in enumerate(values):
        if v is True or v is False:
            out[i] = int(v)
        elif type(v) is int and v in (-1, 0, 1):
            out[i] = v
        else:
            raise RequestError(f"{where(i)}: expected 1, 0 or -1 (or true/false), got {_short(v)}")
    return out


def store_ids_of(values: list[Any], where: Callable[[int], str]) -> list[str]:
    """Store ids as strings, each checked against the contract's rule (once per distinct id)."""
    ids = as_strings(values, where)
    for sid in set(ids):
        problem = store_id_problem(sid)
        if problem:
            i = ids.index(sid)
            raise RequestError(f"{where(i)}: store id {problem}")
    return ids


def _check_rows(n: int, max_rows: int) -> None:
    if n > max_rows:
        raise RequestError(f"request has {n} rows; the limit is {max_rows} (--max-rows): split it")


# ---- values ------------------------------------------------------------------------------------
def as_strings(values: list[Any], where: Callable[[int], str]) -> list[str]:
    """Strings (``str``, or UTF-8 ``bytes`` as gRPC sends them; integers are accepted as ids)."""
    if all(type(v) is str for v in values):
        return values
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(f"{where(i)}: {v[:40]!r} is not UTF-8") from None
        elif isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        elif not isinstance(v, str):
            raise RequestError(f"{where(i)}: expected a string, got {type(v).__name__} {_short(v)}")
        out.append(v)
    return out


def parse_days(values: list[str], where: Callable[[int], str]) -> np.ndarray:
    """ISO dates (or date-times at midnight UTC) as int64 days since 1970-01-01, 1900 to 2199."""
    days = _parse_days(values, where)
    out = (days < MIN_DAY) | (days > MAX_DAY)
    if out.any():
        i = int(np.flatnonzero(out)[0])  # numpy reads years Python's dates cannot hold (0000, -001): quoted as sent
        shown = iso(days[i]) if _PYTHON_DAYS[0] <= days[i] <= _PYTHON_DAYS[1] else _short(values[i].strip())
        raise RequestError(f"{where(i)}: {shown} is outside {iso(MIN_DAY)} .. {iso(MAX_DAY)}")
    return days


def _parse_days(values: list[str], where: Callable[[int], str]) -> np.ndarray:
    long = [i for i, v in enumerate(values) if len(v) > MAX_DATE_TEXT] if values else []
    if long:  # refused before numpy makes an array as wide as the longest value
        raise RequestError(f"not a date (expected YYYY-MM-DD): {where(long[0])}: {_short(values[long[0]])}")
    if len(values) <= _SMALL:  # a few rows: plain Python is quicker than numpy's per-call overhead
        try:
            return np.array([_day(v) for v in values], dtype=np.int64)
        except ValueError:
            pass  # date-times, blanks, errors: the vectorized path decides and names the culprit
    text = np.strings.strip(np.array(values, dtype=str))
    if text.dtype.itemsize == 40:  # YYYY-MM-DD are exactly the 10-character strings that round-trip
        try:
            days = text.astype("datetime64[D]")
        except ValueError:
            pass
        else:
            if (days.astype(str) == text).all() and not np.isnat(days).any():
                return days.astype(np.int64)
    return _parse_days_strictly(text, where)


def _day(text: str) -> int:
    """Days since 1970-01-01 of a ``YYYY-MM-DD`` string (ValueError otherwise)."""
    if len(text) != 10 or text[4] != "-" or text[7] != "-" or not text.isascii():
        raise ValueError(text)
    return date.fromisoformat(text).toordinal() - _EPOCH


def _parse_days_strictly(text: np.ndarray, where: Callable[[int], str]) -> np.ndarray:
    """Dates checked character by character; date-times are parsed to seconds and must be midnight."""
    n = len(text)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    width = text.dtype.itemsize // 4
    if width < 10:
        _raise_bad(text, np.ones(n, dtype=bool), where)
    codes = np.ascontiguousarray(text).view(np.uint32).reshape(n, width)
    digits = codes[:, [0, 1, 2, 3, 5, 6, 8, 9]]
    ok = ((digits >= 48) & (digits <= 57)).all(axis=1) & (codes[:, 4] == 45) & (codes[:, 7] == 45)
    if width > 10:
        ok &= np.isin(codes[:, 10], (0, ord("T"), ord("t"), ord(" ")))
    if not ok.all():
        _raise_bad(text, ~ok, where)
    if width == 10 or not codes[:, 10].any():
        try:
            return text.astype("datetime64[D]").astype(np.int64)
        except ValueError:
            _raise_bad(text, _unparsable(text, "D"), where)
    with warnings.catch_warnings():  # numpy warns about (and converts) explicit time zones
        warnings.simplefilter("ignore")
        try:
            seconds = text.astype("datetime64[s]").astype(np.int64)
        except ValueError:
            _raise_bad(text, _unparsable(text, "s"), where)
    off = seconds % SECONDS_PER_DAY != 0
    if off.any():
        _raise_bad(text, off, where, "not midnight UTC (the predictor forecasts whole days)")
    return seconds // SECONDS_PER_DAY


def _unparsable(text: np.ndarray, unit: str) -> np.ndarray:
    bad = np.zeros(len(text), dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, s in enumerate(text.tolist()):
            try:
                np.datetime64(s, unit)
            except ValueError:
                bad[i] = True
    return bad


def _raise_bad(text: np.ndarray, bad: np.ndarray, where: Callable[[int], str],
               problem: str = "not a date (expected YYYY-MM-DD)") -> None:
    idx = np.flatnonzero(bad)
    shown = "; ".join(f"{where(i)}: {_short(str(text[i]))}" for i in idx[:_SHOWN])
    more = f" (and {len(idx) - _SHOWN} more)" if len(idx) > _SHOWN else ""
    raise RequestError(f"{problem}: {shown}{more}")
