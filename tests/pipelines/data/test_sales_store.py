"""One sales store, read one way (issue 21): appended parts, calendars, unknown stores, the bounded reader.

Real processes and servers: the dashboard against a real `mlflow server`'s artifact proxy, `storecast data
append` and `storecast calendar upload` as subprocesses, a sqlite registry with a trained champion, a
recording CloudEvents receiver, and a hostile artifact proxy on loopback (trickling, lying about sizes,
redirecting) for what MLflow cannot be made to do.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pandas as pd
import pytest

from pipelines.data import store_objects
from pipelines.data.calendar import read_calendar as read_calendar_file
from pipelines.data.sales_csv import write_sales
from pipelines.data.sales_store import CalendarRefused, SalesStore, SalesUnavailable, UnknownStores
from pipelines.data.synth import synthesize, synthesize_with_calendar
from tests.support import BIN, LoopbackServer, QuietHandler, Recorder, run_cli, start_dashboard, stop_service, train

SECRET = "SECRET-CONTENT-7f3a"  # in every hostile file: no error may quote it
PROXY = "/api/2.0/mlflow-artifacts/artifacts"


def day_rows(stores: list[str], day: np.datetime64, sales: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"Store": stores, "Date": pd.to_datetime([str(day)] * len(stores)), "Sales": sales,
                         "Open": 1})


@pytest.fixture(scope="module")
def calendar_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, calendar = synthesize_with_calendar(3, seed=6, start="2015-01-01", end="2015-04-30", calendar_days=21)
    return write_sales(calendar, tmp_path_factory.mktemp("calendar") / "cal.csv")


# ---- the dashboard reads the store as the retrain service does -----------------------------------------
def test_the_dashboard_shows_parts_appended_through_the_artifact_proxy(mlflow_server: str, tmp_path: Path) -> None:
    base = write_sales(synthesize(3, seed=5, start="2015-01-01", end="2015-04-30"), tmp_path / "train.csv.gz")
    url = f"{mlflow_server}{PROXY}/dash-{tmp_path.name}/train.csv.gz"
    assert httpx.put(url, content=base.read_bytes(), timeout=30).status_code == 200
    api = Recorder(lambda method, path, body: (200, {"predictions": []}))  # the business API: every key accepted
    dash = start_dashboard("--api-url", api.url, "--sales", url, "--sales-check-seconds", "0", "--tracking-uri", "",
                           log=tmp_path / "dashboard.log")
    try:
        sales = f"{dash.url}/api/sales?stores=1,2,3&days=7"
        first = httpx.get(sales, headers={"x-api-key": "k"}).json()
        assert first["data_end"] == "2015-04-30" and len(first["stores"]["2"]["sales"]) == 7
        end = np.datetime64("2015-04-30")
        write_sales(day_rows(["1", "2", "3"], end + 1, [5001.0, 5002.0, 5003.0]), tmp_path / "day.csv")
        run_cli("data", "append", "--data", str(tmp_path / "day.csv"), "--sales", url, cwd=tmp_path)
        after = httpx.get(sales, headers={"x-api-key": "k"}).json()
        assert after["data_end"] == "2015-05-01", after
        for k, store in enumerate(("1", "2", "3")):
            assert after["stores"][store]["dates"][-1] == "2015-05-01"
            assert after["stores"][store]["sales"] == [*first["stores"][store]["sales"][1:], 5001.0 + k]
        # the base replaced through the proxy (a new upload) is seen too, the part still laid over it
        write_sales(synthesize(3, seed=8, start="2015-01-01", end="2015-04-30"), base)
        assert httpx.put(url, content=base.read_bytes(), timeout=30).status_code == 200
        again = httpx.get(sales, headers={"x-api-key": "k"}).json()
        assert again["stores"]["1"]["sales"][:-1] != after["stores"]["1"]["sales"][:-1]
        assert again["stores"]["1"]["sales"][-1] == 5001.0
    finally:
        stop_service(dash)
        api.close()


def test_load_is_one_object_until_something_changes(tmp_path: Path) -> None:
    base = write_sales(synthesize(2, seed=1, start="2015-01-01", end="2015-03-31"), tmp_path / "s.csv.gz")
    store = SalesStore(str(base))
    first = store.load()
    assert store.load() is first and SalesStore(str(base)).load().frame.equals(first.frame)
    part = store.append(day_rows(["1", "2"], np.datetime64("2015-04-01"), [10.0, 20.0]))
    second = store.load()
    assert second is not first and Path(part).parent.name == "s.csv.gz.parts"
    assert second.last == {s: int(np.datetime64("2015-04-01").astype(np.int64)) for s in ("1", "2")}
    assert store.load() is second
    Path(part).write_bytes(b"\x1f\x8b broken")
    with pytest.raises(SalesUnavailable, match=r"part-.*\.csv\.gz: "):
        store.load()


class MemoryProxy(LoopbackServer):
    """An artifact proxy on loopback holding files in memory (GET, HEAD with an ETag, PUT, the list call);
    it counts the GETs of each file, which is what a reader costs."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.gets: dict[str, int] = {}
        proxy = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path.startswith(PROXY + "?"):
                    folder = parse_qs(urlsplit(self.path).query)["path"][0] + "/"
                    files = [{"path": p, "is_dir": False, "file_size": len(b)} for p, b in proxy.files.items()
                             if p.startswith(folder)]
                    return self._send(200, json.dumps({"files": files}).encode())
                path = self.path.removeprefix(PROXY + "/")
                proxy.gets[path] = proxy.gets.get(path, 0) + 1
                self._send(200, proxy.files[path]) if path in proxy.files else self._send(404, b"")

            def do_HEAD(self) -> None:
                body = proxy.files.get(self.path.removeprefix(PROXY + "/"))
                self.send_response(404 if body is None else 200)
                if body is not None:
                    self.send_header("etag", f'"{hash(body)}"')
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()

            def do_PUT(self) -> None:
                proxy.files[self.path.removeprefix(PROXY + "/")] = self.rfile.read(int(self.headers["content-length"]))
                self._send(200, b"{}")

        self.url = self.serve(Handler) + f"{PROXY}/s/train.csv.gz"


