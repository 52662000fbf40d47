"""The cross-process contract: what trainer, predictor and transformer must agree on, in one place.

Imported by ``predictor``, ``transformer`` and ``pipelines``; it imports neither KServe nor numpy at
module level (the predictor forks its prefetch child before numpy is imported).

- **model and artifacts**: the registered model's default name and the files of a version;
- **refresh size**: a refresh names at most ``REFRESH_MAX_STORES`` stores (more is a fleet-wide retrain);
- **shard rule**: shard ``k`` of ``n`` holds the stores with ``crc32(utf-8 store id) % n == k``;
- **store id rule**: a string of 1 to 64 printable characters without surrounding blanks (a request
  may name one as a whole number, blanks around it dropped: ``given_store_id``); their natural order;
- **date rule**: ISO ``YYYY-MM-DD`` between 1900-01-01 and 2199-12-31 (a predictor also takes a
  date-time at midnight UTC; the business API takes any date-time and uses its UTC date);
- **tensors**: the V2 input and output names and datatypes of both servers (tables, so a new
  optional input or output is one line), the packed ``day_flags`` and the one rule of a closed day
  (``closed_days``: the business API answers it 0), and the business instance keys;
- **CloudEvents**: every event type storecast sends or takes, defined here only.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# ---- model and artifacts ------------------------------------------------------------------------
MODEL_NAME = "storecast"
PARAMS_FILE = "params.npz"  # the parameter table the predictor loads
PROPHET_MODELS_FILE = "prophet_models.zip"  # <store_id>.json.gz: stock Prophet JSON per store
STORE_METRICS_FILE = "store_metrics.csv"
MANIFEST_FILE = "manifest.json"
ARTIFACTS_DIR = "artifacts"  # the files above live under the MLflow model's artifacts/ folder

# ---- refresh size -------------------------------------------------------------------------------
# A refresh (a retrain of named stores) names at most this many stores. It is the one number behind: the
# ``refresh`` permission (more stores, or a ping, need ``retrain``: ``serving.access.asgi``), the dashboard's
# refresh button, and the alias a version moves (a version refitting more stores is fleet-sized: it goes
# ``challenger`` and canary, never ``champion`` directly: ``pipelines.versions.lineage.target_alias``; the
# retrain service's ``--auto-champion-stores`` defaults to it).
REFRESH_MAX_STORES = 20

# ---- store ids ----------------------------------------------------------------------------------
MAX_STORE_ID = 64
ECHO_CHARS = 40  # at most this much of a bad value is quoted back in an error message


def store_id_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid store id (None when it is one)."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not value or not value.strip():
        return "is empty"
    if len(value) > MAX_STORE_ID:
        return f"is {len(value)} characters long; at most {MAX_STORE_ID}"
    if value != value.strip():
        return f"{short(value)} has leading or trailing blanks"
    if not value.isprintable():
        return f"{short(value)} holds a control or other non-printable character"
    return None


def given_store_id(value: Any) -> str:
    """A store id as a request names it: a string (surrounding blanks dropped) or a whole number (never a
    bool); ``ValueError`` ``"store id ..."`` says why it is not one (the rule: ``store_id_problem``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= 10**MAX_STORE_ID:
            raise ValueError(f"store id is a number of more than {MAX_STORE_ID} digits")
        value = str(value)
    if isinstance(value, str):
        value = value.strip()
    problem = store_id_problem(value)
    if problem:
        raise ValueError(f"store id {problem}")
    return value


def given_store_ids(value: Any, field: str = "store_ids", most: int | None = None) -> list[str]:
    """The store ids a request names (``given_store_id`` each): a non-empty list of at most ``most``;
    ``ValueError`` names ``field`` (or ``field[i]``) and the problem."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{field}: expected a non-empty list of store ids")
    if most is not None and len(value) > most:
        raise ValueError(f"{field}: {len(value)} stores is over the limit of {most} for one refresh")
    out = []
    for i, item in enumerate(value):
        try:
            out.append(given_store_id(item))
        except ValueError as exc:
            raise ValueError(f"{field}[{i}]: {exc}") from None
    return out


def store_sort_key(store_id: str) -> tuple[int, int, str]:
    """Numeric ids by number (1, 2, 10), then the others as text (ASCII digits only: '²' is text)."""
    return (0, int(store_id), "") if store_id.isascii() and store_id.isdigit() else (1, 0, store_id)


def short(value: Any, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters (errors never echo a whole hostile value)."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit + 2 else text[:limit] + "..."


# ---- shards -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Shard ``k`` of ``n``: the stores with ``crc32(store_id) % n == k``."""

    k: int
    n: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` with ``0 <= K < N``."""
        try:
            k, n = (int(part) for part in str(text).split("/"))
        except ValueError:
            raise ValueError(f"shard must be K/N, e.g. 0/4; got {short(text)}") from None
        if n < 1 or not 0 <= k < n:
            raise ValueError(f"shard must be K/N with 0 <= K < N; got {short(text)}")
        return cls(k, n)

    def holds(self, store_id: str) -> bool:
        return shard_of_id(store_id, self.n) == self.k

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


def shard_of_id(store_id: str, shards: int) -> int:
    """The shard of one store id."""
    return zlib.crc32(str(store_id).encode("utf-8", "surrogatepass")) % shards


def shard_of(store_ids: Sequence[Any] | np.ndarray, shards: int) -> np.ndarray:
    """The shard of each store id (int64 array); the hash is computed once per distinct id."""
    import numpy as np

    n = len(store_ids)
    if shards == 1:
        return np.zeros(n, dtype=np.int64)
    unique, inverse = np.unique(np.asarray(store_ids, dtype=str), return_inverse=True)
    per_id = np.fromiter((shard_of_id(s, shards) for s in unique.tolist()), dtype=np.int64, count=len(unique))
    return per_id[inverse].reshape(n)


# ---- dates --------------------------------------------------------------------------------------
EPOCH = dt.date(1970, 1, 1)
MIN_DATE, MAX_DATE = dt.date(1900, 1, 1), dt.date(2199, 12, 31)
MIN_DAY, MAX_DAY = (MIN_DATE - EPOCH).days, (MAX_DATE - EPOCH).days
MAX_DAYS_AHEAD = 1096  # default horizon: a request may reach this many days past a version's data end


class DateError(ValueError):
    """A value that is not a date of the contract; the message says why (without the field name)."""


def iso(day: int) -> str:
    """``YYYY-MM-DD`` of days since 1970-01-01."""
    return (EPOCH + dt.timedelta(days=int(day))).isoformat()


def to_day(value: Any, midnight_only: bool = False) -> int:
    """Days since 1970-01-01 of an ISO date (or date-time: at midnight UTC only if ``midnight_only``)."""
    if not isinstance(value, str):
        raise DateError(f"expected an ISO date like '2015-08-01', got {type(value).__name__} {short(value)}")
    text = value.strip()
    if len(text) > 40 or not text:
        raise DateError(f"not a date (expected YYYY-MM-DD): {short(value)}")
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
        else:
            stamp = dt.datetime.fromisoformat(text.replace("z", "Z"))
            if stamp.tzinfo is not None:
                stamp = stamp.astimezone(dt.UTC)
            if midnight_only and (stamp.hour, stamp.minute, stamp.second, stamp.microsecond) != (0, 0, 0, 0):
                raise DateError(f"not midnight UTC (whole days are forecast): {short(value)}")
            day = stamp.date()
    except (ValueError, OverflowError) as exc:
        if isinstance(exc, DateError):
            raise
        raise DateError(f"not a date (expected YYYY-MM-DD): {short(value)}") from None
    if not MIN_DATE <= day <= MAX_DATE:
        raise DateError(f"{day.isoformat()} is outside {MIN_DATE.isoformat()} .. {MAX_DATE.isoformat()}")
    return (day - EPOCH).days


# ---- tensors ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tensor:
    """One V2 input or output: its name, the datatypes accepted (the first is the one answered) and
    whether it is required (inputs) or given when a request names no outputs (outputs)."""

    name: str
    datatypes: tuple[str, ...]
    required: bool = False
    default: bool = False
    help: str = ""

    @property
    def datatype(self) -> str:
        return self.datatypes[0]


def names(tensors: Sequence[Tensor], *, required: bool = False, default: bool = False) -> tuple[str, ...]:
    return tuple(t.name for t in tensors if (not required or t.required) and (not default or t.default))


# The predictor: long format, one row per store-day (``store_id`` and ``ds``, shape [n]), or the windows
# form, one element per store window (``store_id``, ``begin_day``, ``days``, shape [m]; the transformer's
# bulk path). Either way the answer is one row per store-day: the windows form answers window by
# window, day by day, sum(days) rows; ``promo`` / ``open`` have one element per answered row.
PREDICTOR_INPUTS = (
    Tensor("store_id", ("BYTES",), required=True, help="store id per row (windows form: per window)"),
    Tensor("ds", ("BYTES",), required=True, help="ISO date per row (long format)"),
    Tensor("begin_day", ("INT32", "INT64"), help="windows form, instead of ds: first day, days since 1970-01-01"),
    Tensor("days", ("INT32", "INT64"), help="windows form: length of the window in days, from 1"),
    Tensor("promo", ("INT32", "BOOL"), help="what-if: 1 promotion, 0 none, -1 as the calendar says"),
    Tensor("open", ("INT32", "BOOL"), help="what-if: 1 open, 0 closed, -1 as the calendar says"),
)
WINDOW_INPUTS = ("begin_day", "days")  # given together, they replace ds


def window_rows(begin: Sequence[int] | np.ndarray, days: Sequence[int] | np.ndarray) -> np.ndarray:
    """The windows form's rows: ``begin[i], begin[i] + 1, ..., begin[i] + days[i] - 1`` for each window in
    turn (int64; ``days`` >= 1). Of first days it gives each row's day; of first row numbers, the rows."""
    import numpy as np

    begin, days = np.asarray(begin, dtype=np.int64), np.asarray(days, dtype=np.int64)
    return np.repeat(begin - (np.cumsum(days) - days), days) + np.arange(int(days.sum()), dtype=np.int64)

PREDICTOR_OUTPUTS = (
    Tensor("yhat", ("FP64",), default=True),
    Tensor("yhat_lower", ("FP64",), default=True),
    Tensor("yhat_upper", ("FP64",), default=True),
    Tensor("open_rate", ("FP64",), help="share of that weekday the store was open in its last 52 weeks"),
    Tensor("open", ("INT32",), help="1 open, 0 closed (calendar, what-if, else the weekday pattern)"),
    Tensor("promo", ("INT32",), help="1 when a promotion runs"),
    Tensor("holiday", ("BYTES",), help="state holiday code: 0, a, b or c"),
    Tensor("calendar", ("BYTES",), help="where open/promo/holiday came from: calendar, default or what-if"),
    Tensor("day_flags", ("INT32",), help="open, promo, holiday and calendar packed in one number (bulk path): "
           "bit 0 open, bit 1 promo, bits 2-3 the holiday code's index, bits 4-5 the calendar source's index"),
)
# The transformer's V2: one element per store, answered in the long format.
TRANSFORMER_INPUTS = (
    Tensor("store_id", ("BYTES",), required=True),
    Tensor("begin_date", ("BYTES",), help="ISO date; empty: today (UTC)"),
    Tensor("end_date", ("BYTES",), help="ISO date; empty: begin + 6 days"),
)
TRANSFORMER_OUTPUTS = (
    Tensor("store_id", ("BYTES",), default=True),
    Tensor("ds", ("BYTES",), default=True),
    Tensor("yhat", ("FP64",), default=True),
    Tensor("yhat_lower", ("FP64",), default=True),
    Tensor("yhat_upper", ("FP64",), default=True),
    Tensor("open_rate", ("FP64",), default=True),
    Tensor("open", ("INT32",)),
    Tensor("promo", ("INT32",)),
    Tensor("holiday", ("BYTES",)),
    Tensor("calendar", ("BYTES",)),
)
CALENDAR_SOURCES = ("calendar", "default", "what-if")
HOLIDAY_CODES = ("0", "a", "b", "c")  # state holiday: none, public, Easter, Christmas


def pack_day_flags(open_: np.ndarray, promo: np.ndarray, holiday: np.ndarray, source: np.ndarray) -> np.ndarray:
    """``day_flags`` (int32) of 0/1 ``open_`` and ``promo``, the index of each day's holiday code in
    ``HOLIDAY_CODES`` and of its source in ``CALENDAR_SOURCES``."""
    import numpy as np

    return (np.asarray(open_, np.int32) | np.asarray(promo, np.int32) << 1 | np.asarray(holiday, np.int32) << 2
            | np.asarray(source, np.int32) << 4)


def unpack_day_flags(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """open (0/1), promo (0/1), holiday index, source index of ``day_flags``: the inverse of ``pack_day_flags``."""
    import numpy as np

    f = np.asarray(flags, dtype=np.int32)
    return f & 1, f >> 1 & 1, f >> 2 & 3, f >> 4 & 3


def closed_days(flags: np.ndarray) -> np.ndarray:
    """True on each day the business API answers closed, with 0 sales (value, lower and upper 0): the open bit
    of ``day_flags`` is 0, whatever closed it (the calendar, a what-if, or the store's weekday pattern beyond
    the calendar). The one rule of "closed"; the predictor's model-ready outputs keep Prophet's numbers.
    ``flags`` is an integer numpy array (no import here: it runs on every business request)."""
    return (flags & 1) == 0


LIST_STORES = "list_stores"  # V2 parameter (V1 key): answer the stores served instead of a forecast

# Business API (transformer V1): the keys of one instance, camelCase first.
INSTANCE_KEYS = {
    "store_id": ("storeId", "store_id"),
    "begin_date": ("beginDate", "begin_date"),
    "end_date": ("endDate", "end_date"),
    "promo_days": ("promoDays", "promo_days"),
    "closed_days": ("closedDays", "closed_days"),
}

# ---- CloudEvents --------------------------------------------------------------------------------
# Every type storecast sends or takes (``pipelines.events`` emits and parses them; tests keep literals to
# check the wire).
FORECAST_REQUESTED = "com.storecast.forecast.requested"  # a business request (transformer)
FORECAST_COMPLETED = "com.storecast.forecast.completed"  # its answer
RETRAIN_REQUESTED = "com.storecast.retrain.requested"  # data {"store_ids": [...], "reason": ..., "force": false}
PING = "dev.knative.sources.ping"  # Knative's PingSource: retrain whatever is stale
SALES_APPENDED = "com.storecast.sales.appended"  # new actual sales: the accuracy watch
CALENDAR_UPDATED = "com.storecast.calendar.updated"  # data {"calendar": REF of a calendar in the sales store}
MODEL_REGISTERED = "com.storecast.model.registered"  # a retrain job's version (retrain service)
RETRAIN_FAILED = "com.storecast.retrain.failed"
ROLLOUT_PROMOTED = "com.storecast.rollout.promoted"  # a canary's outcome (with its timeline)
ROLLOUT_ROLLEDBACK = "com.storecast.rollout.rolledback"
