"""The references a served version is scored against: the seasonal naive and a global LightGBM (mlforecast).

Both see what the served version sees at the cutoff: the sales before the window (``Cut.history``) and the
window's known-ahead calendar (``Cut.calendar``, no sales); both answer 0 on a day the calendar closes.

The LightGBM reference is one model for every store (``mlforecast.MLForecast``, LightGBM, log1p target),
with the calendar's known-ahead features (open, promo, state holiday, school holiday, days to the next and since
the last state holiday and closure that is not a Sunday), the date's (day of week, day of month, day of year,
month, ISO week; no year: trees cannot extrapolate it), ``store.csv``'s facts (store, type, assortment, competitor
distance as static features; a competitor open, Promo2 active and the Promo2 month as time-varying ones) and
lags / rolling means of at least ``lag_floor(days)`` days only: every lag a forecast day reads lies before the
cutoff, so mlforecast's recursion never feeds a forecast back and the window's sales cannot leak. It is fitted
on the open days with sales; a day missing from the data (a store's months-long gap) is not trained on, and its
lags read the store's typical sales on that weekday; fixed hyper-parameters, seeded.
lightgbm and mlforecast are imported here only, when the reference runs.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.backtest.windows import Cut
from pipelines.training.evaluate import seasonal_naive

INSTALL_HINT = ("the LightGBM reference needs lightgbm and mlforecast: pip install 'storecast[backtest]' "
                "(or --no-lightgbm)")
LGBM_PARAMS: dict[str, Any] = {
    "n_estimators": 600, "learning_rate": 0.05, "num_leaves": 63, "min_child_samples": 50, "subsample": 0.8,
    "subsample_freq": 1, "colsample_bytree": 0.8, "reg_lambda": 1.0, "random_state": 0, "deterministic": True,
    "force_row_wise": True, "verbose": -1,
}
HOLIDAY_CODE = {"0": 0, "a": 1, "b": 2, "c": 3}
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sept", "Oct", "Nov", "Dec")


def seasonal_naive_rows(cut: Cut) -> np.ndarray:
    """Per calendar row: the store's last open-day sales on the same weekday before the cutoff (the trainer's
    baseline, ``pipelines.training.evaluate.seasonal_naive``); 0 on a closed day, NaN for a store without history."""
    hist = cut.history[(cut.history["Open"] == 1) & cut.history["Sales"].notna()]
    cal = cut.calendar
    out = np.full(len(cal), np.nan)
    days = cal["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    by_store = {s: g for s, g in hist.groupby("Store", sort=False)}
    for store, idx in cal.groupby("Store", sort=False).indices.items():
        g = by_store.get(store)
        if g is not None:
            out[idx] = seasonal_naive(g["Date"].to_numpy().astype("datetime64[D]").astype(np.int64),
                                      g["Sales"].to_numpy(np.float64), days[idx])
    return np.where(_open(cal), out, 0.0)


def _open(frame: pd.DataFrame) -> np.ndarray:
    return frame["Open"].fillna(1).to_numpy() == 1 if "Open" in frame else np.ones(len(frame), bool)


def read_store_facts(path: str | Path) -> pd.DataFrame:
    """``store.csv`` (Rossmann's layout) with Store as a string id."""
    facts = pd.read_csv(path, dtype={"Store": str, "StoreType": str, "Assortment": str, "PromoInterval": str})
    facts["Store"] = facts["Store"].str.strip()
    return facts


def lag_floor(days: int) -> int:
    """The shortest lag the reference may use for a ``days``-day window: ``days`` rounded up to whole weeks."""
    return -(-days // 7) * 7


def week_of_year(dates: pd.DatetimeIndex) -> np.ndarray:
    """ISO week number (an mlforecast date feature)."""
    return np.asarray(dates.isocalendar().week, dtype=np.int16)


DATE_FEATURES = ("dayofweek", "day", "dayofyear", "month", week_of_year)


def lag_features(floor: int, rolling_mean: Any, seasonal_mean: Any) -> tuple[list[int], dict[int, list[Any]]]:
    """The lags and the rolling means over lagged sales (mlforecast's), none shorter than ``floor`` days."""
    return [floor, floor + 7], {floor: [rolling_mean(14), rolling_mean(28), rolling_mean(91), seasonal_mean(7, 4)],
                                max(364, floor): [rolling_mean(7)]}


def _grid(cut: Cut) -> pd.DataFrame:
    """Every day of every store with history, from its first day to the window's end: history then calendar
    (a day missing from the data is closed, ``missing``)."""
    hist = cut.history
    first = hist.groupby("Store")["Date"].min()
    end = pd.Timestamp(cut.window.end)
    frames = [pd.DataFrame({"Store": s, "Date": pd.date_range(d, end, freq="D")}) for s, d in first.items()]
    grid = pd.concat(frames, ignore_index=True)
    cal = cut.calendar.drop(columns=[c for c in ("Sales", "Customers") if c in cut.calendar])
    known = pd.concat([hist[["Store", "Date", "Open", "Promo", "StateHoliday", "SchoolHoliday", "Sales"]], cal],
                      ignore_index=True)
    grid = grid.merge(known, on=["Store", "Date"], how="left", indicator="_row")
    grid["missing"] = (grid.pop("_row") == "left_only").to_numpy()
    grid["Open"] = grid["Open"].fillna(0).astype(np.int8)
    grid["Promo"] = grid["Promo"].fillna(0).astype(np.int8)
    grid["SchoolHoliday"] = grid["SchoolHoliday"].fillna(0).astype(np.int8)
    grid["state_holiday"] = grid["StateHoliday"].fillna("0").astype(str).map(HOLIDAY_CODE).fillna(0).astype(np.int8)
    return grid.drop(columns=["StateHoliday"])


IMPUTE = True  # a day missing from the data gets the store's typical day (else 0, as a closed day)
NEAR = 15  # days to / since a holiday or a closure: capped here ("none near")


def _target(grid: pd.DataFrame, past: np.ndarray) -> np.ndarray:
    """Sales as the lags read them: a closed day sold nothing; a day missing from the data (a store's months-long
    gap) is unknown, so it gets the store's median open-day sales on that weekday before the cutoff when the store
    opens on that weekday at least half the time (mlforecast takes no missing target)."""
    y = grid["Sales"].fillna(0.0).to_numpy(np.float64)
    missing = grid["missing"].to_numpy() & past
    if not IMPUTE or not missing.any():
        return y
    weekday = grid["Date"].dt.dayofweek.to_numpy()
    seen = past & ~grid["missing"].to_numpy()
    key = pd.MultiIndex.from_arrays([grid["Store"].to_numpy(), weekday])
    is_open = pd.Series(grid["Open"].to_numpy() == 1, index=key)[seen]
    rate = is_open.groupby(level=[0, 1]).mean()
    typical = pd.Series(y, index=key)[seen & (grid["Open"].to_numpy() == 1)].groupby(level=[0, 1]).median()
    fill = typical.where(rate.reindex(typical.index) >= 0.5, 0.0).reindex(key[missing]).fillna(0.0).to_numpy()
    y[missing] = fill
    return y


def _neighbours(grid: pd.DataFrame) -> None:
    """Known-ahead distances (days) to the store's next and from its last state holiday and closure that is not a
    Sunday, capped at ``NEAR``; read within the grid, so nothing past the window's end is known."""
    store = grid["Store"].to_numpy()
    day = grid["Date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    sunday = grid["Date"].dt.dayofweek.to_numpy() == 6
    events = {"holiday": grid["state_holiday"].to_numpy() > 0,
              "closed": (grid["Open"].to_numpy() == 0) & ~sunday}
    for name, hit in events.items():
        at = pd.Series(np.where(hit, day, np.nan))
        nxt = at.groupby(store).shift(-1).groupby(store).bfill().to_numpy()  # the next one after this day
        prv = at.groupby(store).shift(1).groupby(store).ffill().to_numpy()
        grid[f"days_to_{name}"] = np.nan_to_num(np.minimum(nxt - day, NEAR), nan=NEAR).astype(np.int8)
        grid[f"days_since_{name}"] = np.nan_to_num(np.minimum(day - prv, NEAR), nan=NEAR).astype(np.int8)


def _facts(grid: pd.DataFrame, facts: pd.DataFrame | None) -> list[str]:
    """``store.csv``'s features on the grid (added in place); returns the static ones."""
    codes = pd.factorize(grid["Store"])[0]
    grid["store"] = codes.astype(np.int32)
    if facts is None:
        return ["store"]
    f = grid[["Store"]].merge(facts, on="Store", how="left")
    grid["store_type"] = pd.factorize(f["StoreType"])[0].astype(np.int8)
    grid["assortment"] = pd.factorize(f["Assortment"])[0].astype(np.int8)
    grid["competition_distance"] = f["CompetitionDistance"].to_numpy(np.float64)
    date = grid["Date"]
    since = pd.to_datetime(dict(year=f["CompetitionOpenSinceYear"], month=f["CompetitionOpenSinceMonth"], day=1),
                           errors="coerce")
    has = f["CompetitionDistance"].notna().to_numpy()
    grid["competition_open"] = (has & (since.isna().to_numpy() | (date >= since).to_numpy())).astype(np.int8)
    year = f["Promo2SinceYear"].fillna(1900).astype(int).astype(str)
    week = f["Promo2SinceWeek"].fillna(1).astype(int).astype(str)
    start = pd.to_datetime(year + "-" + week + "-1", format="%G-%V-%u", errors="coerce")
    active = (f["Promo2"].fillna(0).to_numpy() == 1) & (date >= start).to_numpy()
    name = date.dt.month.map(dict(enumerate(MONTHS, 1)))
    interval = f["PromoInterval"].fillna("").astype(str)
    in_month = np.array([m in iv.split(",") for m, iv in zip(name, interval, strict=True)])
    grid["promo2_active"] = active.astype(np.int8)
    grid["promo2_month"] = (active & in_month).astype(np.int8)
    return ["store", "store_type", "assortment", "competition_distance"]


def lightgbm_rows(cut: Cut, facts: pd.DataFrame | None = None, workers: int = 1,
                  params: dict[str, Any] | None = None) -> np.ndarray:
    """The global LightGBM forecast of every calendar row (0 on a closed day, NaN for a store without history)."""
    # OpenMP threads that spin while waiting are ten times slower on a shared machine: wait passively
    # (read when the OpenMP runtime starts, so before lightgbm and scikit-learn load it)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import lightgbm as lgb
        from mlforecast import MLForecast
        from mlforecast.lag_transforms import RollingMean, SeasonalRollingMean
        from mlforecast.target_transforms import GlobalSklearnTransformer
        from sklearn.preprocessing import FunctionTransformer
    except ImportError as exc:
        raise RuntimeError(f"{INSTALL_HINT} ({exc})") from None
    days = cut.window.days
    floor = lag_floor(days)
    grid = _grid(cut)
    _neighbours(grid)
    static = _facts(grid, facts)
    start = pd.Timestamp(cut.window.start)
    past = (grid["Date"] < start).to_numpy()
    trainable = past & (grid["Open"].to_numpy() == 1) & (grid["Sales"].fillna(0).to_numpy() > 0)
    grid["y"] = _target(grid, past)
    frame = grid.drop(columns=["Sales", "missing"]).rename(columns={"Store": "unique_id", "Date": "ds"})
    model = lgb.LGBMRegressor(**{**LGBM_PARAMS, **(params or {}), "n_jobs": max(1, workers)})
    lags, lag_transforms = lag_features(floor, RollingMean, SeasonalRollingMean)
    mlf = MLForecast(
        models={"lightgbm": model}, freq="D", lags=lags, lag_transforms=lag_transforms,
        date_features=list(DATE_FEATURES),
        target_transforms=[GlobalSklearnTransformer(FunctionTransformer(np.log1p, np.expm1))],
        num_threads=1,
    )
    features = mlf.preprocess(frame[past], static_features=static, dropna=False)
    assert len(features) == int(past.sum()), "mlforecast dropped or added history rows"
    keep = trainable[past]
    order = mlf.ts.features_order_
    lags = [int(m) for name in mlf.ts.transforms for m in re.findall(r"lag(\d+)", name)]
    if len(lags) != len(mlf.ts.transforms) or min(lags) < days:  # a shorter lag would read the window's forecasts
        raise AssertionError(f"the reference's lags must all be >= {days} days: {sorted(mlf.ts.transforms)}")
    mlf.fit_models(features.loc[keep, order], features.loc[keep, "y"].to_numpy())
    future = frame.loc[~past].drop(columns=["y", *static])
    with warnings.catch_warnings():  # "Found null values in competition_distance" at every step: no competitor
        warnings.simplefilter("ignore", UserWarning)
        pred = mlf.predict(h=days, X_df=future)
    pred["ds"] = pd.to_datetime(pred["ds"])
    rows = cut.calendar[["Store", "Date"]].merge(pred.rename(columns={"unique_id": "Store", "ds": "Date"}),
                                                 on=["Store", "Date"], how="left")
    out = np.clip(rows["lightgbm"].to_numpy(np.float64), 0.0, None)
    return np.where(_open(cut.calendar), out, 0.0)
