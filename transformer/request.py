"""Business forecast requests: parse, validate and expand to the predictor's long format.

No kserve import here: the parsing is plain Python over the decoded JSON, so it is testable and
usable from anywhere (the CLI, Locust). The rules are the contract's (``serving.contract``): store
ids printable and at most 64 characters, dates ISO between 1900 and 2199, the instance keys of
``INSTANCE_KEYS`` only (camelCase or snake_case; any other key is named in a 400). A body
``{"list_stores": true}`` asks for the stores served instead of a forecast (:func:`asks_stores`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.contract import (
    EPOCH,
    INSTANCE_KEYS,
    LIST_STORES,
    MAX_DAYS_AHEAD,
    DateError,
    iso,
    short,
    store_id_problem,
    to_day,
    window_rows,
)

DEFAULT_DAYS = 7
ALIASES = INSTANCE_KEYS
KNOWN_KEYS = tuple(k for names in INSTANCE_KEYS.values() for k in names)
BODY_KEYS = ("instances",)

__all__ = ["BusinessRequestError", "Limits", "StoreWindow", "asks_stores", "expand", "iso", "parse_columns",
           "parse_day", "parse_v1", "row_days"]


class BusinessRequestError(ValueError):
    """A bad business request: ``field`` names where, the message says what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Limits:
    """Request limits of the transformer (``--max-days``, ``--max-stores``, ``--max-days-ahead``).

    ``data_end`` is the last day of data of the version served (days since epoch; None: not known
    yet, the predictor checks its own horizon then)."""

    max_days: int = 366
    max_stores: int = 2000
    max_days_ahead: int = MAX_DAYS_AHEAD
    data_end: int | None = None


@dataclass(frozen=True)
class StoreWindow:
    """One requested store, its inclusive window (days since 1970-01-01) and its what-if days."""

    store_id: str
    begin: int
    end: int
    promo_days: tuple[int, ...] = ()
    closed_days: tuple[int, ...] = ()

    @property
    def days(self) -> int:
        return self.end - self.begin + 1

    def echo(self) -> dict[str, Any]:
        """The request as answered: snake_case, ISO dates."""
        out: dict[str, Any] = {"store_id": self.store_id, "begin_date": iso(self.begin), "end_date": iso(self.end)}
        if self.promo_days:
            out["promo_days"] = [iso(d) for d in self.promo_days]
        if self.closed_days:
            out["closed_days"] = [iso(d) for d in self.closed_days]
        return out


def today() -> int:
    """Today in UTC, as days since 1970-01-01."""
    return (dt.datetime.now(dt.UTC).date() - EPOCH).days


def parse_day(value: Any, field: str) -> int:
    """An ISO date or datetime (``2015-08-01``, ``2015-08-01T00:00:00Z``) as days since epoch, UTC."""
    if not isinstance(value, str) or not value.strip():
        raise BusinessRequestError(field, f"expected an ISO date like '2015-08-01', got {short(value)}")
    try:
        return to_day(value)
    except DateError as exc:
        raise BusinessRequestError(field, f"not an ISO date: {exc}") from None


V1_LABELS = ("{where}.storeId", "{where}.beginDate", "{where}.endDate")
V2_LABELS = ("store_id[{i}]", "begin_date[{i}]", "end_date[{i}]")


def window(store: Any, begin: Any, end: Any, where: str, limits: Limits, now: int,
           promo: Any = None, closed: Any = None, labels: tuple[str, str, str] = V1_LABELS,
           i: int = 0) -> StoreWindow:
    """Validate one store's request; missing dates default to the 7 days starting today (UTC)."""
    f_store, f_begin, f_end = (label.format(where=where, i=i) for label in labels)
    if isinstance(store, int) and not isinstance(store, bool) and abs(store) < 10**18:
        store = str(store)
    if not isinstance(store, str) or not store.strip():
        raise BusinessRequestError(f_store, f"required: a non-empty store id, got {short(store)}")
    problem = store_id_problem(store.strip())
    if problem:
        raise BusinessRequestError(f_store, f"store id {problem}")
    b = parse_day(begin, f_begin) if _given(begin) else None
    e = parse_day(end, f_end) if _given(end) else None
    if b is None:
        b = now if e is None or e >= now else e - (DEFAULT_DAYS - 1)
    if e is None:
        e = b + DEFAULT_DAYS - 1
    if e < b:
        raise BusinessRequestError(f_end, f"{iso(e)} is before beginDate {iso(b)}")
    if e - b + 1 > limits.max_days:
        raise BusinessRequestError(f_end, f"window of {e - b + 1} days is over the limit of {limits.max_days}")
    if limits.data_end is not None and b > limits.data_end + limits.max_days_ahead:
        given = "" if _given(begin) else " (default: today, UTC)"
        raise BusinessRequestError(f_begin, f"{iso(b)}{given} is more than {limits.max_days_ahead} days after "
                           f"the model's last day of data, {iso(limits.data_end)} (--max-days-ahead)")
    return StoreWindow(store.strip(), b, e, _days(promo, f"{where}.promoDays", b, e),
                       _days(closed, f"{where}.closedDays", b, e))


