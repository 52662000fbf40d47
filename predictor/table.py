"""The compact parameter table: every store's fitted Prophet parameters as numpy arrays.

One `params.npz` per model version. The trainer writes it (``pipelines``); the predictor loads it
once at start and evaluates forecasts from it with numpy only (see ``predictor.forecast``).

Layout (``n`` stores sorted by id, ``S`` changepoints, ``K`` Fourier features, ``G`` interval grid):

- ``store_id`` (n,) str, sorted as strings (lookups bisect it);
  ``start``, ``t_scale`` (n,) seconds; ``y_scale``, ``floor``, ``k``, ``m``, ``sigma_obs`` (n,);
  ``delta``, ``cp_t`` (n, S), padded with ``delta=0, cp_t=inf``;
  ``beta`` (n, K) with the feature layout ``feat_period``, ``feat_harmonic``, ``feat_cos`` (K,):
  column j is ``sin`` (or ``cos``) of ``2*pi*harmonic/period * days_since_epoch``;
- ``last_day`` (n,) int64: days since epoch of each store's last history date (Prophet's t = 1);
- interval offsets relative to yhat, simulated with Prophet's method at training time:
  ``iv_days`` (G,) days after ``last_day`` (``iv_days[0] == 0`` stands for every history date),
  ``iv_lower``, ``iv_upper`` (n, G); beyond the grid they grow with the variance
  ``iv_trend_var * h**3 + iv_noise_var`` (h days ahead);
- ``open_rate`` (n, 7): the share of each weekday (Monday first) the store was open in its last 52
  weeks of data (1 where the data say nothing), so a forecast can say which days it is usually closed
  (Prophet is fitted on open days only: its value for a closed weekday is an extrapolation);
- the calendar model (``predictor.calendar``): ``reg_names`` (R,) the regressors, ``reg_beta`` (n, R) their
  coefficients (on the fitted scale, before ``y_scale``; 0 where a store does not use one);
  ``calendar`` (n, D, 4) int8 cells on the day grid ``cal_start`` () .. ``cal_start + D - 1`` (-1: not in
  the calendar); ``transform`` () the target transform (``none`` or ``log1p``: the model was fitted on
  ``log1p(sales)`` and forecasts are ``expm1`` of Prophet's); ``iv_scale`` (n,) the split-conformal
  calibration of the interval offsets (1: as simulated); ``reg_iv`` (n, R) how much wider the interval is
  on a day a regressor is active (>= 1; the widest active one applies: rare days are known less well);
- the store's own history: ``best_day`` (n,) its highest daily sales (the plausible band a version's
  forecasts are checked against; inf: unknown), ``level_day`` (n,) int64 the day it reopened after its last
  long gap in sales (``predictor.special_days``; ``NO_GAP`` when it never had one);
- the default calendar beyond the known one (``predictor.calendar.Holidays``): fleet-wide ``hol_days`` (H,)
  int64 sorted, ``hol_codes`` (H,) int8 StateHoliday codes 1..3, ``hol_kinds`` (H,) int8 (index into
  ``predictor.calendar.HOLIDAY_KINDS``, -1 none): the public holidays from the first history day to decades
  ahead; per store ``holiday_open`` (n, 4) the share of its history days with each code on which it was
  open (column 0 unused, 1) and ``holiday_kind_open`` (n, K) the same per holiday kind (-1: no evidence);
- ``interval_width`` () and ``meta`` () a JSON string.

``storecast-params/1`` tables (no ``open_rate``) load with every weekday open; format 1 and 2 tables
load with no regressors, an empty calendar, no transform and ``iv_scale`` 1; tables without a default
calendar load without one (no default holiday: open as the weekday pattern says, as before).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from predictor import calendar as cal
from serving.contract import store_sort_key

FORMAT = "storecast-params/3"
READABLE = ("storecast-params/1", "storecast-params/2", FORMAT)
TRANSFORMS = ("none", "log1p")
PER_STORE = (
    "store_id", "start", "t_scale", "y_scale", "floor", "k", "m", "sigma_obs", "delta", "cp_t", "beta",
    "last_day", "iv_lower", "iv_upper", "iv_trend_var", "iv_noise_var", "open_rate", "reg_beta", "calendar",
    "iv_scale", "best_day", "level_day", "reg_iv", "holiday_open", "holiday_kind_open",
)
NO_GAP = 10**9  # level_day of a store that never reopened after a gap (far after any served day)
# holiday_open of a store nothing is known of: closed on every public holiday (Germany's shops close by law)
NO_HABIT = np.array([1.0, 0.0, 0.0, 0.0])


class UnknownStoresError(KeyError):
    """Raised when a request names stores the table does not hold."""

    def __init__(self, stores: list[str]) -> None:
        super().__init__(stores)
        self.stores = stores

    def __str__(self) -> str:
        shown = ", ".join(repr(s) for s in self.stores[:20])
        more = f" and {len(self.stores) - 20} more" if len(self.stores) > 20 else ""
        return f"unknown store_id: {shown}{more}"


def shard_of(store_ids: np.ndarray | list[str], shards: int) -> np.ndarray:
    """The shard of each store: the contract's rule, ``crc32(store_id) % shards`` (``serving.contract``)."""
    from serving.contract import shard_of as rule

    return rule(store_ids, shards)