def test_a_url_store_moves_only_what_changed(tmp_path: Path) -> None:
    proxy = MemoryProxy()
    try:
        base = write_sales(synthesize(2, seed=1, start="2015-01-01", end="2015-03-31"), tmp_path / "s.csv.gz")
        proxy.files["s/train.csv.gz"] = base.read_bytes()
        store = SalesStore(proxy.url)
        first = store.load()
        assert store.load() is first and proxy.gets == {"s/train.csv.gz": 1}  # checked again: no data moved
        part = store.append(day_rows(["1", "2"], np.datetime64("2015-04-01"), [10.0, 20.0])).rpartition("/")[2]
        second = store.load()
        assert second.frame["Date"].max() == pd.Timestamp("2015-04-01") and len(second.files) == 2
        assert proxy.gets == {"s/train.csv.gz": 1, f"s/train.csv.gz.parts/{part}": 1}  # the new part alone
        proxy.files["s/train.csv.gz"] = write_sales(synthesize(2, seed=2, start="2015-01-01", end="2015-03-31"),
                                                    tmp_path / "t.csv.gz").read_bytes()
        third = store.load()  # a new base (its ETag changed): read again, the part laid over it from memory
        assert third.frame["Date"].max() == pd.Timestamp("2015-04-01") and not third.frame.equals(second.frame)
        assert proxy.gets == {"s/train.csv.gz": 2, f"s/train.csv.gz.parts/{part}": 1}
    finally:
        proxy.close()


# ---- unknown stores in appended sales ------------------------------------------------------------------
def test_rows_of_unknown_stores_are_refused_naming_them_or_kept_on_purpose(tmp_path: Path) -> None:
    base = write_sales(synthesize(3, seed=1, start="2015-01-01", end="2015-03-31"), tmp_path / "s.csv.gz")
    store = SalesStore(str(base))
    day = np.datetime64("2015-04-01")
    ids = ["1", "3", *(str(100 + i) for i in range(7))]
    rows = day_rows(ids, day, [100.0] * len(ids))
    with pytest.raises(UnknownStores) as info:
        store.append(rows, known=["1", "2"])  # store 3 has history here: known; 100..106 are not
    msg = str(info.value)
    assert info.value.stores == [str(100 + i) for i in range(7)] and isinstance(info.value, ValueError)
    assert "7 store(s)" in msg and "100, 101, 102, 103, 104 (and 2 more)" in msg and "105" not in msg
    assert not Path(f"{base}.parts").exists(), "nothing written"
    store.append(rows, known=["1", "2"], keep_unknown=True)
    assert set(store.load().frame["Store"]) == {"1", "2", "3", *(str(100 + i) for i in range(7))}
    store.append(day_rows(["1"], day + 1, [90.0]), known=["1"])  # all known: no flag needed


