"""The transformer authenticates to the predictor with a service identity of its own (issue 23, deliverable 2);
real processes on loopback, no MLflow (a parameter table in a folder).

- A predictor whose auth file denies anonymous callers (no ``anonymous`` tier) serves transformers holding
  the service key (a key file and gRPC; the variable and REST) for many forecasts in a row, more than any
  anonymous burst, all 200; the shard watch, asking with the key, learns the predictor's version.
- Without a key the predictor refuses the transformer: the business request is answered at once with a 502
  naming the shard and the setting to fix (not a hang, not a 401 blaming the caller), gRPC and REST alike.
- ``--forward-authorization`` without a key: the caller's ``authorization`` goes to the predictor (a key of
  its file is served, a wrong one is the caller's 401, none a 502); with a key too, the key wins.
- A key file that is missing, or a key given twice, stops the transformer at start with one line on stderr
  naming the setting (never the key); the key appears in no log. The key rules themselves in process.
- The local stack with an auth file gives its transformer an identity of its own in the predictors' copy
  of the file: a protected predictor serves the protected transformer at full rate, and refuses anonymous
  callers itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pipelines.stack import LocalStack, free_port
from serving.access.auth_file import hash_key
from serving.access.key_file import MAX_KEY_FILE_BYTES, read_key
from tests.support import MODEL, REPO, Predictor, Transformer, random_table, wait_until
from transformer.settings import Credential

KEY = "sc_test-transformer-service-key"
PLANNER = "sc_test-planner-key"
IN_A_ROW = 30  # forecasts in a row: more than any anonymous burst (the issue saw 4 x 200, then 503s)
AUTH = f"""
tiers:
  transformer: {{requests_per_second: null, concurrent: null, permissions: [forecast]}}
  planner: {{requests_per_second: 100, burst: 100, concurrent: 8, permissions: [forecast]}}
identities:
  - {{name: storecast-transformer, tier: transformer, key_sha256: "{hash_key(KEY)}"}}
  - {{name: planner, tier: planner, key_sha256: "{hash_key(PLANNER)}"}}
