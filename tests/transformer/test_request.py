"""Business request parsing and validation (no server needed)."""

from __future__ import annotations

import numpy as np
import pytest

from transformer.request import BusinessRequestError, Limits, expand, iso, parse_columns, parse_day, parse_v1

NOW = 16648  # 2015-08-01
LIMITS = Limits(max_days=366, max_stores=3)


def test_camel_and_snake_case_and_datetimes() -> None:
    body = {"instances": [
        {"storeId": "4", "beginDate": "2015-08-01T00:00:00Z", "endDate": "2015-08-07T00:00:00Z"},
        {"store_id": 7, "begin_date": "2015-08-03", "end_date": "2015-08-04"},
    ]}
    a, b = parse_v1(body, LIMITS, NOW)
    assert a.echo() == {"store_id": "4", "begin_date": "2015-08-01", "end_date": "2015-08-07"}
    assert b.echo() == {"store_id": "7", "begin_date": "2015-08-03", "end_date": "2015-08-04"}


def test_default_window_is_seven_days_from_today() -> None:
    (w,) = parse_v1({"instances": [{"storeId": "4"}]}, LIMITS, NOW)
    assert (w.begin, w.end) == (NOW, NOW + 6)
    (w,) = parse_v1({"instances": [{"storeId": "4", "beginDate": "2015-09-01"}]}, LIMITS, NOW)
    assert w.echo()["end_date"] == "2015-09-07"


def test_timezone_offsets_are_taken_to_utc() -> None:
    assert iso(parse_day("2015-08-01T23:30:00-02:00", "x")) == "2015-08-02"


@pytest.mark.parametrize(("body", "field", "words"), [
    ([], "body", "JSON object"),
    ({"instances": []}, "instances", "non-empty list"),
    ({"instances": "4"}, "instances", "non-empty list"),
    ({"instances": [3]}, "instances[0]", "expected an object"),
    ({"instances": [{"beginDate": "2015-08-01"}]}, "instances[0].storeId", "required"),
    ({"instances": [{"storeId": " "}]}, "instances[0].storeId", "required"),
    ({"instances": [{"storeId": "4", "beginDate": "2015-13-01"}]}, "instances[0].beginDate", "not an ISO date"),
    ({"instances": [{"storeId": "4", "endDate": 20150801}]}, "instances[0].endDate", "ISO date"),
    ({"instances": [{"storeId": "4", "beginDate": "2015-08-07", "endDate": "2015-08-01"}]},
     "instances[0].endDate", "before beginDate"),
    ({"instances": [{"storeId": "4", "beginDate": "2015-01-01", "endDate": "2016-12-31"}]},
     "instances[0].endDate", "over the limit of 366"),
    ({"instances": [{"storeId": str(i)} for i in range(4)]}, "instances", "over the limit of 3"),
    ({"instances": [{"storeId": "4", "store_id": "5"}]}, "instances[0].storeId", "given twice"),
])
def test_bad_requests_name_the_field(body: object, field: str, words: str) -> None:
    with pytest.raises(BusinessRequestError) as err:
        parse_v1(body, LIMITS, NOW)
    assert err.value.field == field
    assert words in str(err.value)


def test_v2_columns_and_length_mismatch() -> None:
    ws = parse_columns(["4", "5"], ["2015-08-01", ""], ["2015-08-02", ""], LIMITS, NOW)
    assert [w.days for w in ws] == [2, 7]
    with pytest.raises(BusinessRequestError, match="begin_date: has 1 elements but store_id has 2"):
        parse_columns(["4", "5"], ["2015-08-01"], None, LIMITS, NOW)


def test_expand_keeps_request_order() -> None:
    ws = parse_columns(["9", "4"], ["2015-08-05", "2015-08-01"], ["2015-08-06", "2015-08-03"], LIMITS, NOW)
    ids, days = expand(ws)
    assert ids.tolist() == ["9", "9", "4", "4", "4"]
    assert [iso(d) for d in days] == ["2015-08-05", "2015-08-06", "2015-08-01", "2015-08-02", "2015-08-03"]
    assert days.dtype == np.int64


