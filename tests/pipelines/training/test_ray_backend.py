"""The Ray backend (issue 16): the same fits as Ray tasks, identical versions, against a real local Ray.

* ``storecast train --backend ray`` starting its own Ray, and joining a cluster that the test starts
  with ``ray start --head`` on loopback, register versions whose parameter table, per-store metrics
  and stock Prophet models are bit-identical to the local backend's (prophet-batch: exact, no tolerance);
* Ray's semantics as we use them: a task whose worker dies is retried, a chunk lost after every
  retry is reported store by store, an exception in the fit fails the job;
* a local Ray listens on loopback only and leaves no process behind; missing Ray is one clear line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest

from pipelines.data.sales_csv import write_sales
from pipelines.data.synth import synthesize
from pipelines.stack import free_port
from pipelines.training.fitting import FitConfig, StoreResult
from pipelines.versions.registry import download
from tests.support import BIN, run_cli

pytest.importorskip("ray", reason="the Ray backend needs the ray extra (pip install storecast[ray])")

STORES = 8
MARKER = "STORECAST_TEST_RAY_RUN"  # every process a run starts inherits it: none may outlive the run


@pytest.fixture(scope="module")
def sales_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight synthetic stores with ten months of history (fast fits)."""
    return write_sales(synthesize(STORES, seed=3, start="2014-10-01", end="2015-07-31"),
                       tmp_path_factory.mktemp("ray-data") / "sales.csv.gz")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("ray-registry")
    return f"sqlite:///{root / 'mlflow.db'}", root


def _train(csv: Path, registry: tuple[str, Path], *args: str, env: dict[str, str] | None = None) -> dict:
    uri, root = registry
    out = run_cli("train", "--data", str(csv), "--tracking-uri", uri, "--json", "--no-progress", "--workers", "2",
                  "--alias", "", *args, env=env, cwd=root)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _version(registry: tuple[str, Path], version: str, dst: Path) -> dict[str, object]:
    """Everything of a version that the fits decide: params.npz arrays, metrics, stock models."""
    folder = download(f"models:/storecast/{version}", dst, uri=registry[0]) / "artifacts"
    with np.load(folder / "params.npz", allow_pickle=False) as z:
        params = {name: z[name] for name in z.files}
    meta = json.loads(str(params.pop("meta")))
    with zipfile.ZipFile(folder / "prophet_models.zip") as zf:
        models = {name: zf.read(name) for name in zf.namelist()}
    return {"params": params, "meta": meta, "metrics": (folder / "store_metrics.csv").read_bytes(), "models": models}


def _fitted(meta: dict) -> dict:
    """The meta of a fit, without the time the version was built (its lineage's ``calendar_date``)."""
    lineage = {k: v for k, v in meta.get("lineage", {}).items() if k != "calendar_date"}
    return {**meta, "lineage": lineage}


def assert_identical(a: dict, b: dict) -> None:
    assert a["params"].keys() == b["params"].keys()
    for name in a["params"]:
        x, y = a["params"][name], b["params"][name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), f"{name} differs"  # bit for bit (NaN included)
    assert _fitted(a["meta"]) == _fitted(b["meta"])
    assert a["metrics"] == b["metrics"]
    assert a["models"] == b["models"]  # each store's stock Prophet JSON, gzip bytes


