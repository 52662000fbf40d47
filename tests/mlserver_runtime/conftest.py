"""Fixtures: MLServer's own environment (made once, as ``storecast mlserver`` makes it), a version behind a
real ``mlflow server``, the KServe predictor and MLServer serving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import MLServer, Predictor, TrainedRegistry, make_registry

NAME = "storecast-mlserver"  # its own registered model: the tracking server is shared by the session's tests


@pytest.fixture(scope="session")
def mlserver_env() -> Path:
    """MLServer's environment (``mlserver_runtime/requirements.txt``), made on first use like the CLI does."""
    from mlserver_runtime import environment

    env = environment.default_env()
    environment.ensure(env)
    return env


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> TrainedRegistry:
    from pipelines.data.synth import synthesize
    from pipelines.training.fitting import FitConfig

    cfg = FitConfig.preset("calendar-linear", calibrate=False)  # calendar outputs and what-ifs mean something
    return make_registry(tmp_path_factory.mktemp("registry"), synthesize(8, seed=4), cfg=cfg)


@pytest.fixture(scope="session")
def model_name() -> str:
    return NAME


@pytest.fixture(scope="module")
def champion(registry: TrainedRegistry, mlflow_server: str) -> str:
    """The trained version registered in the ``mlflow server`` as ``NAME@champion``; its version."""
    from pipelines.versions.registry import register

    return register(registry.result, uri=mlflow_server, model_name=NAME, alias="champion").version


@pytest.fixture(scope="module")
def kserve(champion: str, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Predictor]:
    """The KServe predictor serving the champion: the reference every MLServer answer is held to."""
    p = Predictor(tmp_path_factory.mktemp("kserve") / "predictor.log", ["--model_uri", f"models:/{NAME}@champion"],
                  tracking_uri=mlflow_server)
    try:
        yield p.wait_ready()
    finally:
        p.stop()


@pytest.fixture(scope="module")
def mls(champion: str, mlflow_server: str, mlserver_env: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    """MLServer with the storecast runtime serving the champion, adaptive batching off."""
    m = MLServer(tmp_path_factory.mktemp("mls") / "plain.log", f"models:/{NAME}@champion", mlflow_server)
    try:
        yield m.wait_ready(timeout=180)
    finally:
        m.stop()


@pytest.fixture(scope="module")
def batched(champion: str, mlflow_server: str, mlserver_env: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    """The same with adaptive batching on: up to 16 requests merged, waiting up to 20 ms for each other."""
    m = MLServer(tmp_path_factory.mktemp("mls") / "batched.log", f"models:/{NAME}@champion", mlflow_server,
                 ["--max-batch-size", "16", "--max-batch-time", "0.02"])
    try:
        yield m.wait_ready(timeout=180)
    finally:
        m.stop()
