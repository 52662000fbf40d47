"""The first hour (issue 25): a light install, a fast and quiet CLI, one-line errors, a registry found or not.

No timed assertions: what makes the CLI slow is what it imports, so the import graph is asserted instead.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from pipelines.cli import locate
from pipelines.cli.errors import one_line
from tests.support import BIN, REPO, Recorder, run_cli

HEAVY = ("mlflow", "prophet", "pandas", "kserve", "sqlalchemy", "pyarrow", "matplotlib")
# in a subprocess: run main(argv) and print which heavy top-level modules it imported
IMPORTS = """
import json, sys
from pipelines.cli.main import main
try:
    main(sys.argv[2:])
except SystemExit:
    pass
print(json.dumps(sorted({m.partition(".")[0] for m in sys.modules} & set(sys.argv[1].split(",")))))
"""
TEST_ONLY = {"pytest", "playwright", "ray", "locust", "ruff", "tritonclient", "kubernetes-validate", "jsonschema",
             "cel-python", "pyarrow"}


def env_without_registry() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONWARNINGS")}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def imported(*argv: str, cwd: Path) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", IMPORTS, ",".join(HEAVY), *argv], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**env_without_registry(), "PYTHONPATH": str(REPO)})
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["forecast", "--help"], ["forecast", "--store", "4", "--url", "URL"]])
def test_help_and_forecast_import_no_heavy_stack(argv: list[str], tmp_path: Path) -> None:
    argv = [a.replace("URL", f"http://127.0.0.1:{closed_port()}") for a in argv]
    assert imported(*argv, cwd=tmp_path) == []


def test_train_imports_what_it_needs(tmp_path: Path) -> None:
    """The check above can see an import: building train's parser imports the training stack (pandas)."""
    assert "pandas" in imported("train", "--help", cwd=tmp_path)


