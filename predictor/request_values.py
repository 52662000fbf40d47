"""The values of a predictor request checked and converted: store ids, ISO dates, what-if flags.

Each function takes a column as sent (a flat list) and a ``where(i)`` naming row ``i`` for the
message, and raises :class:`RequestError` (served as a 400) naming the first bad value. Store ids
follow the contract's rule (printable, at most 64 characters); dates are ISO ``YYYY-MM-DD`` from
1900 to 2199, a date-time is accepted when it is midnight UTC (``2015-08-01T00:00:00Z``). Small
columns are read in plain Python (numpy's per-call cost dominates a 7-row request), large ones
vectorized; both accept exactly the same strings. The wire forms (V1, V2) are in ``predictor.codec``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import date
from typing import Any

import numpy as np

from serving.contract import MAX_DAY, MIN_DAY, iso, store_id_problem
from serving.contract import short as _short

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


def store_ids_of(values: list[Any], where: Callable[[int], str]) -> list[str]:
    """Store ids as strings, each checked against the contract's rule (once per distinct id)."""
    ids = as_strings(values, where)
    for sid in set(ids):
        problem = store_id_problem(sid)
        if problem:
            i = ids.index(sid)
            raise RequestError(f"{where(i)}: store id {problem}")
    return ids


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
