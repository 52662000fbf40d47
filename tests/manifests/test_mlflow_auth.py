"""MLflow behind its basic-auth app, as the manifests run it (issue 23, deliverable 9): a real ``mlflow server``.

The server is started with the Deployment's own arguments, environment and ``basic_auth.ini`` (the ConfigMap
``mlflow-auth``), its paths moved from the pod's volumes into a temporary folder and the Secrets' values made
up; its users are created by the very lines manifests/README.md gives ("First deployment"). Then, as the pods
would call it:

* without a user, or with a wrong password: 401 on the registry and on the artifact proxy; ``/health`` (the
  probes) stays open;
* ``storecast-writer`` (the retrain service, the training driver) writes the sales store and the registry;
* ``storecast-reader`` (the predictors, the dashboard) reads them, through the predictor's own REST client
  with MLflow's variables, and may write neither: 403.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pipelines.stack import Service, free_port, wait_ready
from tests.support import BIN, MANIFESTS, one, render, stop

pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth] (Flask-WTF)")

MODEL = "storecast"
PASSWORDS = {"admin": "adm1n-pw-for-tests", "storecast-writer": "wr1ter-pw-for-tests",
             "storecast-reader": "re4der-pw-for-tests"}


@dataclass
class Mlflow:
    url: str
    root: Path

    def client(self, user: str | None = None, password: str | None = None) -> httpx.Client:
        auth = (user, password or PASSWORDS[user]) if user else None
        return httpx.Client(base_url=self.url, auth=auth, timeout=30)


def readme_snippet() -> str:
    """The Python lines of manifests/README.md that create MLflow's users."""
    text = (MANIFESTS / "README.md").read_text()
    [code] = re.findall(r"python - <<'PY'\n(.*?)\nPY\n", text, re.S)
    return code


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mlflow]:
    root = tmp_path_factory.mktemp("mlflow-auth")
    docs = render("base")
    pod = one(docs, ("apps", "Deployment"), "mlflow")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: root / m["name"] for m in container["volumeMounts"]}  # the pod's paths, here
    for path in mounts.values():
        path.mkdir()

    pattern = re.compile("|".join(re.escape(m + "/") for m in mounts))

    def here(text: str) -> str:  # one pass: a path put in is not moved again
        return pattern.sub(lambda m: f"{mounts[m.group()[:-1]]}/", text)

    for path in mounts.values():  # the ConfigMap's files, as kubelet writes them
        source = volumes[path.name].get("configMap")
        if source:
            for name, content in one(docs, ("", "ConfigMap"), source["name"])["data"].items():
                (path / name).write_text(here(content))
    port = free_port()
    args = [here(a) for a in container["args"]]
    assert args[:2] == ["mlflow", "server"]
    args[args.index("--host") + 1], args[args.index("--port") + 1] = "127.0.0.1", str(port)
    secrets = {"password": PASSWORDS["admin"], "flask-secret-key": "csrf-key-for-tests"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    for e in container["env"]:
        env[e["name"]] = here(e["value"]) if "value" in e else secrets[e["valueFrom"]["secretKeyRef"]["key"]]
    log = (root / "server.log").open("w")
    proc = subprocess.Popen([str(BIN / "mlflow"), *args[1:]], env=env, cwd=root, stdout=subprocess.DEVNULL,
                            stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/health", Service("mlflow", proc, port, log=root / "server.log"), timeout=300)
        users = subprocess.run([sys.executable, "-c", readme_snippet()], capture_output=True, text=True, timeout=120,
                               env={**env, "MLFLOW_URL": url, "MLFLOW_TRACKING_USERNAME": "admin",
                                    "MLFLOW_TRACKING_PASSWORD": PASSWORDS["admin"],
                                    "WRITER": PASSWORDS["storecast-writer"], "READER": PASSWORDS["storecast-reader"]})
        assert users.returncode == 0, users.stderr[-2000:]
        yield Mlflow(url, root)
    finally:
        stop(proc)
        log.close()


SALES = "/api/2.0/mlflow-artifacts/artifacts/sales/train.csv.gz"
SEARCH = "/api/2.0/mlflow/registered-models/search"


def test_nobody_gets_in_without_a_user(mlflow):
    with mlflow.client() as anonymous:
        assert anonymous.get("/health").status_code == 200  # the probes
        assert anonymous.get(SEARCH).status_code == 401
        assert anonymous.get(SALES).status_code == 401
        assert anonymous.put(SALES, content=b"x").status_code == 401
    with mlflow.client("storecast-writer", "not-the-password") as wrong:
        assert wrong.get(SEARCH).status_code == 401


def test_the_writer_writes_and_the_reader_only_reads(mlflow, monkeypatch):
    with mlflow.client("storecast-writer") as writer, mlflow.client("storecast-reader") as reader:
        assert writer.put(SALES, content=b"Store,Date,Sales\n").status_code == 200
        r = writer.post("/api/2.0/mlflow/registered-models/create", json={"name": MODEL})
        assert r.status_code == 200, r.text
        experiment = writer.post("/api/2.0/mlflow/experiments/create", json={"name": MODEL}).json()["experiment_id"]
        run = writer.post("/api/2.0/mlflow/runs/create", json={"experiment_id": experiment}).json()["run"]["info"]
        source = {"name": MODEL, "source": f"{run['artifact_uri']}/model", "run_id": run["run_id"]}
        r = writer.post("/api/2.0/mlflow/model-versions/create", json=source)
        assert r.status_code == 200, r.text
        version = r.json()["model_version"]["version"]
        alias = {"name": MODEL, "alias": "champion", "version": version}
        assert writer.post("/api/2.0/mlflow/registered-models/alias", json=alias).status_code == 200

        assert reader.get(SALES).content == b"Store,Date,Sales\n"
        assert reader.put(SALES, content=b"poisoned").status_code == 403
        assert reader.put(SALES + ".parts/x.csv", content=b"poisoned").status_code == 403
        assert reader.post("/api/2.0/mlflow/registered-models/alias", json={**alias, "version": "1"}).status_code \
            == 403
        assert reader.post("/api/2.0/mlflow/model-versions/create", json=source).status_code == 403

    from predictor.mlflow_rest import MlflowRestClient  # what the predictors run, with MLflow's variables

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "storecast-reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS["storecast-reader"])
    assert MlflowRestClient(mlflow.url).alias(MODEL, "champion") == version
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(Exception, match=r"401|[Uu]nauthori[sz]ed|authenticated"):
        MlflowRestClient(mlflow.url).alias(MODEL, "champion")