"""


@dataclass
class Chain:
    """The protected predictor and the transformers in front of it."""

    root: Path
    body: dict
    predictor: Predictor
    fronts: dict[str, Transformer]

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.root.glob("*.log"))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    root = tmp_path_factory.mktemp("identity")
    table = random_table(4, seed=23)
    table.save(root / "version" / "params.npz")
    (root / "auth.yaml").write_text(AUTH)
    (root / "transformer.key").write_text(f"\n  {KEY}  \n")  # stripped when read
    day = str(__import__("numpy").datetime64(int(table.last_day.max()) + 1, "D"))
    body = {"instances": [{"storeId": table.store_id[0], "beginDate": day, "endDate": day}]}
    p = Predictor(root / "predictor.log", ["--model_uri", str(root / "version"), "--auth-file",
                                            str(root / "auth.yaml")])
    fronts: dict[str, Transformer] = {}
    try:
        p.wait_ready()
        grpc, rest = ["--predictor_hosts", f"127.0.0.1:{p.grpc_port}"], \
            ["--predictor_hosts", f"127.0.0.1:{p.http_port}", "--predictor_protocol", "v2"]
        fronts["key file, gRPC"] = Transformer(root / "t-file-grpc.log", [
            *grpc, "--predictor-api-key-file", str(root / "transformer.key"), "--watch-seconds", "1"])
        with pytest.MonkeyPatch.context() as mp:  # the variable (a Secret as env), and forwarding besides
            mp.setenv("STORECAST_PREDICTOR_API_KEY", KEY)
            fronts["variable, REST"] = Transformer(root / "t-env-rest.log", [*rest, "--forward-authorization",
                                                                             "true"])
        fronts["no key, gRPC, forwarding"] = Transformer(root / "t-forward-grpc.log", [
            *grpc, "--forward-authorization", "true"])
        fronts["no key, REST"] = Transformer(root / "t-none-rest.log", rest)
        for t in fronts.values():
            t.wait_ready()
        yield Chain(root, body, p, fronts)
    finally:
        for t in fronts.values():
            t.stop()
        p.stop()


@pytest.mark.parametrize("name", ["key file, gRPC", "variable, REST"])
def test_the_service_key_is_served_at_full_rate(chain: Chain, name: str) -> None:
    t = chain.fronts[name]
    statuses = [t.v1(chain.body, timeout=30).status_code for _ in range(IN_A_ROW)]
    assert statuses == [200] * IN_A_ROW
    assert chain.predictor.http.post(f"/v2/models/{MODEL}/infer", json={"inputs": []}).status_code == 401


def test_the_shard_watch_asks_with_the_key(chain: Chain) -> None:
    t = chain.fronts["key file, gRPC"]
    assert wait_until(lambda: "versions" in t.http.get(f"/v2/models/{MODEL}").json(), timeout=30)


@pytest.mark.parametrize("name", ["no key, gRPC, forwarding", "no key, REST"])
def test_without_a_key_the_predictor_refuses_and_the_answer_names_the_shard(chain: Chain, name: str) -> None:
    r = chain.fronts[name].v1(chain.body, timeout=30)
    error = r.json()["error"]
    assert r.status_code == 502, r.text
    assert "predictor shard 0" in error and "refused the transformer" in error
    assert "STORECAST_PREDICTOR_API_KEY" in error


def test_a_forwarded_authorization_is_the_callers(chain: Chain) -> None:
    t = chain.fronts["no key, gRPC, forwarding"]
    path = f"/v1/models/{MODEL}:predict"
    assert t.http.post(path, json=chain.body, headers={"authorization": f"Bearer {PLANNER}"}).status_code == 200
    wrong = t.http.post(path, json=chain.body, headers={"authorization": "Bearer sc_not-a-key"})
    assert wrong.status_code == 401, wrong.text  # the caller's credential: the caller's answer
    both = chain.fronts["variable, REST"]  # a key and forwarding: the key wins
    assert both.http.post(path, json=chain.body, headers={"authorization": "Bearer sc_not-a-key"}).status_code == 200


def test_the_key_is_never_logged(chain: Chain) -> None:
    for t in chain.fronts.values():
        t.v1(chain.body, timeout=30)
    assert "storecast-transformer" in chain.predictor.output()  # the audit names the identity
    assert KEY not in chain.logs() and PLANNER not in chain.logs()
    assert "the transformer's own key (x-api-key)" in chain.fronts["key file, gRPC"].output()


def start_transformer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STORECAST_PREDICTOR_API_KEY")}
    return subprocess.run([sys.executable, "-m", "transformer", "--host", "127.0.0.1", "--predictor_hosts",
                           "127.0.0.1:1", "--http_port", str(free_port()), "--grpc_port", str(free_port()), *args],
                          cwd=REPO, env={**environ, **(env or {})}, capture_output=True, text=True, timeout=120)


def test_an_unusable_key_stops_the_transformer_at_start_with_one_line(tmp_path: Path) -> None:
    key_file = tmp_path / "transformer.key"
    key_file.write_text(KEY)
    for args, env, words in [
        (["--predictor-api-key-file", str(tmp_path / "missing.key")], None,
         ("--predictor-api-key-file", "missing.key", "cannot read the key file")),
        (["--predictor-api-key-file", str(key_file)], {"STORECAST_PREDICTOR_API_KEY": KEY},
         ("STORECAST_PREDICTOR_API_KEY and --predictor-api-key-file are both set",)),
    ]:
        done = start_transformer(*args, env=env)
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode != 0 and all(w in last for w in words), done.stderr[-2000:]
        assert "Traceback" not in done.stderr and KEY not in done.stderr + done.stdout


def test_the_key_rules(tmp_path: Path) -> None:
    def refused(value: str | None, path: Path | None) -> str:
        with pytest.raises(SystemExit) as caught:
            read_key(value, None if path is None else str(path), "VAR", "--file")
        return str(caught.value)

    good, empty, large, spaced = (tmp_path / n for n in ("good", "empty", "large", "spaced"))
    good.write_text(f"\t{KEY}\r\n")
    empty.write_text(" \n")
    large.write_text("k" * (MAX_KEY_FILE_BYTES + 1))
    spaced.write_text("two words")
    os.mkfifo(tmp_path / "fifo")
    assert read_key(None, str(good), "VAR", "--file") == KEY
    assert read_key(f" {KEY} ", None, "VAR", "--file") == KEY
    assert read_key(None, None, "VAR", "--file") is None and read_key("  ", None, "VAR", "--file") is None
    assert "empty" in refused(None, empty)
    assert "larger than 4096 bytes" in refused(None, large)
    assert "not a regular file" in refused(None, tmp_path / "fifo")  # refused, never waited on
    assert "not a regular file" in refused(None, tmp_path)
    assert "not a usable key" in refused(None, spaced) and "two" not in refused(None, spaced)
    assert "VAR: not a usable key" in refused("k" * 513, None)
    assert "both set" in refused(KEY, good)


def test_the_credential_each_call_carries() -> None:
    caller = {"authorization": "Bearer sc_caller", "x-api-key": "sc_other"}
    assert Credential(KEY).headers(caller) == {"x-api-key": KEY}
    assert Credential(KEY, forward=True).headers(caller) == {"x-api-key": KEY}  # the key wins
    assert Credential(None, forward=True).headers(caller) == {"authorization": "Bearer sc_caller"}
    assert Credential(None, forward=True).headers(None) == {}  # the watch, the readiness checks
    assert Credential(None, forward=True).headers({"authorization": "Bearer \x00"}) == {}
    assert Credential(None, forward=True).headers({"authorization": "Bearer " + "k" * 9000}) == {}
    assert Credential().headers(caller) == {} and Credential().metadata(caller) is None
    assert Credential(KEY).metadata() == (("x-api-key", KEY),)
    assert KEY not in repr(Credential(KEY)) and KEY not in Credential(KEY).describe()


def test_the_local_stack_gives_its_transformer_an_identity(tmp_path: Path) -> None:
    table = random_table(3, seed=5)
    table.save(tmp_path / "version" / "params.npz")
    auth = tmp_path / "auth.yaml"
    auth.write_text(AUTH)
    day = str(__import__("numpy").datetime64(int(table.last_day.max()) + 1, "D"))
    body = {"instances": [{"storeId": table.store_id[0], "beginDate": day}]}
    with LocalStack(str(tmp_path / "version"), log_dir=tmp_path / "logs", auth_file=auth,
                    transformer_args=["--watch-seconds", "1"]) as stack:
        url, predictor = f"{stack.transformer.url}/v1/models/{MODEL}:predict", stack.predictors[0].url
        with httpx.Client(timeout=30, headers={"x-api-key": PLANNER}) as client:
            assert [client.post(url, json=body).status_code for _ in range(IN_A_ROW)] == [200] * IN_A_ROW
            assert client.post(f"{predictor}/v2/models/{MODEL}/infer", json={"inputs": []}).status_code != 401
        assert httpx.post(url, json=body, timeout=30).status_code == 401  # the transformer's own door
        assert httpx.post(f"{predictor}/v2/models/{MODEL}/infer", json={"inputs": []}, timeout=30).status_code == 401
        assert stack.service_key_file is not None and stack.predictor_auth_file is not None
        for made in (stack.service_key_file, stack.predictor_auth_file):
            assert made.stat().st_mode & 0o777 == 0o600
        key = stack.service_key_file.read_text().strip()
        assert hash_key(key) in stack.predictor_auth_file.read_text()
    assert auth.read_text() == AUTH  # the stack's own file is left as it was
    assert not any(key in p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log"))