@pytest.mark.parametrize("argv", [["--help"], ["forecast", "--help"], ["export", "--help"], ["retrain", "--help"]])
def test_help_is_quiet(argv: list[str], tmp_path: Path) -> None:
    proc = run_cli(*argv, cwd=tmp_path, env=env_without_registry())
    assert proc.stderr == "" and "usage: storecast" in proc.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("first-hour")
    run_cli("data", "synth", "--stores", "2", "--seed", "3", "--start", "2014-01-01", "--end", "2015-06-30",
            "--out", str(root / "sales.csv.gz"), cwd=root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    proc = run_cli("train", "--data", str(root / "sales.csv.gz"), "--tracking-uri", uri, "--alias", "champion",
                   "--workers", "1", "--no-progress", cwd=root)
    return {"root": root, "uri": uri, "train": proc}


def test_train_says_what_passed_and_warns_nothing(trained: dict) -> None:
    proc = trained["train"]
    assert "2 of 2 stores passed the quality gate" in proc.stdout and "version passed" in proc.stdout, proc.stdout
    assert "gate failed: 0" not in proc.stdout
    for noise in ("Warning", "WARNING", "INFO", "CloudPickle", "plotly", "Add type hints"):
        assert noise not in proc.stderr, proc.stderr


def test_export_of_one_store_prints_one_line(trained: dict, tmp_path: Path) -> None:
    out = tmp_path / "1.json"
    proc = run_cli("export", "--model-uri", "models:/storecast@champion", "--store", "1", "--out", str(out),
                   "--tracking-uri", trained["uri"], cwd=tmp_path, env=env_without_registry())
    assert proc.stderr.splitlines() == [f"wrote store 1 of models:/storecast@champion to {out}"], proc.stderr
    assert json.loads(out.read_text())["params"]


def storecast_without_checkout(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """``storecast argv`` as run from an installed wheel: no source checkout to find a registry in."""
    code = ("import sys; import pipelines.cli.locate as l; l.package_checkout = lambda: None; "
            "from pipelines.cli.main import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**env_without_registry(), "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("given", [[], ["--tracking-uri", "sqlite:///missing.db"]])
def test_no_registry_is_one_line_and_creates_nothing(given: list[str], tmp_path: Path) -> None:
    proc = storecast_without_checkout("export", "--model-uri", "models:/storecast@champion", "--store", "1",
                                      "--out", "x.json", *given, cwd=tmp_path)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "no registry" in proc.stderr and proc.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no empty mlflow.db, no mlruns/


def test_the_checkouts_registry_is_found(tmp_path: Path) -> None:
    checkout = tmp_path / "storecast"
    (checkout / "pipelines" / "cli").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text('[project]\nname = "storecast"\n')
    (checkout / "docs").mkdir()
    assert locate.find_registry(checkout / "docs", checkouts=[locate.checkout_of(checkout / "docs")]) is None
    (checkout / "build" / "demo").mkdir(parents=True)
    (checkout / "build" / "demo" / "mlflow.db").write_bytes(b"")
    uri, where = locate.find_registry(checkout / "docs", checkouts=[locate.checkout_of(checkout / "docs")])
    assert uri == f"sqlite:///{checkout.resolve() / 'build' / 'demo' / 'mlflow.db'}" and where == "the checkout"
    (tmp_path / "elsewhere").mkdir()
    assert locate.find_registry(tmp_path / "elsewhere", checkouts=[]) is None


def test_a_connection_error_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    proc = subprocess.run([str(BIN / "storecast"), "forecast", "--store", "4", "--url", url], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("storecast forecast: cannot connect to " + url), proc.stderr


def test_a_usage_error_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([str(BIN / "storecast"), "train"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "--data" in proc.stderr, proc.stderr


def test_library_exceptions_read_as_one_sentence() -> None:
    config_exception = type("ConfigException", (Exception,), {"__module__": "kubernetes.config.config_exception"})
    text = one_line(config_exception("Service host/port is not set.\nmore"))
    assert text.startswith("no Kubernetes cluster") and "\n" not in text
    missing = ModuleNotFoundError("No module named 'locust'", name="locust")
    assert one_line(missing) == "needs locust, not installed: pip install 'storecast[loadtest]'"
    assert one_line(KeyError("store '9' is not in models:/storecast/1")) == "store '9' is not in models:/storecast/1"


def test_retrain_wait_shows_progress_then_one_line(tmp_path: Path) -> None:
    polls = []

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict]:
        if method == "POST":
            return 202, {"job_id": "j1", "status": "queued"}
        polls.append(path)
        if len(polls) < 3:
            return 200, {"job_id": "j1", "status": "running", "phase": "fitting", "attempt": 1}
        return 200, {"job_id": "j1", "status": "done", "phase": "finished", "seconds": 12.0, "error": None,
                     "result": {"version": "3", "model_uri": "models:/storecast/3", "store_ids": ["1"],
                                "promoted": "champion", "version_gate": {"passed": True, "reasons": []}}}

    receiver = Recorder(respond)
    try:
        proc = run_cli("retrain", "--store", "1", "--url", receiver.url, "--wait", cwd=tmp_path)
        assert proc.stdout.splitlines() == ["job j1 done in 12 s: version 3 (models:/storecast/3), 1 store(s) "
                                            "refitted, alias champion"], proc.stdout
        assert proc.stderr.splitlines() == ["job j1: running, fitting (0 s)"], proc.stderr
        polls.clear()
        proc = run_cli("retrain", "--store", "1", "--url", receiver.url, "--wait", "--json", cwd=tmp_path)
        assert json.loads(proc.stdout)["result"]["version"] == "3"
    finally:
        receiver.close()


def test_the_demo_installs_no_test_tools() -> None:
    with open(REPO / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]
    base = {Requirement(r).name.lower() for r in project["dependencies"]}
    assert base & TEST_ONLY == set() and "mlflow" not in base  # the MLflow server (scipy, scikit-learn): extra
    extras = project["optional-dependencies"]
    test = [Requirement(r) for r in extras["test"]]
    pulled = set().union(*(r.extras for r in test if r.name == "storecast"))
    assert pulled == set(extras) - {"test"}  # make test installs every extra


def test_runtime_state_defaults_are_ignored() -> None:
    from pipelines.cli.options import KEEP_UNKNOWN_ENV
    from pipelines.retrain.settings import RetrainSettings
    from pipelines.versions.lineage import KEEP_UNKNOWN_ENV as LINEAGE_KEEP_UNKNOWN_ENV

    state = next(default for flag, _env, default, _help in RetrainSettings.table() if flag == "--state")
    assert state.startswith("build/") and "/build/" in (REPO / ".gitignore").read_text().split()
    assert KEEP_UNKNOWN_ENV == LINEAGE_KEEP_UNKNOWN_ENV
