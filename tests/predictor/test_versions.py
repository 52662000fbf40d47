"""Versions are checked before they serve; operators see what is served; logs stay quiet; binding is as told.

The checks in process (``predictor.validate``), then real predictor processes on a local folder: a bad
version is refused with one log line and a metric and the good one keeps serving; a bad first version
leaves the model not ready saying why; probes and client mistakes log no traceback; ``/metrics``
carries the served version, data end, stores and requests by outcome; the sockets listen on 127.0.0.1.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from predictor.table import ParamTable
from predictor.validate import VersionRefused, check
from serving.contract import Shard
from tests.support import ADMIN, MODEL, Predictor, admin_auth, metric, random_table, wait_until


@pytest.fixture(scope="module")
def good() -> ParamTable:
    return random_table(12, seed=3)


def nan_beta(t: ParamTable) -> ParamTable:
    beta = t.beta.copy()
    beta[2, 0] = np.nan
    return replace(t, beta=beta)


BAD = {
    "no stores": (lambda t: t.take(np.zeros(len(t), dtype=bool)), "no store"),
    "NaN parameters": (nan_beta, "beta holds 1 non-finite values (stores"),
    "inconsistent shapes": (lambda t: replace(t, k=t.k[:-1]), "k has shape"),
    "grid mismatch": (lambda t: replace(t, iv_lower=t.iv_lower[:, :-1]), "iv_lower"),
    "infinite scale": (lambda t: replace(t, y_scale=np.where(np.arange(len(t)) == 1, np.inf, t.y_scale)), "y_scale"),
    "bad store id": (lambda t: replace(t, store_id=np.array(["4\x00", *t.store_id[1:].tolist()])), "store id"),
    "unknown regressor": (lambda t: replace(t, reg_names=np.array(["weather"]), reg_beta=np.zeros((len(t), 1)),
                                               reg_iv=np.ones((len(t), 1))),
                          "weather"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_versions_are_refused_saying_why(good: ParamTable, case: str) -> None:
    make, words = BAD[case]
    with pytest.raises(VersionRefused, match=re.escape(words)):
        check(make(good))


def test_a_good_version_passes_and_an_empty_shard_does_not(good: ParamTable) -> None:
    check(good)
    sizes = [len(good.shard(k, 40)) for k in range(40)]
    empty = sizes.index(0)
    with pytest.raises(VersionRefused, match=f"no store in shard {empty}/40"):
        check(good.shard(empty, 40), Shard(empty, 40))


# ---- real processes on a local folder -----------------------------------------------------------------
def test_a_bad_version_is_refused_and_the_good_one_keeps_serving(good: ParamTable, tmp_path: Path) -> None:
    folder = tmp_path / "version"
    good.save(folder / "params.npz")
    p = Predictor(tmp_path / "p.log", ["--model_uri", str(folder), "--precompute-days", "30",
                                       "--auth-file", str(admin_auth(tmp_path))])
    try:
        p.wait_ready()
        sid, day = good.store_id[0], str(np.datetime64(int(good.last_day[0]) + 1, "D"))
        before, version = p.forecast([sid], [day])
        nan_beta(good).save(folder / "params.npz")
        assert p.http.post(f"/v2/repository/models/{MODEL}/load", headers=ADMIN).status_code == 200
        after, still = p.forecast([sid], [day])
        assert still == version and after["yhat"].tolist() == before["yhat"].tolist()
        lines = [line for line in p.output().splitlines() if "refused version" in line]
        assert len(lines) == 1 and "beta holds 1 non-finite values" in lines[0]
        assert f"still serving version {version}" in lines[0]
        text = p.http.get("/metrics").text
        assert metric(text, "storecast_versions_refused_total", component="predictor") == 1
        assert metric(text, "storecast_model_info", component="predictor", version=version, data_end="2015-07-31") == 1
        assert metric(text, "storecast_stores_served", component="predictor") == len(good)
        assert metric(text, "storecast_model_data_end_timestamp_seconds", component="predictor") == 1438300800
        assert metric(text, "storecast_requests_total", component="predictor", protocol="http", outcome="ok") >= 2
        p.infer(["nope"], [day])
        text = p.http.get("/metrics").text
        assert metric(text, "storecast_requests_total", component="predictor", protocol="http", outcome="4xx") == 1
        assert metric(text, "storecast_requests_total", component="predictor", protocol="grpc", outcome="shed") == 0
        # the same bad file again is not fetched and logged again; a good one is taken
        assert p.http.post(f"/v2/repository/models/{MODEL}/load", headers=ADMIN).status_code == 200
        assert len([line for line in p.output().splitlines() if "refused version" in line]) == 1
        random_table(12, seed=4).save(folder / "params.npz")
        p.http.post(f"/v2/repository/models/{MODEL}/load", headers=ADMIN)
        assert p.forecast([sid], [day])[1] != version
    finally:
        p.stop()


def test_a_bad_first_version_leaves_the_model_not_ready_saying_why(good: ParamTable, tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    replace(good, k=good.k[:-1]).save(folder / "params.npz")
    p = Predictor(tmp_path / "bad.log", ["--model_uri", str(folder)])
    try:
        p.wait_live()
        assert wait_until(lambda: "refused version" in p.output()), p.output()[-2000:]
        for _ in range(30):  # probes, as Knative sends them
            r = p.http.get(f"/v2/models/{MODEL}/ready")
            assert r.status_code == 503
        r = p.infer([good.store_id[0]], ["2015-08-01"])
        assert r.status_code == 503 and "refused" in r.json()["error"] and "k has shape" in r.json()["error"]
        assert r.headers["retry-after"]
        log = p.output()
        assert "Traceback" not in log and "/ready" not in log  # probes are logged at DEBUG only
        assert metric(p.http.get("/metrics").text, "storecast_versions_refused_total", component="predictor") == 1
    finally:
        p.stop()


def test_client_mistakes_log_one_line_and_no_traceback(good: ParamTable, tmp_path: Path) -> None:
    folder = tmp_path / "v"
    good.save(folder / "params.npz")
    p = Predictor(tmp_path / "q.log", ["--model_uri", str(folder)])
    try:
        p.wait_ready()
        for body in (b"{nope", b'{"inputs": 3}', b'{"inputs": [{"name": "ds", "datatype": "X", "shape": [1]}]}'):
            assert p.http.post(f"/v2/models/{MODEL}/infer", content=body).status_code == 400
        deadline = time.monotonic() + 10  # the access line is written once the answer is sent: wait for the last
        while True:
            log = p.output()
            lines = [line for line in log.splitlines() if "storecast.access INFO http POST" in line and " 400 " in line]
            if len(lines) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "Traceback" not in log and " ERROR " not in log
        assert len(lines) == 3
    finally:
        p.stop()


def test_listens_only_where_told(good: ParamTable, tmp_path: Path) -> None:
    folder = tmp_path / "v"
    good.save(folder / "params.npz")
    p = Predictor(tmp_path / "b.log", ["--model_uri", str(folder)])
    try:
        p.wait_ready()
        listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(p.proc.pid).connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN}
        assert {port for _, port in listening} >= {p.http_port, p.grpc_port}
        # gRPC's socket is dual-stack: its 127.0.0.1 shows as the IPv4-mapped address
        assert {ip.removeprefix("::ffff:") for ip, _ in listening} == {"127.0.0.1"}, listening
        assert httpx.get(f"http://127.0.0.1:{p.http_port}/v2/health/live").status_code == 200
    finally:
        p.stop()