def test_unknown_keys_are_named_with_the_accepted_ones() -> None:
    for key in ("begin", "end", "storeid", "beginDat"):
        with pytest.raises(BusinessRequestError) as err:
            parse_v1({"instances": [{"storeId": "4", key: "2015-08-01"}]}, LIMITS, NOW)
        assert err.value.field == f"instances[0].{key}"
        assert "storeId" in str(err.value) and "promoDays" in str(err.value)
    with pytest.raises(BusinessRequestError, match="unknown key 'limit'"):
        parse_v1({"instances": [{"storeId": "4"}], "limit": 3}, LIMITS, NOW)


@pytest.mark.parametrize(("store", "words"), [
    ("x" * 65, "65 characters"), ("4\x00", "non-printable"), ("\u2028", "required"), ("4\u200b", "non-printable"),
    (" 4", "4"),
    (4.5, "non-empty store id"), (True, "non-empty store id"), ("", "required"), ([], "required"),
])
def test_store_id_rule(store: object, words: str) -> None:
    if store == " 4":  # surrounding blanks are trimmed, as before
        (w,) = parse_v1({"instances": [{"storeId": store}]}, LIMITS, NOW)
        assert w.store_id == "4"
        return
    with pytest.raises(BusinessRequestError) as err:
        parse_v1({"instances": [{"storeId": store}]}, LIMITS, NOW)
    assert err.value.field == "instances[0].storeId" and words in str(err.value)


def test_dates_are_bounded_and_never_echoed_whole() -> None:
    for bad in ("0001-01-01", "9999-12-31", "2015-08-01" + "x" * 1_000_000):
        with pytest.raises(BusinessRequestError) as err:
            parse_v1({"instances": [{"storeId": "4", "endDate": bad}]}, LIMITS, NOW)
        assert err.value.field == "instances[0].endDate" and len(str(err.value)) < 200


def test_what_if_days_inside_the_window() -> None:
    from transformer.request import what_if

    body = {"instances": [{"storeId": "4", "beginDate": "2015-08-01", "endDate": "2015-08-03",
                           "promoDays": ["2015-08-02"], "closed_days": ["2015-08-03", "2015-08-03"]},
                          {"storeId": "5", "beginDate": "2015-08-01", "endDate": "2015-08-02"}]}
    a, b = parse_v1(body, LIMITS, NOW)
    assert a.promo_days == (NOW + 1,) and a.closed_days == (NOW + 2,) and b.promo_days == ()
    assert a.echo()["promo_days"] == ["2015-08-02"] and "promo_days" not in b.echo()
    promo, open_ = what_if([a, b])
    assert promo.tolist() == [-1, 1, -1, -1, -1] and open_.tolist() == [-1, -1, 0, -1, -1]
    assert what_if([b]) is None
    for days, words in ((["2015-08-09"], "outside the window"), ("2015-08-01", "list of ISO dates"),
                        (["x"], "not an ISO date"), (["2015-08-01"] * 4, "4 dates for a window of 3 days")):
        with pytest.raises(BusinessRequestError, match=words):
            parse_v1({"instances": [{"storeId": "4", "beginDate": "2015-08-01", "endDate": "2015-08-03",
                                     "promoDays": days}]}, LIMITS, NOW)


def test_a_window_beyond_the_horizon_is_refused_naming_the_limit() -> None:
    from dataclasses import replace

    limits = replace(LIMITS, max_days_ahead=30, data_end=NOW)
    (w,) = parse_v1({"instances": [{"storeId": "4", "beginDate": "2015-08-31"}]}, limits, NOW)
    assert w.begin == NOW + 30
    with pytest.raises(BusinessRequestError) as err:
        parse_v1({"instances": [{"storeId": "4", "beginDate": "2015-09-01"}]}, limits, NOW)
    assert err.value.field == "instances[0].beginDate" and "30 days" in str(err.value)
    assert "2015-08-01" in str(err.value) and "--max-days-ahead" in str(err.value)
