"""What runs before MLServer does: the runtime's settings, the files ``storecast mlserver`` writes, its environment.

No MLServer here (these run in the KServe environment, as ``storecast mlserver`` itself does until it becomes
``mlserver start``); tests/mlserver_runtime/test_runtime.py starts real ones.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mlserver_runtime import environment, launch
from mlserver_runtime.settings import EXTRA, RuntimeSettings, SettingsError
from predictor.settings import PredictorSettings
from tests.support import BIN


def test_settings_are_the_predictors_from_model_settings_then_variables(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    defaults = {f.name: f.default for f in PredictorSettings.own_fields()}
    s = RuntimeSettings.of(None, None)
    assert s.model_uri.uri == "models:/storecast@champion" and s.model_uri.follows
    assert all(getattr(s, name) == defaults[name] for name in EXTRA)
    monkeypatch.setenv("STORECAST_REFRESH_SECONDS", "7")
    monkeypatch.setenv("STORECAST_MODEL_URI", "models:/storecast/3")
    s = RuntimeSettings.of(None, {"max_rows": 50, "shard": "1/4"})
    assert (s.refresh_seconds, s.max_rows, s.shard.k, s.shard.n, s.model_uri.kind) == (7.0, 50, 1, 4, "version")
    s = RuntimeSettings.of("models:/storecast@challenger", {"refresh_seconds": 2})  # the file wins
    assert (s.model_uri.ref, s.refresh_seconds) == ("challenger", 2.0)
    assert RuntimeSettings.of(str(tmp_path), {}).model_uri.kind == "folder"


@pytest.mark.parametrize(("uri", "extra", "tracking", "words"), [
    (None, {"host": "0.0.0.0"}, "http://m", ["unknown setting 'host'", "refresh_seconds"]),
    (None, {"shard": "5/4"}, "http://m", ["parameters.extra.shard", "5/4"]),
    (None, {"max_rows": "many"}, "http://m", ["parameters.extra.max_rows", "many"]),
    ("s3://bucket/x", {}, "http://m", ["parameters.uri", "only models:/"]),
    ("models:/storecast@champion", {}, "sqlite:///mlflow.db", ["MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"]),
    ("models:/storecast@champion", {}, "", ["MLFLOW_TRACKING_URI", "nothing"]),
])
def test_a_setting_it_cannot_use_is_named(uri: str | None, extra: dict, tracking: str, words: list[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    with pytest.raises(SettingsError) as info:
        RuntimeSettings.of(uri, extra)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_the_folder_holds_what_mlserver_reads(tmp_path: Path) -> None:
    options = launch.ServerOptions("models:/storecast@champion", http_port=1, grpc_port=2, metrics_port=3,
                                   max_batch_size=8, max_batch_time=0.01, extra={"refresh_seconds": 5})
    folder = launch.write_folder(tmp_path / "state", options)
    server = json.loads((folder / "settings.json").read_text())
    assert server["host"] == "127.0.0.1"
    assert (server["http_port"], server["grpc_port"], server["metrics_port"]) == (1, 2, 3)
    assert server["parallel_workers"] == 0  # the runtime's batching needs inference in the server process
    assert all(str(folder) in server[k] for k in ("model_repository_root", "metrics_dir", "environments_dir"))
    model = json.loads((folder / "models" / "storecast" / "model-settings.json").read_text())
    assert model["implementation"] == "mlserver_runtime.runtime.StorecastRuntime"
    assert model["parameters"] == {"uri": "models:/storecast@champion", "extra": {"refresh_seconds": 5}}
    assert (model["max_batch_size"], model["max_batch_time"]) == (8, 0.01)
    code = launch.code_path(folder)
    assert sorted(p.name for p in code.iterdir()) == ["mlserver_runtime", "predictor", "serving"]  # nothing else
    assert (code / "predictor" / "forecast.py").is_file()
    assert launch.environment(folder, "http://m")["PYTHONPATH"] == str(code)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "example.org", "::"])
def test_it_listens_on_loopback_only(host: str) -> None:
    with pytest.raises(ValueError, match="no authentication"):
        launch.ServerOptions("models:/storecast@champion", host=host)
    for ok in ("127.0.0.1", "localhost", "::1"):
        launch.ServerOptions("models:/storecast@champion", host=ok)


def test_the_environment_is_made_again_only_when_the_pins_change(tmp_path: Path, monkeypatch) -> None:
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "mlserver").write_text("")
    assert not environment.is_ready(env)  # no marker: not made from these pins
    (env / environment.MARKER).write_text(environment.digest())
    assert environment.is_ready(env)
    (env / environment.MARKER).write_text("0" * 64)
    assert not environment.is_ready(env)
    monkeypatch.setenv(environment.ENV_VARIABLE, str(tmp_path / "elsewhere"))
    assert environment.default_env() == tmp_path / "elsewhere"
    monkeypatch.delenv(environment.ENV_VARIABLE)
    assert environment.default_env().name == f"mlserver-{environment.digest()[:12]}"
    pins = [line for line in environment.REQUIREMENTS.read_text().splitlines() if line and line[0] != "#"]
    assert pins and all("==" in line for line in pins)
    assert {"mlserver==1.7.1", "numpy==2.4.6"} <= set(pins)  # numpy: the KServe side's, the same numbers


@pytest.mark.parametrize(("args", "words"), [
    (["--host", "0.0.0.0", "--tracking-uri", "http://127.0.0.1:1"], ["--host 0.0.0.0", "no authentication"]),
    (["--model-uri", "s3://bucket/v1"], ["s3://bucket/v1", "models:/"]),
    (["--tracking-uri", "sqlite:///mlflow.db"], ["mlflow server", "sqlite:///mlflow.db"]),
])
def test_the_command_refuses_in_one_line(args: list[str], words: list[str],
                                         tmp_path: Path) -> None:
    proc = subprocess.run([str(BIN / "storecast"), "mlserver", "--state", str(tmp_path / "s"), *args],
                          capture_output=True, text=True, timeout=120, env={"PATH": "", "HOME": str(Path.home())})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr
