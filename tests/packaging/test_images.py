"""The two images' contents and how the manifests point at them (no container engine needed).

- the pinned lists agree with pyproject and with each other (docker/lock.py wrote them);
- the serving processes run with nothing but the serving image's distributions: predictor and
  transformer start under an import guard that refuses every module the serving image does not
  have (the Kubernetes client is the image's stub), read a version over MLflow's REST API from a
  real ``mlflow server`` and answer a business request;
- the one ``kustomize edit set image`` recipe of the READMEs works in base and in every overlay.

``make image-smoke`` builds and runs the real images (podman, root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipelines.stack import Service, free_port, wait_ready
from tests.support import run_cli, stop

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
KUBECTL = shutil.which("kubectl")
PLACEHOLDERS = {"full": "registry.example.com/storecast/storecast",
                "serve": "registry.example.com/storecast/storecast-serve",
                "mlserver": "registry.example.com/storecast/storecast-mlserver"}  # overlays/mlserver only
SERVING = ("predictor", "transformer", "deadletter")  # the components the serving image runs
NEVER_SERVED = ("mlflow", "prophet", "prophet-batch", "cmdstanpy", "matplotlib", "pyarrow", "scipy", "scikit-learn",
                "kubernetes", "sqlalchemy", "flask", "locust", "pillow")


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            out[canonicalize_name(req.name)] = str(req.specifier)
    return out


def test_pinned_lists_agree_with_pyproject_and_each_other() -> None:
    full, serve = pins(DOCKER / "constraints.txt"), pins(DOCKER / "serve-requirements.txt")
    with open(ROOT / "pyproject.toml", "rb") as fh:
        direct = [Requirement(r) for r in tomllib.load(fh)["project"]["dependencies"]]
    stale = {r.name: (str(r.specifier), full.get(canonicalize_name(r.name))) for r in direct
             if full.get(canonicalize_name(r.name)) != str(r.specifier)}
    assert not stale, f"docker/constraints.txt is stale, run `make image-lock`: {stale}"
    assert {n: v for n, v in serve.items() if full.get(n) != v} == {}, "serving pins differ from the full image's"
    assert "kserve" in serve and not set(map(canonicalize_name, NEVER_SERVED)) & set(serve)


# Runs a module like `python -m`, refusing to import any top-level module that is not in the standard
# library, the project's serving packages or a distribution of docker/serve-requirements.txt.
GUARD = '''
import importlib.abc, importlib.metadata, runpy, sys
allowed_dists = set(sys.argv[1].split(","))
own = {"predictor", "transformer", "serving", "kubernetes", sys.argv[2]}  # kubernetes: the image's stub
mapping = importlib.metadata.packages_distributions()

class Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if path is not None or top in sys.stdlib_module_names or top in own or top.startswith("_"):
            return None
        dists = {d.lower().replace("_", "-") for d in mapping.get(top, [])}
        if dists & allowed_dists:
            return None
        raise ModuleNotFoundError(f"serving image guard: {name} ({sorted(dists) or 'no distribution'}) is not "
                                  "in the serving image", name=name)

sys.meta_path.insert(0, Guard())
print(f"serving image guard: {len(allowed_dists)} distributions", file=sys.stderr, flush=True)
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
'''


def guarded(tmp_path: Path, module: str, *args: str) -> list[str]:
    script = tmp_path / "guard.py"
    script.write_text(GUARD)
    allowed = ",".join(pins(DOCKER / "serve-requirements.txt"))
    return [sys.executable, str(script), allowed, module, *args]


def guarded_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(DOCKER / "stubs"), str(ROOT)]), "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("module", ["predictor", "transformer"])
def test_serving_help_with_only_the_serving_distributions(module: str, tmp_path: Path) -> None:
    proc = subprocess.run(guarded(tmp_path, module, "--help"), capture_output=True, text=True, timeout=120,
                          env=guarded_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "serving image guard" in proc.stderr and "--http_port" in proc.stdout


def test_the_guard_refuses_what_the_serving_image_lacks(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text("import numpy\nimport kubernetes.client\ntry:\n    import mlflow\n"
                      "except ModuleNotFoundError as e:\n    print('refused', e)\n")
    proc = subprocess.run(guarded(tmp_path, "probe"), capture_output=True, text=True, timeout=60,
                          env={**guarded_env(), "PYTHONPATH": guarded_env()["PYTHONPATH"] + os.pathsep + str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "refused serving image guard: mlflow" in proc.stdout


@pytest.fixture(scope="module")
def guarded_stack(mlflow_server: str, synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three stores trained into the real mlflow server (a model of its own), served by guarded processes."""
    root = tmp_path_factory.mktemp("serve-image")
    run_cli("train", "--data", str(synth_csv), "--tracking-uri", mlflow_server, "--model-name", "storecast-serve",
            "--limit", "3", "--alias", "", "--workers", "1", "--no-progress", cwd=root)
    env = {**guarded_env(), "MLFLOW_TRACKING_URI": mlflow_server}
    procs = []
    try:
        ph, pg, th, tg = (free_port() for _ in range(4))
        for name, port, argv in (
                ("predictor", ph, guarded(root, "predictor", "--host", "127.0.0.1", "--model_uri",
                                          "models:/storecast-serve/1", "--http_port", str(ph), "--grpc_port", str(pg))),
                ("transformer", th, guarded(root, "transformer", "--host", "127.0.0.1", "--predictor_host",
                                            f"127.0.0.1:{pg}", "--http_port", str(th), "--grpc_port", str(tg)))):
            log = root / f"{name}.log"
            proc = subprocess.Popen(argv, env=env, cwd=root, stdout=log.open("w"), stderr=subprocess.STDOUT)
            procs.append(proc)
            wait_ready(f"http://127.0.0.1:{port}/v2/models/storecast/ready", Service(name, proc, port, log=log), 120)
        yield f"http://127.0.0.1:{th}"
    finally:
        for proc in procs:
            stop(proc)


