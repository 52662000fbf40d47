"""A version is checked on its whole horizon before it serves: every store, every day from the day after its
data to ``--max-days-ahead`` later and to the end of its known-ahead calendar.

Versions crafted to blow up only far out (a steep trend from a late changepoint; a promotion coefficient
that only matters on a promotion day 800 days ahead, on the ``log1p`` scale) pass a check of the day
after the data, and are refused here naming the store and the day; a real predictor keeps serving the
version it had, and that version answers the far day with numbers, not ``null``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from predictor.forecast import forecast
from predictor.table import ParamTable
from predictor.validate import VersionRefused, check, horizon
from serving.contract import iso
from tests.support import ADMIN, MODEL, Predictor, admin_auth, random_table

FAR = 800  # days after the data: past the 366 precomputed, inside the 1096 a request may reach


@pytest.fixture(scope="module")
def good() -> ParamTable:
    return random_table(6, seed=7)


def late_slope(t: ParamTable, row: int = 2) -> ParamTable:
    """A changepoint after the data (t = 1.5) with a slope that overflows the trend from there on."""
    n = len(t)
    delta = np.concatenate([t.delta, np.zeros((n, 1))], axis=1)
    cp_t = np.concatenate([t.cp_t, np.full((n, 1), np.inf)], axis=1)
    delta[row, -1], cp_t[row, -1] = 1e308, 1.5
    return replace(t, delta=delta, cp_t=cp_t)


def late_promotion(t: ParamTable, row: int = 3) -> ParamTable:
    """A ``log1p`` version (about 3,000 sales a day) whose promotion coefficient overflows ``expm1`` on the one
    promotion day of its calendar, ``FAR`` days after the data."""
    n = len(t)
    calendar = np.full((n, FAR, 4), -1, dtype=np.int8)
    calendar[row, FAR - 1] = (1, 1, 0, 0)  # day FAR: open, a promotion
    reg_beta = np.zeros((n, 1))
    reg_beta[row, 0] = 100.0  # x y_scale 10: +1000 on the log scale
    return replace(t, transform="log1p", y_scale=np.full(n, 10.0), floor=np.zeros(n), m=np.full(n, 0.8),
                   k=np.zeros(n), delta=np.zeros_like(t.delta), beta=t.beta / 100, iv_lower=t.iv_lower / 1e4,
                   iv_upper=t.iv_upper / 1e4, reg_names=np.array(["promo"]), reg_beta=reg_beta, reg_iv=np.ones((n, 1)),
                   calendar=calendar,
                   cal_start=int(t.last_day.min()) + 1, last_day=np.full(n, int(t.last_day.min())))


def day_after_is_finite(t: ParamTable) -> bool:
    """What the check used to look at: every store's first day ahead."""
    rows = np.arange(len(t))
    with np.errstate(all="ignore"):
        return bool(np.isfinite(np.stack(forecast(t, rows, t.last_day + 1))).all())


@pytest.mark.parametrize("make,row,ahead", [(late_slope, 2, None), (late_promotion, 3, FAR)],
                         ids=["late slope", "late promotion"])
def test_a_version_that_blows_up_far_out_is_refused_naming_store_and_day(good: ParamTable, make, row: int,
                                                                           ahead: int | None) -> None:
    bad = make(good)
    assert day_after_is_finite(bad)  # the old check let it through
    with pytest.raises(VersionRefused) as info:
        check(bad)
    message = str(info.value)
    store = str(bad.store_id[row])
    assert f"store {store!r} on " in message and "not finite" in message, message
    day = re.search(r"on (\d{4}-\d\d-\d\d) \((\d+) days after its data\)", message)
    assert day, message
    if ahead is not None:  # the promotion day, exactly
        assert day.group(1) == iso(int(bad.last_day[row]) + ahead) and day.group(2) == str(ahead)
    else:  # the first day the trend overflows: after the data, inside the horizon
        assert 1 < int(day.group(2)) <= 1096
    with np.errstate(all="ignore"):  # that store and day are indeed not finite
        d = np.datetime64(day.group(1)).astype(np.int64)
        assert not np.isfinite(np.stack(forecast(bad, np.array([row]), np.array([d])))).all()


def test_the_horizon_reaches_the_calendar_and_the_request_limit(good: ParamTable) -> None:
    first, last = horizon(good, 1096)
    assert (first == good.last_day + 1).all() and (last == good.last_day + 1096).all()
    promo = late_promotion(good)
    first, last = horizon(promo, 30)  # a short request limit: the calendar's last known day still counts
    assert last[3] == promo.last_day[3] + FAR and (last[np.arange(len(good)) != 3] == promo.last_day[0] + 30).all()
    check(replace(promo, reg_beta=promo.reg_beta / 1000), None, 30)  # a sane promotion passes


def test_a_real_predictor_refuses_it_and_keeps_serving(good: ParamTable, tmp_path: Path) -> None:
    folder = tmp_path / "version"
    base = replace(late_promotion(good), reg_beta=np.zeros((len(good), 1)))  # the same version, a sane promotion
    base.save(folder / "params.npz")
    p = Predictor(tmp_path / "p.log", ["--model_uri", str(folder), "--auth-file", str(admin_auth(tmp_path))])
    try:
        p.wait_ready()
        far = iso(int(base.last_day[3]) + FAR)
        before, version = p.forecast([base.store_id[3]], [far])
        assert np.isfinite(before["yhat"]).all() and before["yhat"][0] > 0
        late_promotion(good).save(folder / "params.npz")
        assert p.http.post(f"/v2/repository/models/{MODEL}/load", headers=ADMIN).status_code == 200
        after, still = p.forecast([base.store_id[3]], [far])
        assert still == version and after["yhat"].tolist() == before["yhat"].tolist()
        lines = [line for line in p.output().splitlines() if "refused version" in line]
        assert len(lines) == 1 and f"store {str(base.store_id[3])!r} on {far}" in lines[0], lines
        assert f"still serving version {version}" in lines[0]
    finally:
        p.stop()


def test_a_version_leaving_the_plausible_band_is_refused_naming_store_and_day(good: ParamTable) -> None:
    """Finite but implausible: a promotion FAR days ahead forecast at 5 x the store's best day."""
    sane = replace(late_promotion(good), reg_beta=np.zeros((len(good), 1)))
    rows, far = np.array([3]), np.array([int(sane.last_day[3]) + FAR])
    base = float(forecast(sane, rows, far)[0][0])
    lift = np.log(5.0) / 10.0  # y_scale 10 on the log1p scale: x 5
    reg_beta = np.zeros((len(good), 1))
    reg_beta[3, 0] = lift
    best = np.full(len(good), 1e12)
    best[3] = base * 1.01
    bad = replace(sane, reg_beta=reg_beta, best_day=best)
    assert np.isfinite(np.stack(forecast(bad, rows, far))).all()
    named = (rf"store {str(bad.store_id[3])!r} on {iso(int(far[0]))} \({FAR} days after its data\) forecasts .*"
             r"outside \[-1, 3\] x")
    with pytest.raises(VersionRefused, match=rf"implausible forecast: {named}"):
        check(bad)
    check(replace(bad, best_day=np.full(len(good), np.inf)))  # an older version without best days: finite is enough
    closed = bad.calendar.copy()
    closed[3, FAR - 1, 0] = 0  # the same day closed: answered 0 by the business API, nothing to refuse
    check(replace(bad, calendar=closed))