def test_the_cli_takes_the_known_stores_from_the_champion(tmp_path: Path) -> None:
    data = write_sales(synthesize(3, seed=2, start="2014-01-01", end="2015-06-30"), tmp_path / "s.csv.gz")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert train(data, uri, "storecast", tmp_path, "--stores", "1,2") == "1"
    write_sales(day_rows(["1", "3", "77"], np.datetime64("2015-07-01"), [5000.0, 5000.0, 5000.0]),
                tmp_path / "day.csv")
    cmd = [str(BIN / "storecast"), "data", "append", "--data", str(tmp_path / "day.csv"), "--sales", str(data),
           "--tracking-uri", uri]
    refused = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "1 store(s) the version does not hold: 77;" in refused.stderr, refused.stderr
    assert not Path(f"{data}.parts").exists()
    kept = subprocess.run([*cmd, "--keep-unknown-stores"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert kept.returncode == 0, kept.stderr
    assert "77" in set(SalesStore(str(data)).load().frame["Store"])


# ---- calendars in the store -----------------------------------------------------------------------------
def test_upload_prints_the_ref_and_sends_the_event(calendar_file: Path, tmp_path: Path) -> None:
    base = write_sales(synthesize(3, seed=6, start="2015-01-01", end="2015-04-30"), tmp_path / "s.csv.gz")
    receiver = Recorder(lambda method, path, body: (200, {"ok": True}))
    try:
        out = run_cli("calendar", "upload", str(calendar_file), "--sales", str(base), "--url", receiver.url,
                      "--json", cwd=tmp_path, env={"STORECAST_API_KEY": "k-service"})
    finally:
        receiver.close()
    line, answer = out.stdout.strip().splitlines()
    up = json.loads(line)
    assert store_objects.REF.fullmatch(up["calendar"]) and json.loads(answer) == {"ok": True}
    assert (up["rows"], up["stores"], up["first"], up["last"]) == (63, 3, "2015-05-01", "2015-05-21")
    [event] = receiver.events()
    assert event["type"] == "com.storecast.calendar.updated" and event["data"] == {"calendar": up["calendar"]}
    assert receiver.requests[0]["headers"]["authorization"] == "Bearer k-service"
    store = SalesStore(str(base))
    assert store.calendar_refs() == [up["calendar"]]
    pd.testing.assert_frame_equal(store.read_calendar(up["calendar"]), read_calendar_file(calendar_file))
    plain = run_cli("calendar", "upload", str(calendar_file), "--sales", str(base), cwd=tmp_path).stdout.strip()
    assert store_objects.REF.fullmatch(plain) and store.calendar_refs() == [up["calendar"], plain]
    bad = tmp_path / "bad.csv"
    bad.write_text("Store,Date,Promo\n1,2015-05-01,7\n")
    proc = subprocess.run([str(BIN / "storecast"), "calendar", "upload", str(bad), "--sales", str(base)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "'Promo' must hold 0 or 1" in proc.stderr and len(store.calendar_refs()) == 2


def test_later_calendars_lay_over_earlier_ones(calendar_file: Path, tmp_path: Path) -> None:
    store = SalesStore(str(write_sales(synthesize(2, seed=1, end="2015-04-30", start="2015-03-01"),
                                       tmp_path / "s.csv.gz")))
    assert store.read_calendars() is None
    first = read_calendar_file(calendar_file)
    a = store.put_calendar(first)
    closure = first[(first["Store"] == "2") & (first["Date"] == "2015-05-04")].assign(Open=0.0, Promo=0.0)
    b = store.put_calendar(closure)
    assert a < b and store.calendar_refs() == [a, b]
    both = store.read_calendars()
    assert len(both) == len(first)
    row = both[(both["Store"] == "2") & (both["Date"] == "2015-05-04")].iloc[0]
    assert (row["Open"], row["Promo"]) == (0, 0)
    assert len(store.read_calendars([a])) == len(first)
    with pytest.raises(CalendarRefused, match="no rows"):
        store.put_calendar(first.iloc[:0])


def test_the_same_calendars_through_the_artifact_proxy(mlflow_server: str, calendar_file: Path,
                                                       tmp_path: Path) -> None:
    url = f"{mlflow_server}{PROXY}/cal-{tmp_path.name}/train.csv.gz"
    base = write_sales(synthesize(3, seed=6, start="2015-01-01", end="2015-04-30"), tmp_path / "s.csv.gz")
    assert httpx.put(url, content=base.read_bytes(), timeout=30).status_code == 200
    ref = run_cli("calendar", "upload", str(calendar_file), "--sales", url, cwd=tmp_path).stdout.strip()
    store = SalesStore(url)
    assert store.calendar_refs() == [ref]
    pd.testing.assert_frame_equal(store.read_calendar(ref), read_calendar_file(calendar_file))
    with pytest.raises(CalendarRefused, match="not allowed"):
        store.read_calendar("calendar-20200101T000000000000Z-0.csv.gz")
    with pytest.raises(CalendarRefused, match="not allowed"):
        store.read_calendar("../train.csv.gz")


# ---- the bounded reader -----------------------------------------------------------------------------------
NAMES = ["../s.csv.gz", "/etc/passwd", "calendar-20200101T000000000000Z-a.csv.gz/../../s.csv.gz",
         "s.csv.gz.calendars/calendar-20200101T000000000000Z-a.csv.gz", "calendar-x.csv.gz", "", " " * 5,
         "calendar-20200101T000000000000Z-A.csv.gz", "calendar-20200101T000000000000Z-a.csv.gz\n"]


@pytest.mark.parametrize("ref", [*NAMES, None, 7, ["calendar-20200101T000000000000Z-a.csv.gz"]])
def test_anything_but_a_plain_calendar_name_is_not_allowed(tmp_path: Path, ref: object) -> None:
    store = SalesStore(str(tmp_path / "s.csv.gz"))
    with pytest.raises(CalendarRefused, match="not allowed: a calendar is named by its ref"):
        store.read_calendar(ref)


def _hostile(folder: Path, name: str, kind: str) -> bool:
    """Put something that is not a calendar object at ``folder/name``; False if this machine cannot."""
    path = folder / name
    secret = folder.parent / "secret.txt"
    secret.write_text(f"Store,Date,Open\n{SECRET},2015-01-01,1\n")
    if kind == "symlink-out":
        path.symlink_to(secret)
    elif kind == "symlink-proc":
        path.symlink_to("/proc/self/environ")
    elif kind == "fifo":
        os.mkfifo(path)  # a reader that opened it blocking would wait for a writer forever
    elif kind == "hardlink":
        os.link(secret, path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: endless
        except PermissionError:
            return False
    elif kind == "bomb":
        path.write_bytes(gzip.compress(SECRET.encode() + b"\0" * (200 << 20)))
    elif kind == "big":
        path.write_bytes(os.urandom(store_objects.MAX_BYTES + 10))
    elif kind == "not-gzip":
        path.write_bytes(f"Store,Date,Open\n{SECRET},1,1\n".encode())
    elif kind == "not-a-calendar":
        path.write_bytes(gzip.compress(f"Store,Date,Open\n1,{SECRET},1\n".encode()))
    elif kind == "bad-cell":
        path.write_bytes(gzip.compress(f"Store,Date,Open\n1,2015-05-01,{SECRET}\n".encode()))
    return True


HOSTILE = {"symlink-out": "not allowed", "symlink-proc": "not allowed", "fifo": "not allowed",
           "hardlink": "not allowed", "directory": "not allowed", "device": "not allowed",
           "bomb": "unpacks to over the limit", "big": "over the limit", "not-gzip": "not a calendar object",
           "not-a-calendar": "not a calendar", "bad-cell": "not a calendar"}


@pytest.mark.parametrize("kind", HOSTILE)
def test_only_regular_calendar_objects_of_the_store_are_read(tmp_path: Path, kind: str) -> None:
    base = tmp_path / "s.csv.gz"
    folder = Path(f"{base}.calendars")
    folder.mkdir()
    name = "calendar-20200101T000000000000Z-a.csv.gz"
    if not _hostile(folder, name, kind):
        pytest.skip("this machine cannot make a device node")
    with pytest.raises(CalendarRefused) as info:
        SalesStore(str(base)).read_calendar(name)
    assert HOSTILE[kind] in str(info.value) and SECRET not in str(info.value), str(info.value)
    assert str(tmp_path) not in str(info.value)


def test_the_words_never_tell_whether_a_name_exists(tmp_path: Path) -> None:
    """A missing name and a FIFO, a symlink or a device under it: the same refusal, word for word."""
    folder = Path(f"{tmp_path / 's.csv.gz'}.calendars")
    folder.mkdir()
    name = "calendar-20200101T000000000000Z-a.csv.gz"
    words = set()
    for kind in ("missing", "fifo", "symlink-proc", "directory"):
        _hostile(folder, name, kind)
        with pytest.raises(CalendarRefused) as info:
            SalesStore(str(tmp_path / "s.csv.gz")).read_calendar(name)
        words.add(str(info.value))
        for p in folder.iterdir():
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
    assert words == {f"calendar {name}: not allowed (no object of the sales store by that name)"}


def test_a_symlinked_calendar_folder_is_not_followed(tmp_path: Path, calendar_file: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    ref = SalesStore(str(elsewhere / "s.csv.gz")).put_calendar(read_calendar_file(calendar_file))
    (tmp_path / "s.csv.gz.calendars").symlink_to(elsewhere / "s.csv.gz.calendars")
    with pytest.raises(CalendarRefused, match="not allowed"):
        SalesStore(str(tmp_path / "s.csv.gz")).read_calendar(ref)


class HostileProxy:
    """An artifact proxy on loopback that lists files and then misbehaves serving them."""

    def __init__(self, good: bytes) -> None:
        self.listing = {"calendar-20200101T000000000000Z-ok.csv.gz": len(good),
                        "calendar-20200101T000000000000Z-trickle.csv.gz": 2000,
                        "calendar-20200101T000000000000Z-liar.csv.gz": 100,
                        "calendar-20200101T000000000000Z-redirect.csv.gz": 100,
                        "calendar-20200101T000000000000Z-broken.csv.gz": 100,
                        "calendar-20200101T000000000000Z-fifo.csv.gz": None,
                        "calendar-20200101T000000000000Z-huge.csv.gz": store_objects.MAX_BYTES + 1}
        self.stop, self.trickled = threading.Event(), threading.Event()
        proxy = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path.startswith(PROXY + "?"):
                    files = [{"path": f"s/train.csv.gz.calendars/{n}", "is_dir": False,
                              **({} if size is None else {"file_size": size})} for n, size in proxy.listing.items()]
                    return self._send(200, json.dumps({"files": files}).encode())
                name = self.path.rpartition("/")[2]
                if name.endswith("-ok.csv.gz"):
                    return self._send(200, good)
                if name.endswith("-trickle.csv.gz"):
                    self.send_response(200)
                    self.send_header("content-length", "2000")
                    self.end_headers()
                    for _ in range(2000):  # one byte every 20 ms: 40 s if nobody gives up
                        if proxy.stop.is_set():
                            return
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.02)
                    proxy.trickled.set()
                    return
                if name.endswith("-liar.csv.gz"):  # listed as 100 bytes, sends 3 MB
                    return self._send(200, SECRET.encode() + b"\0" * (3 << 20))
                if name.endswith("-redirect.csv.gz"):
                    self.send_response(302)
                    self.send_header("location", "http://127.0.0.1:1/etc/passwd")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return None
                return self._send(500, f"internal error {SECRET}".encode())

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the reader gave up
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}{PROXY}/s/train.csv.gz"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hostile(calendar_file: Path) -> Iterator[HostileProxy]:
    proxy = HostileProxy(gzip.compress(calendar_file.read_bytes()))
    yield proxy
    proxy.close()


@pytest.mark.parametrize(("name", "error", "words"), [
    ("trickle", SalesUnavailable, "took longer than 1 s"),  # the store's fault: 503, asked again later
    ("liar", CalendarRefused, "over the limit of 1048576 bytes"),
    ("redirect", CalendarRefused, "not allowed"),
    ("fifo", CalendarRefused, "not allowed"),
    ("huge", CalendarRefused, "over the limit"),
    ("broken", SalesUnavailable, "HTTP 500"),
    ("missing", CalendarRefused, "not allowed (no object of the sales store by that name)"),
])
def test_a_calendar_url_is_read_within_size_and_time(hostile: HostileProxy, name: str, error: type,
                                                     words: str) -> None:
    objects = SalesStore(hostile.url).objects
    ref = f"calendar-20200101T000000000000Z-{name}.csv.gz"
    limit = store_objects.MAX_BYTES if name == "huge" else 1 << 20
    with pytest.raises(error) as info:
        store_objects.read_calendar(objects, ref, timeout=1.0, limit=limit)
    assert words in str(info.value) and SECRET not in str(info.value), str(info.value)
    assert name != "trickle" or not hostile.trickled.is_set(), "the reader waited for the whole trickle"


def test_the_hostile_proxys_good_calendar_reads(hostile: HostileProxy, calendar_file: Path) -> None:
    frame = SalesStore(hostile.url).read_calendar("calendar-20200101T000000000000Z-ok.csv.gz")
    pd.testing.assert_frame_equal(frame, read_calendar_file(calendar_file))