def test_serving_processes_run_on_the_serving_distributions_only(guarded_stack: str) -> None:
    r = httpx.post(f"{guarded_stack}/v1/models/storecast:predict", timeout=30, json={
        "instances": [{"storeId": s, "beginDate": "2015-08-01", "endDate": "2015-08-07"} for s in ("1", "2", "3")]})
    assert r.status_code == 200, r.text
    assert [len(p["forecast"]) for p in r.json()["predictions"]] == [7, 7, 7]


def test_the_serving_image_refuses_the_full_images_components() -> None:
    for component in ("retrain", "dashboard", "storecast", "mlflow"):
        proc = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), component, "--help"], capture_output=True,
                              text=True, env={**os.environ, "STORECAST_IMAGE": "serve"}, timeout=30)
        assert proc.returncode == 2 and "full image" in proc.stderr, (component, proc.stderr)


# ---------------------------------------------------------------------------------------------
# The `kustomize edit set image` recipe (README.md, manifests/README.md)


def set_image(kustomization: Path, name: str, new: str) -> None:
    """What ``kustomize edit set image NAME=NEW_NAME:TAG`` writes: the entry for NAME, added or replaced."""
    doc = yaml.safe_load(kustomization.read_text())
    new_name, _, tag = new.rpartition(":")
    entries = [e for e in doc.get("images") or [] if e["name"] != name]
    doc["images"] = [*entries, {"name": name, "newName": new_name, "newTag": tag}]
    kustomization.write_text(yaml.safe_dump(doc, sort_keys=False))


def rendered_images(root: Path, target: str) -> dict[str, set[str]]:
    proc = subprocess.run([KUBECTL, "kustomize", str(root / target)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found: dict[str, set[str]] = {"serve": set(), "full": set(), "mlserver": set()}

    def visit(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("image"), str) and node["image"].split(":")[0].endswith("-mlserver"):
                found["mlserver"].add(node["image"])  # a ServingRuntime's container: the image's own command
            elif isinstance(node.get("image"), str) and isinstance(node.get("args"), list) and node["args"]:
                found["serve" if node["args"][0] in SERVING else "full"].add(node["image"])
            elif isinstance(node.get("image"), str):  # a RayJob's containers: the full image
                found["full"].add(node["image"])
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    for doc in yaml.safe_load_all(proc.stdout):
        visit(doc)
    return {role: images for role, images in found.items() if images}


TARGETS = ["base", *sorted(f"overlays/{p.name}" for p in (ROOT / "manifests" / "overlays").iterdir() if p.is_dir())]


@pytest.mark.parametrize("target", TARGETS)
def test_one_set_image_recipe_for_base_and_every_overlay(target: str, tmp_path: Path) -> None:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed, so the kustomize targets cannot be rendered")
    shutil.copytree(ROOT / "manifests", tmp_path / "manifests")
    for name in PLACEHOLDERS.values():
        set_image(tmp_path / "manifests" / target / "kustomization.yaml", name,
                  f"reg.test/team/{name.rsplit('/', 1)[1]}:7")
    mlserver = {"mlserver": {"reg.test/team/storecast-mlserver:7"}} if target == "overlays/mlserver" else {}
    assert rendered_images(tmp_path / "manifests", target) == {
        "serve": {"reg.test/team/storecast-serve:7"}, "full": {"reg.test/team/storecast:7"}, **mlserver}, target


def test_untouched_targets_use_the_placeholders_and_local_its_own_build() -> None:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed, so the kustomize targets cannot be rendered")
    for target in TARGETS:
        expected = ({"serve": {"dev.local/storecast-serve:dev"}, "full": {"dev.local/storecast:dev"}}
                    if target == "overlays/local" else {r: {f"{n}:0.1.0"} for r, n in PLACEHOLDERS.items()
                                                        if r != "mlserver" or target == "overlays/mlserver"})
        assert rendered_images(ROOT / "manifests", target) == expected, target


def test_readmes_give_the_same_recipe() -> None:
    recipe = "kustomize edit set image registry.example.com/storecast/storecast=REGISTRY/storecast:TAG"
    for doc in (ROOT / "README.md", ROOT / "manifests" / "README.md"):
        text = " ".join(doc.read_text().replace("\\\n", " ").split())
        assert recipe in text and "registry.example.com/storecast/storecast-serve=REGISTRY/storecast-serve:TAG" \
            in text, doc
