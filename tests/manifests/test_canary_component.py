"""The canary as a kustomize Component (issue 25), on top of every target as a user adds it.

A user has deployed base or an overlay with their own images (``kustomize edit set image``); the canary is
``manifests/components/canary`` (``canary/mlserver`` for overlays/mlserver) added to that deployment, either in the
overlay's own ``components:`` (``kustomize edit add component``) or in a kustomization on top of it. For each
target and way, in a copy of ``manifests/``, the test renders the deployment before and after and checks:

* only the InferenceService ``storecast`` differs, and in it only ``canaryTrafficPercent`` and the predictor's model
  URI (``--model_uri``, or the model's ``MLSERVER_MODEL_URI`` as KServe lays it over the runtime's), both as given;
* every image is the user's, as before; the canary InferenceService validates against KServe's schema;
* a component on the wrong kind of predictor fails the build instead of rendering something else.

The values are what ``storecast canary start --emit`` prints (one test runs the real command).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.rollout.canary import component_values
from tests.support import ISVC, KUBECTL, MANIFESTS, TARGETS, as_served, gk, one, pods, render, run_cli, schema_errors

PLACEHOLDERS = ("storecast", "storecast-serve", "storecast-mlserver")  # registry.example.com/storecast/<name>:0.1.0
WAYS = ("in the overlay", "on top of it")
CUSTOM = [t for t in TARGETS if t not in ("overlays/canary", "overlays/mlserver")]  # overlays/canary has it


def component(target: str) -> str:
    return "components/canary/mlserver" if target == "overlays/mlserver" else "components/canary"


def build(folder: Path) -> list[dict]:
    """``kubectl kustomize folder``; fails the test with kustomize's error."""
    proc = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def build_error(folder: Path) -> str:
    proc = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, f"{folder} rendered"
    return proc.stderr


class Deployment:
    """A copy of manifests/ in which ``target`` is deployed with the user's images (reg.test/team/NAME:7)."""

    def __init__(self, tmp_path: Path, target: str, values: str | None = None) -> None:
        if KUBECTL is None:
            pytest.skip("kubectl is not installed, so the kustomize targets cannot be rendered")
        self.root, self.target = tmp_path / "manifests", target
        shutil.copytree(MANIFESTS, self.root)
        if values is not None:
            (self.root / "components" / "canary" / "values" / "canary.yaml").write_text(values)
        self.file = self.root / target / "kustomization.yaml"
        doc = yaml.safe_load(self.file.read_text())
        doc["images"] = [{"name": f"registry.example.com/storecast/{name}", "newName": f"reg.test/team/{name}",
                          "newTag": "7"} for name in PLACEHOLDERS]
        self.file.write_text(yaml.safe_dump(doc))

    def render(self) -> list[dict]:
        return build(self.root / self.target)

    def with_canary(self, way: str, comp: str | None = None) -> Path:
        """The folder to render with the canary: ``way`` is one of WAYS."""
        comp = comp or component(self.target)
        if way == "in the overlay":  # what `kustomize edit add component ../../components/canary` writes
            doc = yaml.safe_load(self.file.read_text())
            doc["components"] = [*doc.get("components", []), os.path.relpath(self.root / comp, self.file.parent)]
            self.file.write_text(yaml.safe_dump(doc))
            return self.file.parent
        top = self.root / "overlays" / "my-canary"
        top.mkdir()
        (top / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(self.root / self.target, top)],
            "components": [os.path.relpath(self.root / comp, top)]}))
        return top


def images(docs: list[dict]) -> set[str]:
    return {c["image"] for _, _, spec in pods(docs) for c in spec.get("initContainers", []) + spec["containers"]}


def model_uri(docs: list[dict], isvc: dict) -> str:
    """The model URI the predictor serves: its ``--model_uri``, or a ``model``'s MLSERVER_MODEL_URI as KServe
    merges it over its ServingRuntime's."""
    [container] = as_served(docs, isvc["spec"]["predictor"])["containers"]
    if "--model_uri" in container.get("args", []):
        return container["args"][container["args"].index("--model_uri") + 1]
    return next(e["value"] for e in container["env"] if e["name"] == "MLSERVER_MODEL_URI")