def _survivors(marker: str) -> list[str]:
    """Processes still carrying this run's marker in their environment."""
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.environ().get(MARKER) == marker:
                found.append(f"{proc.pid} {proc.info['name']}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture(scope="module")
def local_version(sales_csv: Path, registry: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = _train(sales_csv, registry, "--backend", "local")
    assert out["stores"] == STORES and not out["failed"]
    return _version(registry, out["version"], tmp_path_factory.mktemp("local-version"))


def test_auto_started_ray_gives_the_local_version(sales_csv, registry, local_version, tmp_path):
    marker = uuid.uuid4().hex
    out = _train(sales_csv, registry, "--backend", "ray", env={MARKER: marker})
    assert out["stores"] == STORES and not out["failed"]
    assert_identical(_version(registry, out["version"], tmp_path), local_version)
    assert not _survivors(marker), "the local Ray left processes behind"


# ---- a cluster started by the test -------------------------------------------------------------
def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if "Ray runtime started" in log.read_text():
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(0.2)
    raise TimeoutError(f"ray start not ready in {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory):
    """``ray start --head`` on loopback with token authentication; yields (address, env for drivers)."""
    root = tmp_path_factory.mktemp("ray-head")
    marker = uuid.uuid4().hex
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    port = free_port()
    log = root / "ray-start.log"
    temp = tempfile.mkdtemp(prefix="sc-ray-")  # short: Ray's unix socket paths live under it (107 bytes at most)
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp,
         "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
         "--dashboard-agent-grpc-port", str(free_port()), "--metrics-export-port", str(free_port()),
         "--runtime-env-agent-port", str(free_port())],
        env={**os.environ, **env, MARKER: marker}, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=root,
        start_new_session=True)
    try:
        _wait_port(port, proc, log)
        yield f"127.0.0.1:{port}", env, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # ray start --block stops every process it started
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the process group this fixture started
                proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _survivors(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _survivors(marker), "ray start left processes behind"
        shutil.rmtree(temp, ignore_errors=True)


def _listening_wide(pids: set[int]) -> list[str]:
    """TCP listeners of these processes on anything but loopback."""
    wide = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            conns = (getattr(proc, "net_connections", None) or proc.connections)(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        wide += [f"{pid} {c.laddr.ip}:{c.laddr.port}" for c in conns
                 if c.status == psutil.CONN_LISTEN and not c.laddr.ip.startswith(("127.", "::1", "::ffff:127."))]
    return wide


def test_joining_a_started_cluster_gives_the_local_version(sales_csv, registry, local_version, ray_head, tmp_path):
    address, env, proc = ray_head
    cluster = {proc.pid} | {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    assert not _listening_wide(cluster), "the test cluster listens beyond loopback"
    out = _train(sales_csv, registry, "--backend", "ray", "--ray-address", address, env=env)
    assert out["stores"] == STORES and not out["failed"]
    assert_identical(_version(registry, out["version"], tmp_path), local_version)
    assert proc.poll() is None, "the driver stopped a cluster it only joined"


# ---- Ray's semantics as the backend uses them (in this process, fake fits) ----------------------
def _series(n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    return [(str(i), np.arange(30, dtype=np.int64) + i, np.full(30, float(i))) for i in range(1, n + 1)]


def test_retries_lost_chunks_and_failures(tmp_path):
    from pipelines.training.ray_backend import MAX_RETRIES, fit_on_ray, session

    chunks = [_series(6)[i: i + 2] for i in range(0, 6, 2)]  # stores 1-2, 3-4, 5-6
    cfg = FitConfig()
    flag = str(tmp_path / "crashed-once")
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    def crash_once(chunk, cfg):  # the worker dies the first time it meets store 3
        if chunk[0][0] == "3" and not os.path.exists(flag):
            open(flag, "w").close()
            os._exit(1)
        return [StoreResult(s[0], metrics={"n": len(s[1])}) for s in chunk]

    def always_crash(chunk, cfg):
        if chunk[0][0] == "3":
            os._exit(1)
        return [StoreResult(s[0], metrics={"n": len(s[1])}) for s in chunk]

    def raising(chunk, cfg):
        raise ValueError(f"cannot fit chunk of {chunk[0][0]}")

    with session(None, 2) as ray:
        assert ray.is_initialized()
        ok = fit_on_ray(chunks, cfg, 2, progress=False, fit=crash_once)
        assert os.path.exists(flag), "the worker never crashed"
        assert sorted(r.store_id for r in ok) == ["1", "2", "3", "4", "5", "6"]
        assert all(r.error is None and r.metrics == {"n": 30} for r in ok)

        mixed = {r.store_id: r for r in fit_on_ray(chunks, cfg, 2, progress=False, fit=always_crash)}
        assert sorted(mixed) == ["1", "2", "3", "4", "5", "6"]
        for sid in ("3", "4"):
            assert mixed[sid].error.startswith(f"Ray task lost after {MAX_RETRIES} retries: "), mixed[sid].error
            assert mixed[sid].metrics == {"store_id": sid, "open_days": 30}
        assert all(mixed[s].error is None for s in ("1", "2", "5", "6"))

        with pytest.raises(ValueError, match="cannot fit chunk of"):
            fit_on_ray(chunks, cfg, 2, progress=False, fit=raising)
        assert ray.is_initialized(), "a session the caller started is left running"
        ours = {p.pid for p in psutil.Process().children(recursive=True)} - before
        assert not _listening_wide(ours), "a local Ray listens beyond loopback"
    deadline = time.monotonic() + 30
    while (left := [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
                    and p.status() != psutil.STATUS_ZOMBIE]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray left processes behind: {left}"


def test_resplit_sizes_chunks_for_the_cluster():
    from pipelines.training.ray_backend import resplit

    series = _series(1000)
    for cpus, size in ((2, 50), (16, 16), (64, 4), (1000, 1)):
        chunks = resplit(series, cpus)
        assert [s for c in chunks for s in c] == series  # same stores, same order
        assert max(map(len, chunks)) == size
    assert resplit(series[:3], 8) == [[s] for s in series[:3]]


BLOCK_RAY = """
import importlib.abc, sys
class NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError("No module named 'ray'", name="ray")
sys.meta_path.insert(0, NoRay())
from pipelines.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_missing_ray_is_one_clear_line(sales_csv, tmp_path):
    proc = subprocess.run([sys.executable, "-c", BLOCK_RAY, "train", "--data", str(sales_csv), "--backend", "ray",
                           "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "the Ray backend needs Ray: pip install storecast[ray]"
    assert not (tmp_path / "m.db").exists()
    proc = subprocess.run([sys.executable, "-c", BLOCK_RAY, "train", "--data", str(sales_csv), "--ray-address",
                           "auto"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "--ray-address needs --backend ray" in proc.stderr


def test_import_ray_names_the_extra(monkeypatch):
    from pipelines.training import ray_backend

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RuntimeError, match=r"^the Ray backend needs Ray: pip install storecast\[ray\]$"):
        ray_backend.import_ray()


def test_unknown_backend_is_refused():
    from pipelines.training.train import run_chunks

    with pytest.raises(ValueError, match="backend must be one of local, ray; got 'spark'"):
        run_chunks([], FitConfig(), 1, False, backend="spark")

