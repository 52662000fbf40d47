"""The special days: date windows known decades ahead, runs of closed days, a reopening after a gap."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.training.intervals import ONCE, THIN, UNSEEN, WIDEST, widening_factors
from predictor import calendar as cal
from predictor import special_days as sd
from predictor.table import NO_GAP


def day(iso: str) -> int:
    return int(np.datetime64(iso, "D").astype(np.int64))


def cells_for(days: np.ndarray, closed: set[int] = frozenset()) -> np.ndarray:
    """Neighbourhood cells (n, 5, 4) of ``days``: open except Sundays and ``closed`` days, nothing else."""
    near = days[:, None] + cal.OFFSETS[None, :]
    out = np.zeros((*near.shape, 4), dtype=np.int8)
    out[..., cal.OPEN] = (cal.weekday(near) != cal.SUNDAY) & ~np.isin(near, list(closed))
    return out


def active(days: np.ndarray, level: int = NO_GAP, closed: set[int] = frozenset()) -> list[set[str]]:
    x = sd.matrix(cells_for(days, closed), days, np.full(len(days), level))
    own = x[:, len(cal.REGRESSORS):]
    return [{name for name, v in zip(sd.REGRESSORS, row, strict=True) if v} for row in own]


@pytest.mark.parametrize("year", [1995, 2014, 2015, 2024, 2100])
def test_the_christmas_season_is_found_every_year(year: int) -> None:
    expect = {f"{year}-12-10": set(), f"{year}-12-11": {"christmas_2w"}, f"{year}-12-17": {"christmas_2w"},
              f"{year}-12-18": {"christmas_1w"}, f"{year}-12-23": {"christmas_1w"},
              f"{year}-12-24": {"christmas_eve"}, f"{year}-12-25": set(), f"{year}-12-27": {"between_years"},
              f"{year}-12-30": {"between_years"}, f"{year}-12-31": {"new_years_eve"}, f"{year + 1}-01-01": set(),
              f"{year + 1}-01-02": {"new_year"}, f"{year + 1}-01-05": {"new_year"}, f"{year + 1}-01-06": set()}
    days = np.array([day(d) for d in expect])
    got = [s - {"closed_next_2", "closed_prev_2"} for s in active(days)]
    assert dict(zip(expect, got, strict=True)) == expect


def test_every_day_of_a_year_has_at_most_one_date_window_and_the_season_has_its_length() -> None:
    days = np.arange(day("2013-01-01"), day("2016-12-31") + 1)
    w = sd.date_windows(days)
    assert (w.sum(axis=1) <= 1).all()
    per_year = w.sum(axis=0) / 4
    assert per_year.tolist() == [7, 6, 1, 4, 1, 4]


def test_runs_of_closed_days() -> None:
    # Easter 2015: Good Friday 3 April and Easter Monday 6 April closed, Sunday 5 April closed as always
    closed = {day("2015-04-03"), day("2015-04-06")}
    days = np.array([day(d) for d in ("2015-04-02", "2015-04-04", "2015-04-07", "2015-04-11", "2015-04-13")])
    got = active(days, closed=closed)
    assert "closed_next_2" not in got[0]  # Maundy Thursday: one closed day ahead (the calendar's closed_before)
    assert "closed_next_2" in got[1]  # Holy Saturday: Sunday and Monday closed
    assert "closed_prev_2" in got[2]  # Tuesday after Easter
    assert not ({"closed_next_2", "closed_prev_2"} & (got[3] | got[4]))  # an ordinary Saturday and Monday


def test_the_reopening_after_the_last_long_gap() -> None:
    days = np.r_[np.arange(100, 200), np.arange(210, 300), np.arange(400, 500)]  # gaps of 10 and 100 days
    assert sd.level_day(days) == 400
    assert sd.level_day(np.arange(100, 500)) == NO_GAP
    assert sd.level_day(np.r_[np.arange(100, 200), np.arange(213, 300)]) == NO_GAP  # 13 days without: no gap
    assert sd.level_day(np.r_[np.arange(100, 200), np.arange(214, 300)]) == 214  # 14 days without sales
    probe = np.array([399, 400, 406, 407, 5000])
    got = active(probe, level=400)
    assert [("reopened" in s, "reopening_week" in s) for s in got] == [
        (False, False), (True, True), (True, True), (True, False), (True, False)]
    assert not any({"reopened", "reopening_week"} & s for s in active(probe))  # never reopened


def test_the_matrix_is_the_calendars_features_then_these() -> None:
    days = np.arange(day("2014-12-01"), day("2015-01-10"))
    cells = cells_for(days)
    x = sd.matrix(cells, days, np.full(len(days), NO_GAP))
    assert x.shape == (len(days), len(sd.ALL)) and sd.ALL[: len(cal.REGRESSORS)] == cal.REGRESSORS
    np.testing.assert_array_equal(x[:, : len(cal.REGRESSORS)], cal.features(cells, days))


def test_widening_takes_the_widest_active_regressor() -> None:
    x = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 2, 0]], dtype=float)
    reg_iv = np.array([[1.5, 2.0, 3.0]] * 4)
    assert sd.widening(x, reg_iv).tolist() == [1.0, 1.5, 3.0, 2.0]
    assert sd.widening(np.zeros((3, 0)), np.zeros((3, 0))).tolist() == [1.0] * 3


def test_widening_factors_follow_how_thin_the_history_is() -> None:
    rng = np.random.default_rng(0)
    n = 800
    resid = rng.normal(0, 0.1, n)
    x = np.zeros((n, 5))
    x[:400, 0] = 1  # frequent: as known as the rest
    x[[10, 20], 1] = 1  # twice: residuals 3 sigma
    resid[[10, 20]] = [0.3, -0.3]
    x[[30, 40, 50, 60, 70, 80], 2] = 1  # six days, ordinary residuals
    x[5, 3] = 1  # once
    f = widening_factors(x, resid, 0.1)
    assert f[0] == 1.0 and x[:, 0].sum() >= THIN
    assert f[1] == WIDEST  # 2 days of 3-sigma misses: as wide as allowed
    assert 1.0 <= f[2] < 2.0
    assert f[3] == ONCE and f[4] == UNSEEN  # once, never
    assert (widening_factors(x, resid, 0.0) == 1.0).all()
