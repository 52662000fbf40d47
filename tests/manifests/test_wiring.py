"""The transformer -> predictor wiring of the manifests, run (issue 23, deliverable 2): real processes on loopback.

The predictor and the transformer are started with the rendered InferenceService's own arguments and
environment (ports, the model and the predictor's address moved to loopback; every path of a mounted Secret
moved into a folder laid out as kubelet lays the Secret out), and the keys and auth files made as
manifests/README.md says: the predictor's auth file from its documented tiers, each identity appended by
``storecast auth add-key``, whose printed key becomes the Secret's file. Then:

* a caller of the transformer gets many forecasts in a row, all 200: the transformer's own key is served at
  full rate by a predictor that refuses anonymous callers;
* the predictor refuses a caller without a key (401) and the transformer's key on the model repository (403),
  and serves the admin key there;
* without a key the transformer refuses the caller itself (401): the whole chain is closed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.support import BIN, MANIFESTS, MODEL, REPO, Predictor, Transformer, one, random_table, render

IN_A_ROW = 30  # more than any anonymous burst would allow (issue 23 saw 4 x 200, then 503s)


def predictor_auth_tiers() -> str:
    """The predictors' auth file as manifests/README.md gives it (tiers, no identity yet)."""
    text = (MANIFESTS / "README.md").read_text()
    [block] = re.findall(r"```yaml\n(# predictor-auth\.yaml.*?)```", text, re.S)
    return block


def add_key(name: str, tier: str, file: Path) -> str:
    """``storecast auth add-key``: appends the identity to ``file`` and prints its key once."""
    proc = subprocess.run([str(BIN / "storecast"), "auth", "add-key", "--name", name, "--tier", tier, "--file",
                           str(file)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    return proc.stdout.strip()


class Pod:
    """A pod's mounted folders, here: the Secrets' files written where the container reads them."""

    def __init__(self, root: Path, spec: dict, container: dict) -> None:
        self.root, self.spec, self.container = root, spec, container
        self.mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}

    def path(self, in_pod: str) -> Path:
        [mount] = [m for m in self.mounts if in_pod.startswith(m.rstrip("/") + "/")]
        return self.root / self.mounts[mount] / in_pod[len(mount):].lstrip("/")

    def secret(self, in_pod: str) -> str:
        [volume] = [v for v in self.spec["volumes"] if v["name"] == self.path(in_pod).parent.name]
        return volume["secret"]["secretName"]

    def write(self, in_pod: str, text: str) -> Path:
        path = self.path(in_pod)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path


def without(args: list[str], *flags: str) -> list[str]:
    """``args`` less the given flags and their values."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        else:
            out.append(a)
    return out


@dataclass
class Chain:
    predictor: Predictor
    transformer: Transformer
    keys: dict[str, str]
    body: dict


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    root = tmp_path_factory.mktemp("wiring")
    spec = one(render("base"), ("serving.kserve.io", "InferenceService"), "storecast")["spec"]
    [p_container], [t_container] = spec["predictor"]["containers"], spec["transformer"]["containers"]
    p_pod, t_pod = Pod(root / "predictor", spec["predictor"], p_container), \
        Pod(root / "transformer", spec["transformer"], t_container)
    keys = {}
    # the predictors' auth file (Secret storecast-predictor-auth), the transformer's key (its own Secret)
    p_args = p_container["args"][1:]
    auth_in_pod = p_args[p_args.index("--auth-file") + 1]
    assert p_pod.secret(auth_in_pod) == "storecast-predictor-auth"
    auth = p_pod.write(auth_in_pod, predictor_auth_tiers())
    keys["transformer"], keys["admin"] = add_key("transformer", "transformer", auth), add_key("admin", "admin", auth)
    env = {e["name"]: e["value"] for e in t_container["env"]}
    key_in_pod = env["STORECAST_PREDICTOR_API_KEY_FILE"]
    assert t_pod.secret(key_in_pod) == "storecast-transformer-predictor-key"
    env["STORECAST_PREDICTOR_API_KEY_FILE"] = str(t_pod.write(key_in_pod, keys["transformer"] + "\n"))
    # the callers' auth file (Secret storecast-auth) with one planner, and the optional JWKS folder left empty
    callers = t_pod.path(env["STORECAST_AUTH_FILE"])
    callers.parent.mkdir(parents=True)
    keys["alice"] = add_key("alice", "planner", callers)
    env["STORECAST_AUTH_FILE"] = str(callers)
    env["STORECAST_OIDC_JWKS_URL"] = t_pod.path(env["STORECAST_OIDC_JWKS_URL"].removeprefix("file://")).as_uri()

    table = random_table(4, seed=9)
    table.save(root / "version" / "params.npz")
    day = str(np.datetime64(int(table.last_day.max()) + 1, "D"))
    body = {"instances": [{"storeId": table.store_id[0], "beginDate": day, "endDate": day}]}
    p_args = [a.replace(auth_in_pod, str(auth)) for a in p_args]
    p_args[p_args.index("--model_uri") + 1] = str(root / "version")
    predictor = Predictor(root / "predictor.log", without(p_args, "--http_port", "--grpc_port"))
    transformer = None
    try:
        predictor.wait_ready()
        t_args = without(t_container["args"][1:], "--http_port")
        t_args[t_args.index("--predictor_host") + 1] = f"127.0.0.1:{predictor.grpc_port}"
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            transformer = Transformer(root / "transformer.log", t_args)
        transformer.wait_ready()
        yield Chain(predictor, transformer, keys, body)
    finally:
        if transformer is not None:
            transformer.stop()
        predictor.stop()


def test_the_transformer_is_served_at_full_rate(chain: Chain) -> None:
    alice = {"x-api-key": chain.keys["alice"]}
    statuses = [chain.transformer.http.post(f"/v1/models/{MODEL}:predict", json=chain.body, headers=alice,
                                            timeout=30).status_code for _ in range(IN_A_ROW)]
    assert statuses == [200] * IN_A_ROW
    assert "'transformer'" in chain.predictor.output() or '"transformer"' in chain.predictor.output()


def test_the_predictor_admits_its_two_identities_only(chain: Chain) -> None:
    http = chain.predictor.http
    infer = {"inputs": [{"name": "store_id", "shape": [1], "datatype": "BYTES", "data": ["1"]}]}
    assert http.post(f"/v2/models/{MODEL}/infer", json=infer).status_code == 401
    unload = f"/v2/repository/models/{MODEL}/unload"
    assert http.post(unload, headers={"x-api-key": chain.keys["transformer"]}).status_code == 403
    assert http.post("/v2/repository/index", json={}, headers={"x-api-key": chain.keys["admin"]}).status_code == 200
    assert http.get(f"/v2/models/{MODEL}/ready").status_code == 200  # still serving: nothing was unloaded


def test_the_chain_is_closed_at_the_transformer(chain: Chain) -> None:
    r = chain.transformer.http.post(f"/v1/models/{MODEL}:predict", json=chain.body, timeout=30)
    assert r.status_code == 401, r.text
    assert chain.keys["transformer"] not in chain.transformer.output() + chain.predictor.output()
