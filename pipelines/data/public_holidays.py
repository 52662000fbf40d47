"""Germany's national public holidays as a version's default calendar (``predictor.calendar.HolidayTable``).

The dates come from the maintained ``holidays`` package (national holidays only, no state's own), coded
as Rossmann's ``StateHoliday`` codes them in ``train.csv``: ``c`` (3) Christmas Day and St Stephen's Day,
``b`` (2) Good Friday and Easter Monday (Rossmann gives Easter Sunday no code: it is a Sunday, and a
holiday only in Brandenburg), ``a`` (1) the rest (New Year's Day, Labour Day, Ascension, Whit Monday,
German Unity Day and one-off national holidays such as Reformation Day 2017). Each holiday also gets its
kind (``predictor.calendar.HOLIDAY_KINDS``), so a store's habit is learned per holiday.

Only the trainer imports this module; the predictor reads the table from the version (``predictor.table``).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from dateutil.easter import easter

from predictor import calendar as cal
from serving.contract import MAX_DAYS_AHEAD

YEARS_AHEAD = 50  # a version's default calendar reaches this many years past its last day (bytes: ~450 a decade)
LAST_YEAR = 2100  # the holidays package's last year for Germany
EPOCH = dt.date(1970, 1, 1)
_CODE = {"christmas": 3, "st_stephen": 3, "good_friday": 2, "easter_monday": 2}  # the rest: 1 ('a')


def kind_of(day: dt.date) -> int:
    """The kind (index into ``HOLIDAY_KINDS``) of a German national holiday on ``day``; ``NO_KIND`` if none names it."""
    e = easter(day.year)
    names = {
        dt.date(day.year, 1, 1): "new_year", e - dt.timedelta(days=2): "good_friday",
        e + dt.timedelta(days=1): "easter_monday", dt.date(day.year, 5, 1): "labour_day",
        e + dt.timedelta(days=39): "ascension", e + dt.timedelta(days=50): "whit_monday",
        dt.date(day.year, 10, 3): "unity_day", dt.date(day.year, 12, 25): "christmas",
        dt.date(day.year, 12, 26): "st_stephen",
    }
    name = names.get(day)
    return cal.HOLIDAY_KINDS.index(name) if name else cal.NO_KIND


def german_holidays(first_year: int, last_year: int) -> cal.HolidayTable:
    """Germany's national public holidays of ``first_year`` .. ``last_year`` (inclusive) as a holiday table."""
    import holidays

    years = range(max(first_year, 1), min(last_year, LAST_YEAR) + 1)
    found = holidays.country_holidays("DE", years=years) if len(years) else {}
    days = sorted(found)
    kinds = [kind_of(d) for d in days]
    codes = [_CODE.get(cal.HOLIDAY_KINDS[k], 1) if k >= 0 else 1 for k in kinds]
    return cal.holiday_table(np.array([(d - EPOCH).days for d in days], dtype=np.int64),
                             np.array(codes, dtype=np.int8), np.array(kinds, dtype=np.int8))


def default_calendar(first_day: int, last_day: int, years_ahead: int = YEARS_AHEAD) -> cal.HolidayTable:
    """The default holidays of a version whose history runs ``first_day`` .. ``last_day`` (days since epoch):
    from the first history day's year to ``years_ahead`` years after the last (far beyond the
    ``MAX_DAYS_AHEAD`` a request may reach; capped at the package's last year)."""
    first = EPOCH + dt.timedelta(days=int(first_day))
    last = EPOCH + dt.timedelta(days=int(last_day) + MAX_DAYS_AHEAD)
    table = german_holidays(first.year, last.year + years_ahead)
    keep = table.days >= int(first_day)
    return cal.HolidayTable(table.days[keep], table.codes[keep], table.kinds[keep])