@dataclass(frozen=True)
class ParamTable:
    """Fitted parameters of many stores, evaluated by ``predictor.forecast.forecast``."""

    store_id: np.ndarray
    start: np.ndarray
    t_scale: np.ndarray
    y_scale: np.ndarray
    floor: np.ndarray
    k: np.ndarray
    m: np.ndarray
    sigma_obs: np.ndarray
    delta: np.ndarray
    cp_t: np.ndarray
    beta: np.ndarray
    last_day: np.ndarray
    iv_lower: np.ndarray
    iv_upper: np.ndarray
    iv_trend_var: np.ndarray
    iv_noise_var: np.ndarray
    open_rate: np.ndarray
    reg_beta: np.ndarray
    calendar: np.ndarray
    iv_scale: np.ndarray
    best_day: np.ndarray
    level_day: np.ndarray
    reg_iv: np.ndarray
    holiday_open: np.ndarray
    holiday_kind_open: np.ndarray
    feat_period: np.ndarray
    feat_harmonic: np.ndarray
    feat_cos: np.ndarray
    iv_days: np.ndarray
    reg_names: np.ndarray
    hol_days: np.ndarray
    hol_codes: np.ndarray
    hol_kinds: np.ndarray
    cal_start: int
    transform: str
    interval_width: float
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.store_id)

    @property
    def hol_table(self) -> cal.HolidayTable:
        """The default holidays (days, codes, kinds); empty in a version without a default calendar."""
        return cal.HolidayTable(self.hol_days, self.hol_codes, self.hol_kinds)

    @property
    def holidays(self) -> cal.Holidays | None:
        """The default holidays and every store's habit on them, for ``predictor.calendar.resolve``; None when
        the version has no default calendar."""
        if not len(self.hol_days):
            return None
        return cal.Holidays(self.hol_table, self.holiday_open, self.holiday_kind_open)

    # ---- lookup -------------------------------------------------------------------------
    def index(self, store_ids: np.ndarray) -> np.ndarray:
        """Row index of each requested store id; raises UnknownStoresError naming the unknown ones."""
        ids = np.asarray(store_ids, dtype=str)
        if len(self.store_id) == 0:
            if len(ids):
                raise UnknownStoresError(sorted(set(ids.tolist())))
            return np.zeros(0, dtype=np.int64)
        pos = np.searchsorted(self.store_id, ids)
        pos = np.minimum(pos, len(self.store_id) - 1)
        bad = self.store_id[pos] != ids
        if bad.any():
            raise UnknownStoresError(sorted(set(ids[bad].tolist()), key=store_sort_key))
        return pos

    # ---- building -----------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], iv_days: np.ndarray, interval_width: float,
                  meta: dict[str, Any] | None = None, transform: str = "none",
                  holidays: cal.HolidayTable | tuple[np.ndarray, ...] | None = None) -> ParamTable:
        """Assemble a table from per-store rows (``pipelines.training.export.store_row`` output).

        Each row carries its own Fourier layout (``features``: list of (period, harmonic, cos)) and
        regressors (``regressors`` names, ``reg_beta``); the table uses the unions, so stores with
        different seasonalities can share a version. A row's calendar (``cal_start``, ``calendar``
        (D, 4)) is optional; the table puts every store's on one day grid. ``holidays``: the default
        calendar (``pipelines.data.public_holidays``; (days, codes[, kinds])); when not given, the one the
        rows were fitted with (``default_holidays``, ``pipelines.data.calendar.StoreCalendar.habits``), if any.
        A row's habits on it: ``holiday_open`` (4,) and ``holiday_kind_open`` (K,) (absent: closed on every
        holiday).
        """
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}; got {transform!r}")
        rows = sorted(rows, key=lambda r: str(r["store_id"]))  # lexical: index() bisects
        layout: dict[tuple[float, int, bool], int] = {}
        reg_layout: dict[str, int] = {}
        for r in rows:
            for feat in r["features"]:
                layout.setdefault(tuple(feat), len(layout))
            for name in r.get("regressors", ()):
                reg_layout.setdefault(str(name), len(reg_layout))
        n, n_feat = len(rows), len(layout)
        n_cp = max((len(r["delta"]) for r in rows), default=0)
        beta = np.zeros((n, n_feat))
        reg_beta = np.zeros((n, len(reg_layout)))
        reg_iv = np.ones((n, len(reg_layout)))
        delta = np.zeros((n, n_cp))
        cp_t = np.full((n, n_cp), np.inf)
        for i, r in enumerate(rows):
            cols = [layout[tuple(f)] for f in r["features"]]
            beta[i, cols] = r["beta"]
            reg_cols = [reg_layout[str(x)] for x in r.get("regressors", ())]
            reg_beta[i, reg_cols] = r.get("reg_beta", ())
            reg_iv[i, reg_cols] = r.get("reg_iv", np.ones(len(reg_cols)))
            delta[i, : len(r["delta"])] = r["delta"]
            cp_t[i, : len(r["cp_t"])] = r["cp_t"]
        keys = list(layout)
        cal_start, calendar = _calendar_grid(rows)

        def col(name: str, dtype: Any = np.float64) -> np.ndarray:
            return np.array([r[name] for r in rows], dtype=dtype)

        grid = len(iv_days)
        hol = cal.NO_HOLIDAYS
        if holidays is not None:
            hol = cal.holiday_table(*holidays)
        else:  # the rows' own (one object for a whole job's rows)
            for given in {id(r["default_holidays"]): r["default_holidays"] for r in rows
                          if r.get("default_holidays") is not None}.values():
                hol = _merged_holidays(hol, cal.holiday_table(*given))
        kinds = len(cal.HOLIDAY_KINDS)
        return cls(
            store_id=np.array([str(r["store_id"]) for r in rows], dtype=str),
            start=col("start"), t_scale=col("t_scale"), y_scale=col("y_scale"), floor=col("floor"),
            k=col("k"), m=col("m"), sigma_obs=col("sigma_obs"), delta=delta, cp_t=cp_t, beta=beta,
            last_day=col("last_day", np.int64),
            iv_lower=np.array([r["iv_lower"] for r in rows]).reshape(n, grid),
            iv_upper=np.array([r["iv_upper"] for r in rows]).reshape(n, grid),
            iv_trend_var=col("iv_trend_var"), iv_noise_var=col("iv_noise_var"),
            open_rate=np.array([r.get("open_rate", np.ones(7)) for r in rows], dtype=np.float64).reshape(n, 7),
            reg_beta=reg_beta, reg_iv=reg_iv, calendar=calendar,
            iv_scale=np.array([float(r.get("iv_scale", 1.0)) for r in rows], dtype=np.float64),
            best_day=np.array([float(r.get("best_day", np.inf)) for r in rows], dtype=np.float64),
            level_day=np.array([int(r.get("level_day", NO_GAP)) for r in rows], dtype=np.int64),
            holiday_open=np.array([r.get("holiday_open", NO_HABIT) for r in rows], dtype=np.float64).reshape(n, 4),
            holiday_kind_open=np.array([r.get("holiday_kind_open", np.full(kinds, -1.0)) for r in rows],
                                       dtype=np.float64).reshape(n, kinds),
            hol_days=hol.days, hol_codes=hol.codes, hol_kinds=hol.kinds,
            feat_period=np.array([f[0] for f in keys], dtype=np.float64),
            feat_harmonic=np.array([f[1] for f in keys], dtype=np.float64),
            feat_cos=np.array([f[2] for f in keys], dtype=bool),
            iv_days=np.asarray(iv_days, dtype=np.int64), reg_names=np.array(list(reg_layout), dtype=str),
            cal_start=cal_start, transform=transform, interval_width=float(interval_width),
            meta=dict(meta or {}),
        )

    def with_calendar(self, calendars: dict[str, tuple[int, np.ndarray]]) -> ParamTable:
        """This table with the calendars of the given stores replaced (no refit: a calendar push)."""
        rows = []
        for i in range(len(self)):
            row = _row(self, i)
            sid = row["store_id"]
            if sid in calendars:
                row["cal_start"], row["calendar"] = calendars[sid]
            rows.append(row)
        return ParamTable.from_rows(rows, self.iv_days, self.interval_width, self.meta, self.transform,
                                    self.hol_table)

    def with_meta(self, **meta: Any) -> ParamTable:
        """This table with some ``meta`` keys set."""
        return replace(self, meta={**self.meta, **meta})

    def take(self, rows: np.ndarray) -> ParamTable:
        """A table of the given rows (boolean mask or indices), in table order."""
        rows = np.sort(np.flatnonzero(rows)) if np.asarray(rows).dtype == bool else np.sort(rows)
        return replace(self, **{name: getattr(self, name)[rows] for name in PER_STORE})

    def shard(self, k: int, n: int) -> ParamTable:
        """Only the stores of shard ``k`` of ``n`` (``crc32(store_id) % n == k``)."""
        if n < 1 or not 0 <= k < n:
            raise ValueError(f"shard must be K/N with 0 <= K < N, got {k}/{n}")
        return self.take(shard_of(self.store_id, n) == k)

    def merged_with(self, newer: ParamTable) -> ParamTable:
        """This table with ``newer``'s stores replaced or added (a retrain derived from a parent)."""
        if not np.array_equal(self.iv_days, newer.iv_days):
            raise ValueError("interval grids differ: retrain with the parent's grid")
        if self.transform != newer.transform and len(self) and len(newer):
            raise ValueError(f"target transforms differ ({self.transform} vs {newer.transform}): "
                             "retrain with the parent's configuration")
        keep = self.take(~np.isin(self.store_id, newer.store_id))
        rows = [_row(keep, i) for i in range(len(keep))] + [_row(newer, i) for i in range(len(newer))]
        return ParamTable.from_rows(rows, self.iv_days, newer.interval_width, {**self.meta, **newer.meta},
                                    newer.transform if len(newer) else self.transform,
                                    _merged_holidays(self.hol_table, newer.hol_table))

    # ---- files --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the table as an uncompressed ``.npz`` (no pickles: loads with allow_pickle=False)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("meta",)}
        arrays["interval_width"] = np.float64(self.interval_width)
        arrays["cal_start"] = np.int64(self.cal_start)
        arrays["transform"] = np.array(self.transform)
        arrays["meta"] = np.array(json.dumps({**self.meta, "format": FORMAT}))
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ParamTable:
        """Read a table written by ``save``."""
        with np.load(path, allow_pickle=False) as z:
            data = {name: z[name] for name in z.files}
        meta = json.loads(str(data.pop("meta")))
        if meta.get("format") not in READABLE:
            raise ValueError(f"{path}: not a {FORMAT} table (format={meta.get('format')!r})")
        n = len(data["store_id"])
        data["interval_width"] = float(data["interval_width"])
        data.setdefault("open_rate", np.ones((n, 7)))
        data.setdefault("reg_names", np.zeros(0, dtype=str))
        data.setdefault("reg_beta", np.zeros((n, len(data["reg_names"]))))
        data.setdefault("calendar", np.zeros((n, 0, 4), dtype=np.int8))
        data.setdefault("iv_scale", np.ones(n))
        data.setdefault("best_day", np.full(n, np.inf))
        data.setdefault("level_day", np.full(n, NO_GAP, dtype=np.int64))
        data.setdefault("reg_iv", np.ones_like(data["reg_beta"]))
        data.setdefault("holiday_open", np.tile(NO_HABIT, (n, 1)))
        data.setdefault("holiday_kind_open", np.full((n, len(cal.HOLIDAY_KINDS)), -1.0))
        none = cal.NO_HOLIDAYS
        hol = cal.holiday_table(data.pop("hol_days", none.days), data.pop("hol_codes", none.codes),
                                data.pop("hol_kinds", None))
        data.update(hol_days=hol.days, hol_codes=hol.codes, hol_kinds=hol.kinds)
        data["cal_start"] = int(data.get("cal_start", 0))
        data["transform"] = str(data.get("transform", "none"))
        return cls(meta=meta, **data)


