"""Business forecast requests: parse, validate and expand to the predictor's long format.

No kserve import here: the parsing is plain Python over the decoded JSON, so it is testable and
usable from anywhere (the CLI, Locust).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EPOCH = dt.date(1970, 1, 1)
DEFAULT_DAYS = 7
ALIASES = {"store_id": ("storeId", "store_id"), "begin_date": ("beginDate", "begin_date"),
           "end_date": ("endDate", "end_date")}


class RequestError(ValueError):
    """A bad business request: ``field`` names where, the message says what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Limits:
    """Request limits of the transformer (``--max-days``, ``--max-stores``)."""

    max_days: int = 366
    max_stores: int = 2000


@dataclass(frozen=True)
class StoreWindow:
    """One requested store and its inclusive window, as days since 1970-01-01."""

    store_id: str
    begin: int
    end: int

    @property
    def days(self) -> int:
        return self.end - self.begin + 1

    def echo(self) -> dict[str, str]:
        """The request as answered: snake_case, ISO dates."""
        return {"store_id": self.store_id, "begin_date": iso(self.begin), "end_date": iso(self.end)}


def iso(day: int) -> str:
    return (EPOCH + dt.timedelta(days=int(day))).isoformat()


def today() -> int:
    """Today in UTC, as days since 1970-01-01."""
    return (dt.datetime.now(dt.UTC).date() - EPOCH).days


def parse_day(value: Any, field: str) -> int:
    """An ISO date or datetime (``2015-08-01``, ``2015-08-01T00:00:00Z``) as days since epoch, UTC."""
    if not isinstance(value, str) or not value.strip():
        raise RequestError(field, f"expected an ISO date like '2015-08-01', got {value!r}")
    text = value.strip()
    try:
        if len(text) == 10:
            return (dt.date.fromisoformat(text) - EPOCH).days
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        raise RequestError(field, f"not an ISO date: {value!r}") from None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.UTC)
    return (stamp.date() - EPOCH).days


def window(store: Any, begin: Any, end: Any, where: str, limits: Limits, now: int) -> StoreWindow:
    """Validate one store's request; missing dates default to the 7 days starting today (UTC)."""
    if isinstance(store, bool) or not isinstance(store, str | int) or not str(store).strip():
        raise RequestError(f"{where}.storeId", f"required: a non-empty store id, got {store!r}")
    b = parse_day(begin, f"{where}.beginDate") if _given(begin) else None
    e = parse_day(end, f"{where}.endDate") if _given(end) else None
    if b is None:
        b = now if e is None or e >= now else e - (DEFAULT_DAYS - 1)
    if e is None:
        e = b + DEFAULT_DAYS - 1
    if e < b:
        raise RequestError(f"{where}.endDate", f"{iso(e)} is before beginDate {iso(b)}")
    if e - b + 1 > limits.max_days:
        raise RequestError(f"{where}.endDate", f"window of {e - b + 1} days is over the limit of {limits.max_days}")
    return StoreWindow(str(store).strip(), b, e)


def parse_v1(body: Any, limits: Limits, now: int | None = None) -> list[StoreWindow]:
    """``{"instances": [{"storeId": "4", "beginDate": ..., "endDate": ...}, ...]}`` (camel or snake case)."""
    if not isinstance(body, dict):
        raise RequestError("body", f"expected a JSON object with 'instances', got {type(body).__name__}")
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise RequestError("instances", "expected a non-empty list of {storeId, beginDate, endDate} objects")
    _check_count(len(instances), limits)
    now = today() if now is None else now
    out = []
    for i, inst in enumerate(instances):
        where = f"instances[{i}]"
        if not isinstance(inst, dict):
            raise RequestError(where, f"expected an object like {{'storeId': '4'}}, got {type(inst).__name__}")
        values = {key: _pick(inst, names, where) for key, names in ALIASES.items()}
        out.append(window(values["store_id"], values["begin_date"], values["end_date"], where, limits, now))
    return out


def parse_columns(store_ids: Sequence[Any], begins: Sequence[Any] | None, ends: Sequence[Any] | None,
                  limits: Limits, now: int | None = None) -> list[StoreWindow]:
    """The V2 form: inputs ``store_id`` and optional ``begin_date``/``end_date``, one element per store."""
    n = len(store_ids)
    if n == 0:
        raise RequestError("store_id", "expected at least one store id")
    for name, col in (("begin_date", begins), ("end_date", ends)):
        if col is not None and len(col) != n:
            raise RequestError(name, f"has {len(col)} elements but store_id has {n}")
    _check_count(n, limits)
    now = today() if now is None else now
    return [window(store_ids[i], begins[i] if begins is not None else None, ends[i] if ends is not None else None,
                   f"inputs[{i}]", limits, now) for i in range(n)]


def expand(windows: list[StoreWindow]) -> tuple[np.ndarray, np.ndarray]:
    """Long format: one (store_id, day) row per store-day, in request order."""
    lengths = np.array([w.days for w in windows], dtype=np.int64)
    starts = np.repeat(np.array([w.begin for w in windows], dtype=np.int64), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ids = np.repeat(np.array([w.store_id for w in windows], dtype=object), lengths)
    return ids, starts + offsets


def _given(value: Any) -> bool:
    return value is not None and value != ""


def _pick(inst: dict[str, Any], names: tuple[str, str], where: str) -> Any:
    camel, snake = names
    if camel in inst and snake in inst and inst[camel] != inst[snake]:
        raise RequestError(f"{where}.{camel}", f"given twice with different values ({camel} and {snake})")
    return inst.get(camel, inst.get(snake))


def _check_count(n: int, limits: Limits) -> None:
    if n > limits.max_stores:
        raise RequestError("instances", f"{n} stores in one request, over the limit of {limits.max_stores}")
