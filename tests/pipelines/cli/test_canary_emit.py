"""``storecast canary start --emit``: the values of manifests/components/canary, printed with no cluster.

That the printed values, written over the component's values file, canary the given version on top of an overlay
is tests/manifests/test_canary_component.py's (it renders the real command's output).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.rollout.canary import COMPONENT_VALUES, component_values
from tests.support import BIN, REPO, Recorder, run_cli


def test_emit_prints_the_values_for_the_given_version_and_reads_no_cluster(tmp_path: Path) -> None:
    api = Recorder(lambda method, path, body: (500, {"kind": "Status"}))
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({  # a cluster that answers: --emit must not ask it
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": api.url}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}], "users": [{"name": "t", "user": {}}]}))
    try:
        out = run_cli("canary", "start", "--version", "7", "--percent", "25", "--emit",
                      env={"KUBECONFIG": str(config)}, cwd=tmp_path)
    finally:
        api.close()
    assert api.requests == []
    doc = yaml.safe_load(out.stdout)
    assert doc["kind"] == "Canary" and doc["metadata"]["name"] == "storecast"
    assert doc["metadata"]["annotations"] == {"config.kubernetes.io/local-config": "true"}  # never applied
    assert doc["spec"] == {"modelUri": "models:/storecast/7", "percent": 25}
    assert COMPONENT_VALUES in out.stderr  # where to write it; stdout stays the file alone
    assert list(tmp_path.iterdir()) == [config]  # nothing written


def test_emit_names_the_registered_model() -> None:
    assert yaml.safe_load(component_values("demand", "3", 0))["spec"] == {"modelUri": "models:/demand/3", "percent": 0}


def test_the_committed_values_are_what_emit_prints_for_them() -> None:
    """The file and the command stay in step: emitting the file's own version and percent reproduces it."""
    text = (REPO / COMPONENT_VALUES).read_text()
    spec = yaml.safe_load(text)["spec"]
    assert text == component_values("storecast", spec["modelUri"].rsplit("/", 1)[1], spec["percent"])


@pytest.mark.parametrize(("args", "message"), [
    (["--version", "7", "--percent", "101"], "percent must be within 0..100, got 101"),
    (["--version", "latest"], "version must be a model version number, got 'latest'"),
    (["--version", "7", "--isvc", "storecast-shard-1"], "the component canaries the InferenceService storecast"),
])
def test_emit_refuses_what_the_component_cannot_say_in_one_line(args: list[str], message: str,
                                                                 tmp_path: Path) -> None:
    proc = subprocess.run([str(BIN / "storecast"), "canary", "start", *args, "--emit"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path, env={**os.environ, "KUBECONFIG": str(tmp_path / "x")})
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