def _row(table: ParamTable, i: int) -> dict[str, Any]:
    """One store of a table back as a row for ``from_rows``."""
    used = table.cp_t[i] < np.inf
    skip = ("store_id", "delta", "cp_t", "beta", "reg_beta", "reg_iv", "calendar")
    return {
        "store_id": str(table.store_id[i]),
        **{name: getattr(table, name)[i] for name in PER_STORE if name not in skip},
        "delta": table.delta[i][used], "cp_t": table.cp_t[i][used], "beta": table.beta[i],
        "features": list(zip(table.feat_period.tolist(), table.feat_harmonic.astype(int).tolist(),
                             table.feat_cos.tolist(), strict=True)),
        "regressors": table.reg_names.tolist(), "reg_beta": table.reg_beta[i], "reg_iv": table.reg_iv[i],
        "cal_start": table.cal_start, "calendar": table.calendar[i],
    }


def _merged_holidays(older: cal.HolidayTable, newer: cal.HolidayTable) -> cal.HolidayTable:
    """The default holidays of a derived version: ``newer``'s over its span, ``older``'s outside it (a derived
    version never loses a day its parent knew)."""
    if not len(newer.days):
        return older
    keep = (older.days < newer.days[0]) | (older.days > newer.days[-1])
    return cal.holiday_table(np.r_[older.days[keep], newer.days], np.r_[older.codes[keep], newer.codes],
                             np.r_[older.kinds[keep], newer.kinds])


def _calendar_grid(rows: list[dict[str, Any]]) -> tuple[int, np.ndarray]:
    """Every row's calendar (``cal_start``, ``calendar`` (D, 4)) on one common day grid; -1 elsewhere."""
    spans = [(int(r["cal_start"]), np.asarray(r["calendar"], dtype=np.int8)) for r in rows
             if r.get("calendar") is not None and len(r["calendar"])]
    if not spans:
        return 0, np.full((len(rows), 0, 4), -1, dtype=np.int8)
    start = min(s for s, _ in spans)
    end = max(s + len(c) for s, c in spans)
    grid = np.full((len(rows), end - start, 4), -1, dtype=np.int8)
    for i, r in enumerate(rows):
        cal = r.get("calendar")
        if cal is not None and len(cal):
            a = int(r["cal_start"]) - start
            grid[i, a: a + len(cal)] = cal
    return start, grid