def without_canary(isvc: dict, before: dict) -> dict:
    """``isvc`` with the canary's two changes undone as ``before`` has them."""
    predictor = isvc["spec"]["predictor"]
    predictor.pop("canaryTrafficPercent", None)
    if "model" in predictor:
        env = [e for e in predictor["model"]["env"] if e["name"] != "MLSERVER_MODEL_URI"]
        assert len(env) == len(predictor["model"]["env"]) - 1
        predictor["model"]["env"] = env
    else:
        args = predictor["containers"][0]["args"]
        args[args.index("--model_uri") + 1] = before["spec"]["predictor"]["containers"][0]["args"][
            args.index("--model_uri") + 1]
    return isvc


def assert_only_the_canary(before: list[dict], after: list[dict], uri: str, percent: int) -> None:
    def is_canaried(d: dict) -> bool:
        return gk(d) == ISVC and d["metadata"]["name"] == "storecast"

    assert [d for d in after if not is_canaried(d)] == [d for d in before if not is_canaried(d)]
    isvc, old = one(after, ISVC, "storecast"), one(before, ISVC, "storecast")
    assert schema_errors(isvc) == []
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == percent
    assert model_uri(after, isvc) == uri != model_uri(before, old) == "models:/storecast@champion"
    assert without_canary(isvc, old) == old  # the transformer, images, sizes, labels: as deployed
    assert images(after) == images(before)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("target", CUSTOM)
def test_the_component_changes_only_the_predictors_version_and_split(target: str, way: str, tmp_path: Path) -> None:
    deployed = Deployment(tmp_path, target, component_values("storecast", 7, 25))
    before = deployed.render()
    after = build(deployed.with_canary(way))
    assert_only_the_canary(before, after, "models:/storecast/7", 25)
    assert all(image.startswith("reg.test/team/") for image in images(after))  # the user's, never the placeholders


def test_the_mlserver_overlay_takes_its_variant_on_top(tmp_path: Path) -> None:
    deployed = Deployment(tmp_path, "overlays/mlserver", component_values("storecast", 7, 25))
    before = deployed.render()
    assert_only_the_canary(before, build(deployed.with_canary("on top of it")), "models:/storecast/7", 25)


def test_the_emitted_values_canary_the_given_version(tmp_path: Path) -> None:
    """``storecast canary start --emit`` as the README says: its output written over the values file, applied."""
    out = run_cli("canary", "start", "--version", "12", "--percent", "5", "--emit", cwd=tmp_path,
                  env={"KUBECONFIG": str(tmp_path / "none")}).stdout
    deployed = Deployment(tmp_path, "overlays/local", out)
    before = deployed.render()
    assert_only_the_canary(before, build(deployed.with_canary("in the overlay")), "models:/storecast/12", 5)


def test_the_canary_overlay_is_base_with_the_component_and_its_committed_values(tmp_path: Path) -> None:
    values = yaml.safe_load((MANIFESTS / "components" / "canary" / "values" / "canary.yaml").read_text())["spec"]
    assert_only_the_canary(render("base"), render("overlays/canary"), values["modelUri"], values["percent"])
    kustomization = yaml.safe_load((MANIFESTS / "overlays" / "canary" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../../base"] and kustomization["components"] == ["../../components/canary"]


@pytest.mark.parametrize(("target", "comp", "way"), [
    ("overlays/mlserver", "components/canary", "on top of it"),  # a `model` has no --model_uri
    ("base", "components/canary/mlserver", "on top of it"),  # a custom predictor is no `model`
    # in the overlay, a component runs before the overlay's own patches: on a custom predictor still
    ("overlays/mlserver", "components/canary/mlserver", "in the overlay"),
])
def test_the_wrong_component_fails_the_build(target: str, comp: str, way: str, tmp_path: Path) -> None:
    deployed = Deployment(tmp_path, target)
    assert "unable to find field" in build_error(deployed.with_canary(way, comp))


def test_a_predictor_no_longer_following_champion_fails_the_build(tmp_path: Path) -> None:
    """The component replaces the argument ``models:/storecast@champion`` only: moved or pinned, the build fails."""
    deployed = Deployment(tmp_path, "base")
    isvc = deployed.root / "base" / "inferenceservice.yaml"
    isvc.write_text(isvc.read_text().replace("- models:/storecast@champion", "- models:/storecast/3"))
    assert "unable to find field" in build_error(deployed.with_canary("in the overlay"))