def _days(value: Any, field: str, begin: int, end: int) -> tuple[int, ...]:
    """What-if days: a list of ISO dates inside the window (sorted, without repeats)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BusinessRequestError(field, f"expected a list of ISO dates inside the window, got {type(value).__name__}")
    if len(value) > end - begin + 1:
        raise BusinessRequestError(field, f"{len(value)} dates for a window of {end - begin + 1} days")
    days = set()
    for i, item in enumerate(value):
        day = parse_day(item, f"{field}[{i}]")
        if not begin <= day <= end:
            raise BusinessRequestError(f"{field}[{i}]", f"{iso(day)} is outside the window {iso(begin)} .. {iso(end)}")
        days.add(day)
    return tuple(sorted(days))


def asks_stores(body: Any) -> bool:
    """True for the V1 listing ``{"list_stores": true}`` (alone); a listing mixed with a forecast is a 400."""
    if not isinstance(body, dict) or LIST_STORES not in body:
        return False
    if body[LIST_STORES] is not True or len(body) > 1:
        raise BusinessRequestError(LIST_STORES, "the store listing is the body {\"list_stores\": true} alone "
                                   f"(got {short(body[LIST_STORES])}{' beside other keys' if len(body) > 1 else ''})")
    return True


def parse_v1(body: Any, limits: Limits, now: int | None = None) -> list[StoreWindow]:
    """``{"instances": [{"storeId": "4", "beginDate": ..., "endDate": ...}, ...]}`` (camel or snake case)."""
    if not isinstance(body, dict):
        raise BusinessRequestError("body", f"expected a JSON object with 'instances', got {type(body).__name__}")
    unknown = [k for k in body if k not in BODY_KEYS]
    if unknown:
        raise BusinessRequestError("body", f"unknown key {short(unknown[0])}; the body has only 'instances' "
                                   "(or is {\"list_stores\": true})")
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise BusinessRequestError("instances", "expected a non-empty list of {storeId, beginDate, endDate} objects")
    _check_count(len(instances), limits)
    now = today() if now is None else now
    out = []
    for i, inst in enumerate(instances):
        where = f"instances[{i}]"
        if not isinstance(inst, dict):
            raise BusinessRequestError(where, f"expected an object like {{'storeId': '4'}}, got {type(inst).__name__}")
        unknown = [k for k in inst if k not in KNOWN_KEYS]
        if unknown:
            raise BusinessRequestError(f"{where}.{str(unknown[0])[:30]}", f"unknown key {short(unknown[0])}; "
                               f"the keys are {', '.join(KNOWN_KEYS)}")
        values = {key: _pick(inst, names, where) for key, names in ALIASES.items()}
        out.append(window(values["store_id"], values["begin_date"], values["end_date"], where, limits, now,
                          values["promo_days"], values["closed_days"]))
    return out


def parse_columns(store_ids: Sequence[Any], begins: Sequence[Any] | None, ends: Sequence[Any] | None,
                  limits: Limits, now: int | None = None) -> list[StoreWindow]:
    """The V2 form: inputs ``store_id`` and optional ``begin_date``/``end_date``, one element per store."""
    n = len(store_ids)
    if n == 0:
        raise BusinessRequestError("store_id", "expected at least one store id")
    for name, col in (("begin_date", begins), ("end_date", ends)):
        if col is not None and len(col) != n:
            raise BusinessRequestError(name, f"has {len(col)} elements but store_id has {n}")
    _check_count(n, limits)
    now = today() if now is None else now
    return [window(store_ids[i], begins[i] if begins is not None else None, ends[i] if ends is not None else None,
                   "", limits, now, labels=V2_LABELS, i=i) for i in range(n)]


def row_days(windows: list[StoreWindow]) -> np.ndarray:
    """The day (since 1970-01-01) of every answered row, window by window (``serving.contract.window_rows``)."""
    return window_rows([w.begin for w in windows], [w.days for w in windows])


def expand(windows: list[StoreWindow]) -> tuple[np.ndarray, np.ndarray]:
    """Long format: one (store_id, day) row per store-day, in request order."""
    ids = np.repeat(np.array([w.store_id for w in windows], dtype=object), [w.days for w in windows])
    return ids, row_days(windows)


def what_if(windows: list[StoreWindow]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per long-format row: promo and open overrides (int8, -1: as the calendar says), or None if none."""
    if not any(w.promo_days or w.closed_days for w in windows):
        return None
    n = sum(w.days for w in windows)
    promo, open_ = np.full(n, -1, dtype=np.int8), np.full(n, -1, dtype=np.int8)
    start = 0
    for w in windows:
        for d in w.promo_days:
            promo[start + d - w.begin] = 1
        for d in w.closed_days:
            open_[start + d - w.begin] = 0
        start += w.days
    return promo, open_


def _given(value: Any) -> bool:
    return value is not None and value != ""


def _pick(inst: dict[str, Any], names: tuple[str, str], where: str) -> Any:
    camel, snake = names
    if camel in inst and snake in inst and inst[camel] != inst[snake]:
        raise BusinessRequestError(f"{where}.{camel}", f"given twice with different values ({camel} and {snake})")
    return inst.get(camel, inst.get(snake))


def _check_count(n: int, limits: Limits) -> None:
    if n > limits.max_stores:
        raise BusinessRequestError("instances", f"{n} stores in one request, over the limit of {limits.max_stores}")
