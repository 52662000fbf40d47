"""Business request parsing and validation (no server needed)."""

from __future__ import annotations

import numpy as np
import pytest

from transformer.request import Limits, RequestError, expand, iso, parse_columns, parse_day, parse_v1

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
    with pytest.raises(RequestError) as err:
        parse_v1(body, LIMITS, NOW)
    assert err.value.field == field
    assert words in str(err.value)


def test_v2_columns_and_length_mismatch() -> None:
    ws = parse_columns(["4", "5"], ["2015-08-01", ""], ["2015-08-02", ""], LIMITS, NOW)
    assert [w.days for w in ws] == [2, 7]
    with pytest.raises(RequestError, match="begin_date: has 1 elements but store_id has 2"):
        parse_columns(["4", "5"], ["2015-08-01"], None, LIMITS, NOW)


def test_expand_keeps_request_order() -> None:
    ws = parse_columns(["9", "4"], ["2015-08-05", "2015-08-01"], ["2015-08-06", "2015-08-03"], LIMITS, NOW)
    ids, days = expand(ws)
    assert ids.tolist() == ["9", "9", "4", "4", "4"]
    assert [iso(d) for d in days] == ["2015-08-05", "2015-08-06", "2015-08-01", "2015-08-02", "2015-08-03"]
    assert days.dtype == np.int64


def test_api_key_middleware() -> None:
    """The optional API key: checked on inference POSTs, CloudEvents and probes pass."""
    import asyncio

    from transformer.auth import ApiKey

    seen: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        seen.append(scope["path"])

    async def call(path: str, method: str = "POST", headers: list | None = None) -> int:
        sent: list[dict] = []

        async def send(msg: dict) -> None:
            sent.append(msg)

        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "headers": headers or []}
        await ApiKey(app, "s3cret")(scope, None, send)
        return sent[0]["status"] if sent else 200

    run = asyncio.run
    assert run(call("/v1/models/storecast:predict")) == 401
    assert run(call("/v1/models/storecast:predict", headers=[(b"x-api-key", b"wrong")])) == 401
    assert run(call("/v1/models/storecast:predict", headers=[(b"x-api-key", b"s3cret")])) == 200
    assert run(call("/v2/models/storecast/infer", headers=[(b"authorization", b"Bearer s3cret")])) == 200
    assert run(call("/v1/models/storecast:predict", headers=[(b"ce-id", b"1")])) == 200
    assert run(call("/v2/models/storecast/ready", method="GET")) == 200
    assert seen == ["/v1/models/storecast:predict", "/v2/models/storecast/infer", "/v1/models/storecast:predict",
                    "/v2/models/storecast/ready"]
